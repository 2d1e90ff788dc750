//! How ferry touches hosts. The engine and the modules only ever see [`Transport`];
//! `ssh` is the real implementation (russh), `fake` an in-memory one for tests.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::command::Cmd;

pub mod become_task;
pub mod fake;
pub mod read_only;
pub mod recorded;
pub mod ssh;
pub mod tunnel;

/// Why a transport operation failed. Each kind gets its own variant so the report can
/// say what the operator must do (trust a key, fix a password, open a port...).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("connection refused by {addr}")]
    Refused { addr: String },
    #[error("timed out connecting to {addr} after {secs}s")]
    Timeout { addr: String, secs: u64 },
    #[error("could not resolve or reach {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("authentication failed for {user}@{addr} (tried: {tried})")]
    AuthFailed {
        user: String,
        addr: String,
        tried: String,
    },
    #[error("host key for {host} is not known; to trust it run: {hint}")]
    HostKeyUnknown { host: String, hint: String },
    #[error(
        "HOST KEY FOR {host} HAS CHANGED (now {fingerprint}); refusing to connect. \
         If the change is expected, remove the old entry from {known_hosts} (line {line})"
    )]
    HostKeyChanged {
        host: String,
        fingerprint: String,
        known_hosts: String,
        line: usize,
    },
    #[error("{0}")]
    HostKeyTypeChanged(Box<HostKeyTypeChange>),
    #[error(
        "host key {fingerprint} of {host} is REVOKED in {known_hosts} (line {line}, @revoked); \
         refusing to connect"
    )]
    HostKeyRevoked {
        host: String,
        fingerprint: String,
        known_hosts: String,
        line: usize,
    },
    #[error(
        "{host} offers only host keys signed with the legacy ssh-rsa (SHA-1) algorithm \
         (offered: {offered}), refused like OpenSSH 8.8 and later do; give the server an \
         ed25519/ECDSA key or enable rsa-sha2-256/512, or set allow_ssh_rsa_sha1 = true \
         for this host in the inventory"
    )]
    LegacyHostKeyAlgorithm { host: String, offered: String },
    #[error(
        "{host}: the login shell is not a POSIX sh ({detail}); ferry needs a POSIX sh \
         login shell, or `shell = \"/bin/sh\"` for this host in the inventory"
    )]
    NotPosixShell { host: String, detail: String },
    #[error("sudo failed on {host}: {reason}")]
    Become { host: String, reason: String },
    #[error("connection to {host} lost: {reason}")]
    Disconnected { host: String, reason: String },
    #[error("ssh configuration error: {0}")]
    Config(String),
    #[error("port forward to {target} failed: {reason}")]
    Forward { target: String, reason: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("ssh protocol error: {0}")]
    Protocol(String),
    /// A write while a module read facts (see [`read_only`]): a bug in that module.
    #[error("refused on {host} while reading facts: {what} would change the host; facts only read (a bug in the module)")]
    ReadOnly { host: String, what: String },
}

/// A host whose recorded keys are all of other types than the one it presented.
#[derive(Debug, thiserror::Error)]
#[error(
    "REMOTE HOST IDENTIFICATION HAS CHANGED for {host}: it presented a {offered} key \
     ({fingerprint}) but {known_hosts} records only {known_types} key(s) for it (line {line}); \
     refusing to connect. If the change is expected, remove the host's entries from \
     {known_hosts} (`ssh-keygen -R {host} -f {known_hosts}`) and trust the new key"
)]
pub struct HostKeyTypeChange {
    pub host: String,
    pub offered: String,
    pub fingerprint: String,
    pub known_types: String,
    pub known_hosts: String,
    pub line: usize,
}

impl TransportError {
    /// Errors that mean "the host is unreachable" in the report, as opposed to a command
    /// that ran and failed.
    pub fn is_unreachable(&self) -> bool {
        !matches!(self, TransportError::Io(_))
    }
}

/// What a finished command left behind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit status; `None` when the remote side sent a signal instead of a status.
    pub status: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// How much of a command's stdout and stderr to keep: the first `head` and the last
/// `tail` bytes of each, with a note of how many bytes were left out between them. A
/// command may print gigabytes; its report needs neither all of them nor the memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimit {
    pub head: usize,
    pub tail: usize,
}

impl OutputLimit {
    /// What a `command` task keeps for its report and facts: 64 KiB + 64 KiB per stream.
    pub const REPORT: OutputLimit = OutputLimit {
        head: 64 * 1024,
        tail: 64 * 1024,
    };

    /// Cut `out`'s streams down to this limit (for transports that collect first).
    pub fn apply(self, out: ExecOutput) -> ExecOutput {
        let cut = |bytes: Vec<u8>, stream: &str| {
            let mut b = BoundedOutput::new(Some(self));
            b.push(&bytes);
            b.finish(stream)
        };
        ExecOutput {
            status: out.status,
            stdout: cut(out.stdout, "stdout"),
            stderr: cut(out.stderr, "stderr"),
        }
    }
}

/// One output stream being collected, bounded by an [`OutputLimit`] (or not at all).
#[derive(Debug, Default)]
pub struct BoundedOutput {
    limit: Option<OutputLimit>,
    head: Vec<u8>,
    tail: std::collections::VecDeque<u8>,
    omitted: u64,
}

impl BoundedOutput {
    pub fn new(limit: Option<OutputLimit>) -> Self {
        BoundedOutput {
            limit,
            ..Default::default()
        }
    }

    pub fn push(&mut self, mut data: &[u8]) {
        let Some(limit) = self.limit else {
            self.head.extend_from_slice(data);
            return;
        };
        let room = limit.head.saturating_sub(self.head.len());
        if room > 0 {
            let n = room.min(data.len());
            self.head
                .extend_from_slice(data.get(..n).unwrap_or_default());
            data = data.get(n..).unwrap_or_default();
        }
        if data.len() > limit.tail {
            // Everything in the tail and the front of `data` falls out.
            self.omitted += (self.tail.len() + data.len() - limit.tail) as u64;
            self.tail.clear();
            data = data.get(data.len() - limit.tail..).unwrap_or_default();
        }
        self.tail.extend(data);
        let excess = self.tail.len().saturating_sub(limit.tail);
        if excess > 0 {
            self.tail.drain(..excess);
            self.omitted += excess as u64;
        }
    }

    /// Bytes left out so far.
    pub fn omitted(&self) -> u64 {
        self.omitted
    }

    /// The kept bytes, with a note in place of what was left out.
    pub fn finish(self, stream: &str) -> Vec<u8> {
        let mut out = self.head;
        if self.omitted > 0 {
            out.extend_from_slice(
                format!("\n[ferry: {} bytes of {stream} omitted]\n", self.omitted).as_bytes(),
            );
        }
        out.extend(self.tail);
        out
    }
}

/// Exit status and collected stderr of a streamed command (stdout was streamed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamExit {
    pub status: Option<u32>,
    pub stderr: Vec<u8>,
}

pub type BoxRead = Pin<Box<dyn AsyncRead + Send>>;
pub type BoxWrite = Pin<Box<dyn AsyncWrite + Send>>;
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A running command with its stdin and stdout as byte streams (never a PTY).
/// Drop or shut down `stdin` to send EOF. Read `stdout` to the end, then await `exit`.
/// Backpressure: the remote side is only sent as much as the reader consumes.
pub struct ExecStream {
    pub stdin: BoxWrite,
    pub stdout: BoxRead,
    pub exit: BoxFuture<Result<StreamExit, TransportError>>,
}

/// A bidirectional byte pipe, e.g. a forwarded TCP connection.
pub trait Duplex: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Duplex for T {}

/// How a forwarded connection was made, so `-v` can say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardMethod {
    /// SSH `direct-tcpip` channel.
    DirectTcpip,
    /// A byte relay over an exec channel, when the server forbids forwarding.
    Relay(&'static str),
}

/// What running a command gives: its output, or why it could not run.
pub type ExecResult = Result<ExecOutput, TransportError>;

/// The one interface to a host. One implementation per kind of connection.
#[async_trait]
pub trait Transport: Send + Sync {
    /// The inventory name of the host.
    fn host(&self) -> &str;

    /// The host key this transport verified when it connected, in OpenSSH's public-key
    /// form (`ssh-ed25519 AAAA…`, no comment); `None` when it verified none (a fake).
    /// What ferry pins when another host is to reach this one (the direct route).
    fn verified_host_key(&self) -> Option<String> {
        None
    }

    /// Run `cmd` (via `sh -c` on the host, as root when the host has `become`),
    /// feed it `stdin` if given, and collect its output.
    async fn exec(&self, cmd: &Cmd, stdin: Option<&[u8]>) -> ExecResult;

    /// [`Transport::exec`], keeping only `keep` of each output stream in memory (see
    /// [`OutputLimit`]). The default collects everything first, then cuts.
    async fn exec_bounded(&self, cmd: &Cmd, stdin: Option<&[u8]>, keep: OutputLimit) -> ExecResult {
        Ok(keep.apply(self.exec(cmd, stdin).await?))
    }

    /// Run `cmd` with streaming stdin/stdout. Bulk data goes over a connection of its own,
    /// so a slow stream never stalls other tasks' commands.
    async fn exec_stream(&self, cmd: &Cmd) -> Result<ExecStream, TransportError>;

    /// Open a connection to `host:port` as seen from the remote host (for the Kubernetes
    /// API tunnel). Uses its own SSH connection.
    async fn forward(
        &self,
        host: &str,
        port: u16,
    ) -> Result<(Box<dyn Duplex>, ForwardMethod), TransportError>;
}

/// Host-key checking policy, as OpenSSH's `StrictHostKeyChecking`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyPolicy {
    /// Unknown or changed keys are refused (the default).
    #[default]
    Yes,
    /// Unknown keys are accepted and recorded; changed keys are still refused.
    AcceptNew,
}

/// Privilege escalation through sudo.
#[derive(Clone, Default)]
pub struct BecomeSpec {
    /// The user to become (`root` unless the inventory says otherwise).
    pub user: String,
    /// The sudo password, sent on stdin, never in argv. `None`: passwordless sudo.
    pub password: Option<String>,
}

impl std::fmt::Debug for BecomeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BecomeSpec")
            .field("user", &self.user)
            .field(
                "password",
                &self.password.as_ref().map(|_| crate::command::MASK),
            )
            .finish()
    }
}

/// Everything needed to open a connection to one host. Built by the inventory (which
/// resolves env vars and prompts into values); consumed by `ssh::SshTransport::connect`.
/// Fields left `None` fall back to `~/.ssh/config` (or `ssh_config`), then to defaults.
#[derive(Clone, Default)]
pub struct ConnectSpec {
    /// Inventory name of the host (used in messages and reports).
    pub name: String,
    /// IP, DNS name, or a `Host` alias from ssh config.
    pub address: String,
    pub port: Option<u16>,
    pub user: Option<String>,
    /// Key files to try, in order, after the agent.
    pub identity_files: Vec<PathBuf>,
    /// Passphrase for encrypted key files.
    pub key_passphrase: Option<String>,
    /// Password for password authentication.
    pub password: Option<String>,
    /// known_hosts file; `None`: ssh config's UserKnownHostsFile (default
    /// `~/.ssh/known_hosts ~/.ssh/known_hosts2`).
    pub known_hosts: Option<PathBuf>,
    /// `None`: from ssh config, else `Yes`.
    pub host_key_policy: Option<HostKeyPolicy>,
    /// ssh config file; `None`: `~/.ssh/config` if it exists.
    pub ssh_config: Option<PathBuf>,
    /// `ProxyJump` value (`[user@]host[:port][,...]`); `None`: from ssh config.
    pub proxy_jump: Option<String>,
    /// Zero: ssh config's ConnectTimeout, else 10 s.
    pub connect_timeout: Duration,
    /// `None`: run as the login user.
    pub become_: Option<BecomeSpec>,
    /// Prompt on the terminal for missing passwords/passphrases (never when stdin is not a TTY).
    pub allow_prompt: bool,
    /// Accept host keys signed with the legacy `ssh-rsa` (SHA-1) algorithm, which OpenSSH
    /// 8.8 and later refuse by default (inventory `allow_ssh_rsa_sha1`).
    pub allow_ssh_rsa_sha1: bool,
    /// The POSIX shell ferry runs commands with on the host (inventory `shell`), instead
    /// of relying on the login shell being one. `None`: the login shell must be POSIX.
    pub shell: Option<String>,
    /// How a silent connection is found dead (inventory `server_alive_interval`,
    /// `server_alive_count_max`, as OpenSSH's ServerAliveInterval/CountMax).
    pub server_alive: ServerAlive,
    /// Which of `server_alive` the inventory set: those win over ssh config's
    /// ServerAliveInterval/ServerAliveCountMax, the others give way to it.
    pub server_alive_set: ServerAliveSet,
}

/// Which keepalive settings the inventory gave (see [`ConnectSpec::server_alive_set`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServerAliveSet {
    pub interval: bool,
    pub count_max: bool,
}

/// Probe a connection that has been silent for `interval`; after `count_max` unanswered
/// probes it counts as lost. A laptop whose Wi-Fi drops sees no reset, only silence: this
/// is what turns that silence into an error instead of a run that waits forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerAlive {
    /// `None`: never probe (OpenSSH's `ServerAliveInterval 0`).
    pub interval: Option<Duration>,
    pub count_max: usize,
}

impl Default for ServerAlive {
    /// ferry probes by default (OpenSSH does not): 15 s, 3 probes, so a dead link is
    /// reported within about a minute.
    fn default() -> Self {
        ServerAlive {
            interval: Some(Duration::from_secs(15)),
            count_max: 3,
        }
    }
}

impl std::fmt::Debug for ConnectSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mask = |o: &Option<String>| o.as_ref().map(|_| crate::command::MASK);
        f.debug_struct("ConnectSpec")
            .field("name", &self.name)
            .field("address", &self.address)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("identity_files", &self.identity_files)
            .field("key_passphrase", &mask(&self.key_passphrase))
            .field("password", &mask(&self.password))
            .field("known_hosts", &self.known_hosts)
            .field("host_key_policy", &self.host_key_policy)
            .field("ssh_config", &self.ssh_config)
            .field("proxy_jump", &self.proxy_jump)
            .field("connect_timeout", &self.connect_timeout)
            .field("become_", &self.become_)
            .field("allow_ssh_rsa_sha1", &self.allow_ssh_rsa_sha1)
            .field("shell", &self.shell)
            .field("server_alive", &self.server_alive)
            .field("server_alive_set", &self.server_alive_set)
            .finish()
    }
}

/// Opens transports. The engine connects through this, once per host, so tests can
/// inject [`fake::FakeConnector`] and the CLI the SSH one.
#[async_trait]
pub trait Connector: Send + Sync {
    async fn connect(
        &self,
        spec: &ConnectSpec,
        secrets: &crate::secrets::Secrets,
    ) -> Result<std::sync::Arc<dyn Transport>, TransportError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_output_keeps_head_and_tail_and_counts_the_rest() {
        let limit = OutputLimit { head: 4, tail: 3 };
        let mut b = BoundedOutput::new(Some(limit));
        for chunk in [&b"ab"[..], b"cdef", b"g", b"hijklmnop", b"qr"] {
            b.push(chunk);
        }
        assert_eq!(b.omitted(), 11);
        assert_eq!(
            String::from_utf8(b.finish("stdout")).unwrap(),
            "abcd\n[ferry: 11 bytes of stdout omitted]\npqr"
        );
        let mut small = BoundedOutput::new(Some(limit));
        small.push(b"abcdefg");
        assert_eq!(small.finish("stdout"), b"abcdefg");
        let mut all = BoundedOutput::new(None);
        all.push(&[b'x'; 1000]);
        assert_eq!(all.finish("stdout").len(), 1000);
    }
}
