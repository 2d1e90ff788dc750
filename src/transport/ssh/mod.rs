//! The real transport: SSH through russh.
//!
//! One host gets up to three connections, each opened (and re-opened after a loss) on
//! first use, so a play of short commands opens one: `control` for every
//! [`Transport::exec`] (through its persistent shell, see `shell`, or concurrent
//! channels of their own), `bulk` for
//! [`Transport::exec_stream`], `tunnel` for [`Transport::forward`]. A slow consumer blocks
//! the russh event loop of its own connection only, so a long dump never delays the small
//! commands of other tasks, nor the Kubernetes API tunnel.
//!
//! Submodules: `config` (inventory + ssh config → route), `known_hosts`, `auth`, `session`
//! (connect, tune, map errors), `exec` (channels as streams), `shell` (short commands
//! through one long-lived `sh`), `become_` (sudo).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::command::Cmd;
use crate::secrets::Secrets;
use crate::transport::{
    BecomeSpec, ConnectSpec, Duplex, ExecOutput, ExecResult, ExecStream, ForwardMethod,
    OutputLimit, Transport, TransportError,
};

mod auth;
mod become_;
mod config;
mod exec;
mod known_hosts;
mod ssh_config;

/// Internals reached by integration tests (`tests/ssh_config_oracle.rs`); not an API.
#[doc(hidden)]
pub mod testing {
    use std::path::Path;

    use super::ssh_config::{self, Files, Local, Query};
    use crate::transport::TransportError;

    /// What `ssh -G -F config [-l user] [-p port] host` prints for the keywords ferry
    /// resolves, as (keyword, value) lines in ssh's spelling; the local user from the
    /// passwd entry, as ssh.
    pub fn ssh_g(
        config: &Path,
        host: &str,
        user: Option<&str>,
        port: Option<u16>,
    ) -> Result<Vec<(String, String)>, TransportError> {
        let query = Query {
            host: host.to_string(),
            user: user.map(str::to_string),
            port,
        };
        let r = ssh_config::resolve(
            &Files::Named(config.to_path_buf()),
            &query,
            &Local::current(),
        )?;
        Ok(r.dump())
    }
}
mod script;
mod session;
mod shell;
mod stdin;

pub use auth::AgentSource;
pub use exec::wait_for_stops;

use session::{Connection, ShellSlot};
use shell::{Shell, ShellError};

/// Connect timeout when the inventory gives none.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Knobs that are not part of the inventory's [`ConnectSpec`].
#[derive(Debug, Clone, Default)]
pub struct SshOptions {
    /// Which ssh-agent to use; `$SSH_AUTH_SOCK` by default.
    pub agent: AgentSource,
}

/// Open `spec`'s host: the engine's entry point (same as [`SshTransport::connect`]).
pub async fn connect(spec: ConnectSpec, secrets: Secrets) -> Result<SshTransport, TransportError> {
    SshTransport::connect(spec, secrets).await
}

/// One lazily (re)opened connection.
struct Lane {
    purpose: &'static str,
    conn: tokio::sync::Mutex<Option<Arc<Connection>>>,
}

impl Lane {
    fn new(purpose: &'static str) -> Self {
        Lane {
            purpose,
            conn: tokio::sync::Mutex::new(None),
        }
    }
}

/// SSH connections to one host.
pub struct SshTransport {
    name: String,
    route: config::Route,
    creds: Arc<auth::Credentials>,
    timeout: Duration,
    become_: Option<BecomeSpec>,
    /// The POSIX shell that runs commands (`sh`, or the inventory's `shell`).
    shell: String,
    secrets: Secrets,
    control: Lane,
    bulk: Lane,
    tunnel: Lane,
    /// Relay program found on the host (probed once).
    relay_tool: tokio::sync::OnceCell<&'static str>,
    /// The server refused `direct-tcpip` once: go straight to the relay afterwards.
    direct_tcpip_refused: AtomicBool,
    /// The host key the last connection verified (see [`Transport::verified_host_key`]).
    host_key: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for SshTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshTransport")
            .field("name", &self.name)
            .field("target", &self.route.target.addr())
            .field("user", &self.route.target.user)
            .field("jumps", &self.route.jumps.len())
            .finish()
    }
}

impl SshTransport {
    /// Resolve the route, open and authenticate the control connection.
    pub async fn connect(spec: ConnectSpec, secrets: Secrets) -> Result<Self, TransportError> {
        Self::connect_with(spec, secrets, SshOptions::default()).await
    }

    /// [`SshTransport::connect`] with explicit [`SshOptions`].
    pub async fn connect_with(
        spec: ConnectSpec,
        secrets: Secrets,
        options: SshOptions,
    ) -> Result<Self, TransportError> {
        if let Some(spec_become) = &spec.become_ {
            become_::check_password(spec_become, &spec.name)?;
        }
        for s in [&spec.password, &spec.key_passphrase]
            .into_iter()
            .flatten()
            .chain(spec.become_.as_ref().and_then(|b| b.password.as_ref()))
        {
            secrets.add(s.clone());
        }
        let route = config::resolve(&spec)?;
        let timeout = if spec.connect_timeout.is_zero() {
            route
                .connect_timeout
                .filter(|t| *t > 0)
                .map(Duration::from_secs)
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
        } else {
            spec.connect_timeout
        };
        let creds = Arc::new(auth::Credentials::new(
            options.agent,
            spec.key_passphrase.clone(),
            spec.password.clone(),
            spec.allow_prompt,
            secrets.clone(),
        ));
        let transport = SshTransport {
            name: spec.name.clone(),
            route,
            creds,
            timeout,
            become_: spec.become_.clone(),
            shell: spec
                .shell
                .clone()
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| "sh".to_string()),
            secrets,
            control: Lane::new("control"),
            bulk: Lane::new("bulk"),
            tunnel: Lane::new("tunnel"),
            relay_tool: tokio::sync::OnceCell::new(),
            direct_tcpip_refused: AtomicBool::new(false),
            host_key: std::sync::Mutex::new(None),
        };
        transport.connection(&transport.control).await?;
        Ok(transport)
    }

    /// `user@host:port` actually connected to (after ssh config).
    pub fn target(&self) -> String {
        format!("{}@{}", self.route.target.user, self.route.target.addr())
    }

    /// The lane's connection, (re)opened when absent or lost.
    async fn connection(&self, lane: &Lane) -> Result<Arc<Connection>, TransportError> {
        let mut slot = lane.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            if !conn.is_closed() {
                return Ok(conn.clone());
            }
            tracing::info!(
                "{}: {} connection was lost; reconnecting",
                self.name,
                lane.purpose
            );
        }
        let conn = Arc::new(session::open(&self.route, &self.creds, self.timeout).await?);
        if let (Some(key), Ok(mut slot)) = (conn.host_key.clone(), self.host_key.lock()) {
            *slot = Some(key);
        }
        tracing::debug!(
            "{}: opened {} connection to {}",
            self.name,
            lane.purpose,
            self.target()
        );
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// How to stop what runs under `mark` on `conn` if ferry gives up on it (see
    /// [`exec::Stopper`]); nothing is built until a stop is needed.
    fn stopper(&self, conn: &Arc<Connection>, mark: String) -> exec::Stopper {
        exec::Stopper {
            conn: Arc::downgrade(conn),
            mark,
            shell: self.shell.clone(),
            become_: super::become_task::effective(self.become_.as_ref()),
            host: self.name.clone(),
            secrets: self.secrets.clone(),
        }
    }

    /// Run `cmd` through the control connection's persistent shell. `None` when the
    /// shell is busy with another command or unavailable: use a channel of its own.
    async fn exec_in_shell(
        &self,
        cmd: &Cmd,
        limit: Option<OutputLimit>,
    ) -> Result<Option<ExecOutput>, TransportError> {
        let conn = self.connection(&self.control).await?;
        let mut shell = match conn.take_shell() {
            ShellSlot::Idle(shell) => shell,
            ShellSlot::Busy | ShellSlot::Unavailable => return Ok(None),
            ShellSlot::Unopened => {
                // Dropped while opening: the slot goes back to `Unopened`.
                let reset = ResetSlot::new(&conn);
                let mark = script::mark()?;
                let stopper = self.stopper(&conn, mark.clone());
                let opened = Shell::open(&conn, &self.name, &self.shell, &mark, stopper).await;
                reset.disarm();
                match opened {
                    Ok(Some(shell)) => shell,
                    Ok(None) => {
                        conn.put_shell(ShellSlot::Unopened);
                        return Ok(None);
                    }
                    // Not a shell ferry can use at all: say so rather than fail
                    // later with a cryptic message.
                    Err(e @ TransportError::NotPosixShell { .. }) => {
                        conn.put_shell(ShellSlot::Unopened);
                        return Err(e);
                    }
                    Err(e) => {
                        tracing::debug!(
                            "{}: no persistent shell ({e}); using a channel per command",
                            self.name
                        );
                        conn.put_shell(ShellSlot::Unavailable);
                        return Ok(None);
                    }
                }
            }
        };
        tracing::debug!(host = %self.name, lane = "control shell", "exec: {}", cmd.display());
        // Dropped mid-command: the shell is dropped (closed) and the slot reset.
        let reset = ResetSlot::new(&conn);
        let outcome = shell.run(&cmd.to_shell(), &self.name, limit).await;
        reset.disarm();
        match outcome {
            Ok(out) => {
                conn.put_shell(ShellSlot::Idle(shell));
                Ok(Some(out))
            }
            // Nothing was written: the command runs on a channel of its own, and the
            // next one opens a new shell.
            Err(ShellError::EndedWhileIdle) => {
                conn.put_shell(ShellSlot::Unopened);
                Ok(None)
            }
            Err(e) => {
                conn.put_shell(ShellSlot::Unopened);
                Err(match e {
                    ShellError::Lost(e) | ShellError::Setup(e) => e,
                    ShellError::Ended | ShellError::EndedWhileIdle | ShellError::Garbled => {
                        TransportError::Disconnected {
                            host: self.name.clone(),
                            reason: match conn.lost_reason() {
                                Some(why) => format!("{why} (while running `{}`)", cmd.display()),
                                None => format!(
                                    "the remote shell ended while running `{}`",
                                    cmd.display()
                                ),
                            },
                        }
                    }
                })
            }
        }
    }

    async fn start(&self, lane: &Lane, cmd: &Cmd) -> Result<exec::Running, TransportError> {
        let conn = self.connection(lane).await?;
        let mark = script::mark()?;
        let become_ = super::become_task::effective(self.become_.as_ref());
        let (line, preamble, hs) = command_line(&self.shell, become_.as_ref(), cmd, &mark)?;
        let stopper = self.stopper(&conn, mark);
        tracing::debug!(host = %self.name, lane = lane.purpose, "exec: {}", cmd.display());
        exec::start(
            &conn,
            line,
            Some(preamble),
            hs,
            &self.name,
            &self.secrets,
            Some(stopper),
        )
        .await
    }

    /// [`Transport::exec`] with each output stream bounded by `limit`.
    async fn exec_limited(
        &self,
        cmd: &Cmd,
        stdin: Option<&[u8]>,
        limit: Option<OutputLimit>,
    ) -> Result<ExecOutput, TransportError> {
        // Short commands without input: one round trip through the persistent shell
        // instead of a channel (a fork and exec on the server) per command. sudo needs
        // its own channel for the password handshake.
        let become_ = super::become_task::effective(self.become_.as_ref());
        if become_.is_none() && stdin.is_none_or(<[u8]>::is_empty) {
            if let Some(out) = self.exec_in_shell(cmd, limit).await? {
                return Ok(out);
            }
        }
        let running = self.start(&self.control, cmd).await?;
        exec::collect(running, stdin, limit).await
    }

    /// Which relay program the host has: socat, nc, or bash (for `/dev/tcp`).
    async fn relay_tool(&self, conn: &Arc<Connection>) -> Result<&'static str, TransportError> {
        self.relay_tool
            .get_or_try_init(|| async {
                let probe = Cmd::script(
                    "for t in socat nc bash; do \
                     if command -v \"$t\" >/dev/null 2>&1; then echo \"$t\"; exit 0; fi; \
                     done; exit 1",
                    "probe for socat/nc/bash",
                );
                let line = Cmd::new("sh").arg("-c").arg(probe.to_shell()).to_shell();
                let running =
                    exec::start(conn, line, None, None, &self.name, &self.secrets, None).await?;
                let out = exec::collect(running, None, None).await?;
                match out.stdout_str().trim() {
                    "socat" => Ok("socat"),
                    "nc" => Ok("nc"),
                    "bash" => Ok("bash"),
                    _ => Err(TransportError::Forward {
                        target: self.name.clone(),
                        reason: "the server forbids TCP forwarding and has none of socat, nc \
                                 or bash to relay through"
                            .into(),
                    }),
                }
            })
            .await
            .copied()
    }

    async fn relay(
        &self,
        conn: &Arc<Connection>,
        host: &str,
        port: u16,
    ) -> Result<(Box<dyn Duplex>, ForwardMethod), TransportError> {
        let tool = self.relay_tool(conn).await?;
        let relay = match tool {
            "socat" => Cmd::new("socat").arg("-").arg(format!("TCP:{host}:{port}")),
            "nc" => Cmd::new("nc").arg(host).arg(port.to_string()),
            _ => Cmd::new("bash")
                .arg("-c")
                .arg("exec 3<>\"/dev/tcp/$0/$1\" || exit 1; cat <&3 & cat >&3")
                .arg(host)
                .arg(port.to_string()),
        };
        let line = Cmd::new("sh").arg("-c").arg(relay.to_shell()).to_shell();
        let running = exec::start(conn, line, None, None, &self.name, &self.secrets, None).await?;
        tracing::info!(
            "{}: forwarding to {host}:{port} through a {tool} relay (server forbids TCP forwarding)",
            self.name
        );
        Ok((
            Box::new(exec::RelayPipe::new(running)),
            ForwardMethod::Relay(tool),
        ))
    }
}

/// Puts a connection's shell slot back to `Unopened` unless disarmed: a future dropped
/// while it held the slot must not leave it `Busy` for ever.
struct ResetSlot<'a> {
    conn: &'a Connection,
    armed: bool,
}

impl<'a> ResetSlot<'a> {
    fn new(conn: &'a Connection) -> Self {
        ResetSlot { conn, armed: true }
    }
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for ResetSlot<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.conn.put_shell(ShellSlot::Unopened);
        }
    }
}

/// The command line for the login shell (`SHELL -c READER SHELL MARK`, or through sudo
/// with `become`) and what to send on stdin first: the command's script, so that it is
/// never in any argv (see `script`). `mark` finds the command's processes again when
/// ferry gives up on it (see [`exec::Stopper`]).
fn command_line(
    shell: &str,
    become_: Option<&BecomeSpec>,
    cmd: &Cmd,
    mark: &str,
) -> Result<(String, bytes::Bytes, Option<become_::BecomeHandshake>), TransportError> {
    let token = script::token()?;
    let reader = script::reader(&token);
    let preamble = script::preamble(&cmd.to_shell(), &token);
    Ok(match become_ {
        Some(spec) => {
            let (line, hs) = become_::wrap(&reader, shell, spec, mark);
            (line, preamble, Some(hs))
        }
        None => (
            Cmd::new(shell)
                .arg("-c")
                .arg(reader)
                .arg(shell)
                .arg(mark)
                .to_shell(),
            preamble,
            None,
        ),
    })
}

#[async_trait]
impl Transport for SshTransport {
    fn host(&self) -> &str {
        &self.name
    }

    fn verified_host_key(&self) -> Option<String> {
        self.host_key.lock().ok().and_then(|k| k.clone())
    }

    async fn exec(&self, cmd: &Cmd, stdin: Option<&[u8]>) -> ExecResult {
        self.exec_limited(cmd, stdin, None).await
    }

    async fn exec_bounded(&self, cmd: &Cmd, stdin: Option<&[u8]>, keep: OutputLimit) -> ExecResult {
        self.exec_limited(cmd, stdin, Some(keep)).await
    }

    async fn exec_stream(&self, cmd: &Cmd) -> Result<ExecStream, TransportError> {
        let running = self.start(&self.bulk, cmd).await?;
        // The command is stopped once stdin, stdout and the exit are all dropped before
        // it ended (a stream abandoned halfway), not when any one of them is.
        let guard = Arc::new(running.guard);
        let exit = running.exit;
        let exit_guard = guard.clone();
        Ok(ExecStream {
            stdin: Box::pin(exec::HoldsGuard::new(running.stdin, guard.clone())),
            stdout: Box::pin(exec::HoldsGuard::new(running.stdout, guard)),
            exit: Box::pin(async move {
                let exit = exit.await;
                drop(exit_guard);
                exit
            }),
        })
    }

    async fn forward(
        &self,
        host: &str,
        port: u16,
    ) -> Result<(Box<dyn Duplex>, ForwardMethod), TransportError> {
        let conn = self.connection(&self.tunnel).await?;
        let target = format!("{host}:{port}");
        if !self.direct_tcpip_refused.load(Ordering::Relaxed) {
            match conn
                .handle
                .channel_open_direct_tcpip(host, u32::from(port), "127.0.0.1", 0)
                .await
            {
                Ok(channel) => {
                    tracing::debug!("{}: forwarding to {target} via direct-tcpip", self.name);
                    return Ok((Box::new(channel.into_stream()), ForwardMethod::DirectTcpip));
                }
                Err(russh::Error::ChannelOpenFailure(
                    russh::ChannelOpenFailure::AdministrativelyProhibited,
                )) => {
                    self.direct_tcpip_refused.store(true, Ordering::Relaxed);
                    tracing::info!(
                        "{}: server refused direct-tcpip (AllowTcpForwarding no?); using a relay",
                        self.name
                    );
                }
                Err(russh::Error::ChannelOpenFailure(reason)) => {
                    return Err(TransportError::Forward {
                        target,
                        reason: format!("the server could not connect: {reason:?}"),
                    })
                }
                Err(e) => return Err(session::map_russh_error(e, &self.name)),
            }
        }
        self.relay(&conn, host, port).await
    }
}

/// The local user's home directory, from the passwd entry as ssh takes it.
pub(crate) fn local_home() -> std::path::PathBuf {
    ssh_config::passwd_user(rustix::process::getuid().as_raw()).1
}
