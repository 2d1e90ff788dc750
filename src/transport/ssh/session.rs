//! Opening one authenticated SSH connection along a route (through jump hosts if any):
//! TCP connect with timeout, host-key verification before authentication, russh tuned for
//! throughput, and every failure mapped to its [`TransportError`] kind.

use std::sync::Arc;
use std::time::Duration;

use russh::client::{Handle, Handler, Msg};
use russh::keys::{Algorithm, HashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{ChannelReadHalf, ChannelWriteHalf};
use tokio::sync::Semaphore;

use super::auth::{self, Credentials};
use super::config::{Route, Target};
use super::known_hosts::{self, HostKeyStatus};
use super::shell::Shell;
use crate::transport::{HostKeyPolicy, TransportError};

/// Session channels open at once on one connection. OpenSSH's `MaxSessions` defaults to
/// 10; staying below it means a burst of concurrent commands waits instead of failing.
pub(crate) const MAX_SESSIONS_PER_CONNECTION: usize = 8;

/// Channel window: large enough that a fast link is never idle waiting for window
/// adjustments (russh's 2 MiB default halves bulk throughput on fast links).
const WINDOW_SIZE: u32 = 16 * 1024 * 1024;
/// Largest packet russh accepts from the peer.
const MAX_PACKET_SIZE: u32 = 65535;

/// An authenticated connection, plus the jump-host connections it runs through (they
/// must live as long as it does).
pub(crate) struct Connection {
    pub handle: Handle<Client>,
    /// Limits concurrent session channels (see [`MAX_SESSIONS_PER_CONNECTION`]).
    pub sessions: Arc<Semaphore>,
    /// The persistent shell for short commands (see [`super::shell`]).
    shell: std::sync::Mutex<ShellSlot>,
    _jumps: Vec<Handle<Client>>,
    /// The target's host key as verified (OpenSSH form).
    pub host_key: Option<String>,
    /// Why the session ended, once it has (see [`Connection::lost_reason`]).
    lost: LostReason,
}

/// Where the handler records why russh ended the session.
type LostReason = Arc<std::sync::Mutex<Option<String>>>;

/// State of a connection's persistent shell.
pub(crate) enum ShellSlot {
    /// None yet (or the last one was closed): the next command opens one.
    Unopened,
    Idle(Shell),
    /// A command is running in it: others use channels of their own meanwhile.
    Busy,
    /// The server would not start one: always use channels of their own.
    Unavailable,
}

impl Connection {
    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Why the session ended, when it ended for a reason of its own ("no answer to
    /// keepalives", the server's disconnect): a channel that closed with it knows only
    /// that it closed.
    pub fn lost_reason(&self) -> Option<String> {
        self.lost.lock().ok().and_then(|r| r.clone())
    }

    /// Take the shell's state out, leaving `Busy` when it was idle or unopened (the
    /// caller then owns opening it or must put it back).
    pub fn take_shell(&self) -> ShellSlot {
        let Ok(mut slot) = self.shell.lock() else {
            return ShellSlot::Unavailable;
        };
        match &*slot {
            ShellSlot::Busy => ShellSlot::Busy,
            ShellSlot::Unavailable => ShellSlot::Unavailable,
            ShellSlot::Unopened | ShellSlot::Idle(_) => {
                std::mem::replace(&mut *slot, ShellSlot::Busy)
            }
        }
    }

    /// End a `take_shell`.
    pub fn put_shell(&self, state: ShellSlot) {
        if let Ok(mut slot) = self.shell.lock() {
            *slot = state;
        }
    }
}

/// Cipher order: AES-GCM first where the CPU accelerates AES, ChaCha20-Poly1305 first
/// elsewhere (it is the faster one in software).
fn cipher_order() -> Vec<russh::cipher::Name> {
    use russh::cipher::*;
    let aes_fast = {
        #[cfg(target_arch = "x86_64")]
        {
            std::arch::is_x86_feature_detected!("aes")
                && std::arch::is_x86_feature_detected!("pclmulqdq")
        }
        #[cfg(target_arch = "aarch64")]
        {
            std::arch::is_aarch64_feature_detected!("aes")
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            false
        }
    };
    if aes_fast {
        vec![
            AES_128_GCM,
            AES_256_GCM,
            CHACHA20_POLY1305,
            AES_128_CTR,
            AES_256_CTR,
        ]
    } else {
        vec![
            CHACHA20_POLY1305,
            AES_128_GCM,
            AES_256_GCM,
            AES_128_CTR,
            AES_256_CTR,
        ]
    }
}

/// Host-key algorithms with those already recorded for this host first, so a server
/// that has several keys presents one that can be verified (as OpenSSH orders
/// `HostKeyAlgorithms`). The legacy `ssh-rsa` (SHA-1 signatures) is left out unless
/// `allow_ssh_rsa_sha1`, as OpenSSH 8.8 and later do; RSA keys still work through
/// `rsa-sha2-512`/`rsa-sha2-256`.
fn host_key_order(known: &[Algorithm], allow_ssh_rsa_sha1: bool) -> Vec<Algorithm> {
    let defaults: Vec<Algorithm> = russh::Preferred::DEFAULT
        .key
        .iter()
        .filter(|a| allow_ssh_rsa_sha1 || !is_ssh_rsa_sha1(a))
        .cloned()
        .collect();
    let is_known = |a: &Algorithm| {
        known
            .iter()
            .any(|k| k == a || (k.clone().is_rsa() && a.clone().is_rsa()))
    };
    let mut order: Vec<Algorithm> = defaults.iter().filter(|a| is_known(a)).cloned().collect();
    order.extend(defaults.iter().filter(|a| !is_known(a)).cloned());
    order
}

/// `ssh-rsa`: RSA with SHA-1 signatures.
fn is_ssh_rsa_sha1(a: &Algorithm) -> bool {
    matches!(a, Algorithm::Rsa { hash: None })
}

fn client_config(target: &Target) -> Arc<russh::client::Config> {
    let files = target.all_known_hosts();
    let mut known: Vec<Algorithm> = Vec::new();
    for f in &files {
        for a in known_hosts::known_algorithms(f, &target.host, target.port) {
            if !known.contains(&a) {
                known.push(a);
            }
        }
    }
    let key_order = host_key_order(&known, target.allow_ssh_rsa_sha1);
    // Host certificates (`*-cert-v01@openssh.com`) are asked for first when an
    // `@cert-authority` line covers the host, as OpenSSH orders them then; otherwise a
    // server with a certificate would prove itself with one ferry has no CA for.
    let certificates: Vec<Algorithm> =
        if known_hosts::has_authority(&files, &target.host, target.port) {
            key_order.clone()
        } else {
            Vec::new()
        };
    let preferred = russh::Preferred {
        key: key_order.into(),
        host_key_certificates: certificates.into(),
        cipher: cipher_order().into(),
        // Compression costs CPU and gains nothing on dumps that are already compressed.
        compression: (&[russh::compression::NONE][..]).into(),
        ..russh::Preferred::DEFAULT
    };
    Arc::new(russh::client::Config {
        window_size: WINDOW_SIZE,
        maximum_packet_size: MAX_PACKET_SIZE,
        preferred,
        // Without any traffic for this long, probe the server; after count_max unanswered
        // probes the connection counts as lost.
        keepalive_interval: target.server_alive.interval,
        keepalive_max: target.server_alive.count_max,
        nodelay: true,
        ..Default::default()
    })
}

/// The russh event handler of one connection: verifies the host key.
pub(crate) struct Client {
    target: Target,
    /// Where the verified key goes (OpenSSH form), for [`Connection::host_key`].
    verified: Arc<std::sync::Mutex<Option<String>>>,
    lost: LostReason,
}

/// Errors the handler reports through russh.
#[derive(Debug)]
pub(crate) enum ClientError {
    Ssh(russh::Error),
    HostKey(TransportError),
}

impl From<russh::Error> for ClientError {
    fn from(e: russh::Error) -> Self {
        ClientError::Ssh(e)
    }
}

impl Handler for Client {
    type Error = ClientError;

    async fn disconnected(
        &mut self,
        reason: russh::client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        use russh::client::DisconnectReason;
        let why = match &reason {
            DisconnectReason::ReceivedDisconnect(info) => {
                format!("the server disconnected: {}", info.message)
            }
            DisconnectReason::Error(ClientError::Ssh(e)) => {
                disconnect_reason(e).unwrap_or_else(|| e.to_string())
            }
            DisconnectReason::Error(ClientError::HostKey(e)) => e.to_string(),
        };
        if let Ok(mut lost) = self.lost.lock() {
            lost.get_or_insert(why);
        }
        match reason {
            DisconnectReason::ReceivedDisconnect(_) => Ok(()),
            DisconnectReason::Error(e) => Err(e),
        }
    }

    async fn check_server_key(
        &mut self,
        server_key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key = match server_key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            PublicKeyOrCertificate::Certificate(cert) => {
                let key = PublicKey::new(cert.public_key().clone(), "");
                if verify_certificate(&self.target, cert, &key).map_err(ClientError::HostKey)? {
                    self.record_verified(&key);
                    return Ok(true);
                }
                key
            }
        };
        verify_host_key(&self.target, &key).map_err(ClientError::HostKey)?;
        self.record_verified(&key);
        Ok(true)
    }
}

impl Client {
    fn record_verified(&self, key: &PublicKey) {
        if let (Ok(text), Ok(mut slot)) = (
            PublicKey::new(key.key_data().clone(), "").to_openssh(),
            self.verified.lock(),
        ) {
            *slot = Some(text.trim().to_string());
        }
    }
}

/// A host certificate against the `@cert-authority` and `@revoked` lines: `true` when an
/// authority vouches for it; `false` when none does, and the certificate's plain key is
/// then checked as any host key (as ssh does); an error when it is revoked.
fn verify_certificate(
    target: &Target,
    cert: &russh::keys::Certificate,
    key: &PublicKey,
) -> Result<bool, TransportError> {
    let files = target.all_known_hosts();
    let token = known_hosts::host_token(&target.host, target.port);
    let status = known_hosts::check_certificate(&files, &target.host, target.port, cert)
        .map_err(|e| TransportError::Config(format!("cannot read known_hosts: {e}")))?;
    match status {
        known_hosts::CertStatus::Trusted => {
            tracing::debug!("host certificate of {token} signed by a trusted authority");
            Ok(true)
        }
        known_hosts::CertStatus::Revoked { path, line } => Err(TransportError::HostKeyRevoked {
            host: token,
            fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
            known_hosts: path.display().to_string(),
            line,
        }),
        known_hosts::CertStatus::NotTrusted(why) => {
            tracing::warn!(
                "{token}: host certificate not accepted ({why}); checking its plain key"
            );
            Ok(false)
        }
    }
}

/// Strict host-key checking against the target's known_hosts files.
fn verify_host_key(target: &Target, key: &PublicKey) -> Result<(), TransportError> {
    let files = target.all_known_hosts();
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    let (status, found_in) = known_hosts::check_all(&files, &target.host, target.port, key)
        .map_err(|e| TransportError::Config(format!("cannot read known_hosts: {e}")))?;
    let append_to = target.known_hosts_file();
    let path = &found_in.unwrap_or_else(|| append_to.clone());
    let token = known_hosts::host_token(&target.host, target.port);
    match status {
        HostKeyStatus::Known => Ok(()),
        HostKeyStatus::Revoked { line } => {
            tracing::error!(
                "host key for {token} is revoked in {} line {line}",
                path.display()
            );
            Err(TransportError::HostKeyRevoked {
                host: token,
                fingerprint,
                known_hosts: path.display().to_string(),
                line,
            })
        }
        HostKeyStatus::OtherType { line, known } => {
            tracing::error!(
                "host key for {token} is of a type not recorded in {} (line {line} has {})",
                path.display(),
                known.join(", ")
            );
            Err(TransportError::HostKeyTypeChanged(Box::new(
                crate::transport::HostKeyTypeChange {
                    host: token,
                    offered: key.algorithm().to_string(),
                    fingerprint,
                    known_types: known.join(", "),
                    known_hosts: path.display().to_string(),
                    line,
                },
            )))
        }
        HostKeyStatus::Changed { line } => {
            tracing::error!(
                "host key for {token} does not match {} line {line}",
                path.display()
            );
            Err(TransportError::HostKeyChanged {
                host: token,
                fingerprint,
                known_hosts: path.display().to_string(),
                line,
            })
        }
        HostKeyStatus::Unknown if target.policy == HostKeyPolicy::AcceptNew => {
            known_hosts::append(
                path,
                &target.host,
                target.port,
                key,
                target.hash_known_hosts,
            )
            .map_err(|e| {
                TransportError::Config(format!("cannot record host key in {}: {e}", path.display()))
            })?;
            tracing::warn!(
                "accepted new host key for {token} ({fingerprint}), recorded in {}",
                path.display()
            );
            Ok(())
        }
        HostKeyStatus::Unknown => Err(TransportError::HostKeyUnknown {
            host: token,
            hint: format!(
                "`{}` and check that the fingerprint is {fingerprint}; or set \
                     host_key_checking = \"accept-new\" for this host in the inventory",
                keyscan_command(target, key)
            ),
        }),
    }
}

/// The `ssh-keyscan` command that records `key`'s type for `target`, quoted so that it
/// can be pasted into a shell whatever the host name and the known_hosts path hold.
fn keyscan_command(target: &Target, key: &PublicKey) -> String {
    use crate::command::quote;
    let port_arg = if target.port == 22 {
        String::new()
    } else {
        format!("-p {} ", target.port)
    };
    let key_type = key.algorithm().to_string();
    format!(
        "ssh-keyscan {port_arg}-t {} {} >> {}",
        quote(&key_type),
        quote(&target.host),
        quote(&target.known_hosts_file().to_string_lossy())
    )
}

impl Connection {
    /// Open a session channel and exec `command` on it: the channel's two halves. The
    /// caller holds one of [`Connection::sessions`]' permits for as long as it is open.
    pub(crate) async fn exec_channel(
        &self,
        command: String,
        host: &str,
    ) -> Result<(ChannelReadHalf, ChannelWriteHalf<Msg>), TransportError> {
        let channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(|e| map_russh_error(e, host))?;
        channel
            .exec(true, command)
            .await
            .map_err(|e| map_russh_error(e, host))?;
        Ok(channel.split())
    }
}

/// Map a russh error to what the operator should read.
pub(crate) fn map_russh_error(e: russh::Error, addr: &str) -> TransportError {
    match disconnect_reason(&e) {
        Some(reason) => TransportError::Disconnected {
            host: addr.to_string(),
            reason,
        },
        None => TransportError::Protocol(format!("{addr}: {e}")),
    }
}

/// The reason to give when `e` means the connection is gone; `None` for other errors.
fn disconnect_reason(e: &russh::Error) -> Option<String> {
    use russh::Error as E;
    match e {
        E::Disconnect | E::HUP | E::SendError | E::RecvError => {
            Some("the server closed the connection".into())
        }
        E::KeepaliveTimeout | E::InactivityTimeout | E::ConnectionTimeout => {
            Some("no answer to keepalives".into())
        }
        E::IO(io) => Some(io.to_string()),
        _ => None,
    }
}

fn map_client_error(e: ClientError, target: &Target) -> TransportError {
    let addr = target.addr();
    match e {
        ClientError::HostKey(t) => t,
        // Nothing in common but `ssh-rsa`, which ferry left out on purpose.
        ClientError::Ssh(russh::Error::NoCommonAlgo {
            kind: russh::AlgorithmKind::Key,
            theirs,
            ..
        }) if !target.allow_ssh_rsa_sha1 && theirs.iter().any(|a| a == "ssh-rsa") => {
            TransportError::LegacyHostKeyAlgorithm {
                host: addr,
                offered: theirs.join(","),
            }
        }
        ClientError::Ssh(e) => map_russh_error(e, &addr),
    }
}

/// Open a connection along `route` and authenticate on every hop.
pub(crate) async fn open(
    route: &Route,
    creds: &Credentials,
    timeout: Duration,
) -> Result<Connection, TransportError> {
    // A jump host's session ending ends the target's too: either records why.
    let lost: LostReason = Arc::new(std::sync::Mutex::new(None));
    let mut jumps: Vec<Handle<Client>> = Vec::new();
    for hop in &route.jumps {
        let jump_key = Arc::new(std::sync::Mutex::new(None));
        let handle = connect_hop(hop, jumps.last(), creds, timeout, &jump_key, &lost).await?;
        tracing::debug!("connected to jump host {}", hop.addr());
        jumps.push(handle);
    }
    let verified = Arc::new(std::sync::Mutex::new(None));
    let handle = connect_hop(
        &route.target,
        jumps.last(),
        creds,
        timeout,
        &verified,
        &lost,
    )
    .await?;
    let host_key = verified.lock().ok().and_then(|k| k.clone());
    Ok(Connection {
        handle,
        sessions: Arc::new(Semaphore::new(MAX_SESSIONS_PER_CONNECTION)),
        shell: std::sync::Mutex::new(ShellSlot::Unopened),
        _jumps: jumps,
        host_key,
        lost,
    })
}

/// Connect to `target`, directly or through a `direct-tcpip` channel of `via`.
async fn connect_hop(
    target: &Target,
    via: Option<&Handle<Client>>,
    creds: &Credentials,
    timeout: Duration,
    verified: &Arc<std::sync::Mutex<Option<String>>>,
    lost: &LostReason,
) -> Result<Handle<Client>, TransportError> {
    let addr = target.addr();
    let config = client_config(target);
    let handler = Client {
        target: target.clone(),
        verified: verified.clone(),
        lost: lost.clone(),
    };
    let timed_out = || TransportError::Timeout {
        addr: addr.clone(),
        secs: timeout.as_secs(),
    };
    let mut handle = match via {
        None if target.proxy_command.is_some() => {
            let command = target.proxy_command.clone().unwrap_or_default();
            let stream = ProxyStream::spawn(&command).map_err(|e| TransportError::Unreachable {
                addr: addr.clone(),
                reason: format!("cannot run ProxyCommand {command:?}: {e}"),
            })?;
            tokio::time::timeout(
                timeout,
                russh::client::connect_stream(config, stream, handler),
            )
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| map_client_error(e, target))?
        }
        None => {
            let tcp = tokio::time::timeout(
                timeout,
                tokio::net::TcpStream::connect((target.host.as_str(), target.port)),
            )
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    TransportError::Refused { addr: addr.clone() }
                }
                std::io::ErrorKind::TimedOut => timed_out(),
                _ => TransportError::Unreachable {
                    addr: addr.clone(),
                    reason: e.to_string(),
                },
            })?;
            let _ = tcp.set_nodelay(true);
            tokio::time::timeout(timeout, russh::client::connect_stream(config, tcp, handler))
                .await
                .map_err(|_| timed_out())?
                .map_err(|e| map_client_error(e, target))?
        }
        Some(jump) => {
            let channel = tokio::time::timeout(
                timeout,
                jump.channel_open_direct_tcpip(
                    target.host.clone(),
                    u32::from(target.port),
                    "127.0.0.1",
                    0,
                ),
            )
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| TransportError::Unreachable {
                addr: addr.clone(),
                reason: format!("the jump host could not open a connection to it: {e}"),
            })?;
            tokio::time::timeout(
                timeout,
                russh::client::connect_stream(config, channel.into_stream(), handler),
            )
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| map_client_error(e, target))?
        }
    };
    auth::authenticate(&mut handle, target, creds, timeout).await?;
    tracing::debug!("authenticated to {} as {}", addr, target.user);
    Ok(handle)
}

/// The byte stream of a `ProxyCommand`: its stdout and stdin. The child is killed when the
/// stream is dropped, that is when the session ends.
struct ProxyStream {
    io: tokio::io::Join<tokio::process::ChildStdout, tokio::process::ChildStdin>,
    _child: tokio::process::Child,
}

impl ProxyStream {
    /// `sh -c 'exec COMMAND'`, as ssh runs it (with `$SHELL`, else /bin/sh); its stderr
    /// goes to ferry's log.
    fn spawn(command: &str) -> std::io::Result<ProxyStream> {
        use std::process::Stdio;
        let shell = std::env::var("SHELL")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "/bin/sh".into());
        let mut child = tokio::process::Command::new(shell)
            .arg("-c")
            .arg(format!("exec {command}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(std::io::Error::other("no pipes to the ProxyCommand"));
        };
        if let Some(stderr) = child.stderr.take() {
            let command = command.to_string();
            tokio::spawn(async move {
                use tokio::io::AsyncBufReadExt;
                let mut lines = tokio::io::BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::warn!("ProxyCommand {command:?}: {line}");
                }
            });
        }
        Ok(ProxyStream {
            io: tokio::io::join(stdout, stdin),
            _child: child,
        })
    }
}

impl tokio::io::AsyncRead for ProxyStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for ProxyStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_algorithms_come_first() {
        let order = host_key_order(&[Algorithm::Rsa { hash: None }], true);
        assert!(order[0].clone().is_rsa(), "{order:?}");
        assert!(order.contains(&Algorithm::Ed25519));
        assert_eq!(order.len(), russh::Preferred::DEFAULT.key.len());
    }

    #[test]
    fn ssh_rsa_sha1_only_when_allowed() {
        let order = host_key_order(&[Algorithm::Rsa { hash: None }], false);
        assert!(order[0].clone().is_rsa(), "{order:?}");
        assert!(!order.iter().any(is_ssh_rsa_sha1), "{order:?}");
        assert!(order.contains(&Algorithm::Rsa {
            hash: Some(russh::keys::HashAlg::Sha512)
        }));
        assert!(host_key_order(&[], true).iter().any(is_ssh_rsa_sha1));
    }

    #[test]
    fn keyscan_hint_quotes_host_and_path() {
        let target = Target {
            alias: "h".into(),
            host: "127.0.0.1".into(),
            port: 2222,
            user: "root".into(),
            identity_files: vec![],
            identities_only: false,
            known_hosts: vec![std::path::PathBuf::from("/tmp/my dir/it's known_hosts")],
            global_known_hosts: vec![],
            hash_known_hosts: false,
            policy: HostKeyPolicy::Yes,
            proxy_command: None,
            allow_ssh_rsa_sha1: false,
            server_alive: Default::default(),
        };
        let key = PublicKey::from_openssh(
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ",
        )
        .unwrap();
        let cmd = keyscan_command(&target, &key);
        let words = shlex::split(&cmd).unwrap();
        assert_eq!(
            words,
            vec![
                "ssh-keyscan",
                "-p",
                "2222",
                "-t",
                "ssh-ed25519",
                "127.0.0.1",
                ">>",
                "/tmp/my dir/it's known_hosts"
            ],
            "{cmd}"
        );
    }
}
