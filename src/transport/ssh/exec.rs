//! Running a command on a session channel (never with a PTY) with stdin/stdout as byte
//! streams.
//!
//! A pump task owns the channel's receiving side: stdout chunks go through a small bounded
//! queue to the reader (so a slow reader stops the pump, which fills russh's per-channel
//! buffer, which stops the connection: backpressure end to end, memory flat), stderr is
//! collected, and the exit status, a sudo handshake (see [`super::become_`]) and a lost
//! connection are all handled there.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::channel::{mpsc, oneshot};
use futures::SinkExt;
use russh::client::Msg;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio_util::io::StreamReader;

use super::become_::{self, BecomeHandshake};
use super::session::{map_russh_error, Connection};
use crate::secrets::Secrets;
use crate::transport::BecomeSpec;
use crate::transport::{
    BoundedOutput, BoxFuture, BoxRead, ExecOutput, OutputLimit, StreamExit, TransportError,
};

pub(crate) use super::stdin::{RelayPipe, StdinWriter};

/// Stdout chunks queued between the pump and the reader.
const STDOUT_QUEUE: usize = 16;
/// Stderr kept per command; the rest is dropped (a runaway command must not eat memory).
const STDERR_LIMIT: usize = 4 * 1024 * 1024;

/// A started command.
pub(crate) struct Running {
    pub stdin: StdinWriter,
    pub stdout: BoxRead,
    pub exit: BoxFuture<Result<StreamExit, TransportError>>,
    /// To close the channel early (relays).
    pub channel: Arc<ChannelWriteHalf<Msg>>,
    /// Stops the command if this is dropped before the command ended.
    pub guard: StopGuard,
}

/// How to stop a command ferry gave up on (Ctrl-C, a timeout, a dropped stream): the
/// stop script for the command's mark (see `script::stop_script`), run on a channel of
/// its own of the same connection, through sudo when the command was. Kept as what it
/// needs, not as a built command line: nearly every command ends on its own.
pub(crate) struct Stopper {
    /// Weak: an idle persistent shell keeps its last stopper, and the shell lives in the
    /// connection; a strong reference would keep the connection (and a ProxyCommand
    /// child) alive after its transport is dropped. Upgraded when a stop is spawned.
    pub conn: std::sync::Weak<Connection>,
    pub mark: String,
    pub shell: String,
    pub become_: Option<BecomeSpec>,
    pub host: String,
    pub secrets: Secrets,
}

/// Armed while a command runs. Dropped before the command ended, it asks sshd to signal
/// the command, closes the channel, and runs the [`Stopper`]: whatever the command
/// started on the host ends with ferry's interest in it, instead of running on.
pub(crate) struct StopGuard {
    channel: Option<Arc<ChannelWriteHalf<Msg>>>,
    ended: Arc<AtomicBool>,
    stopper: Option<Stopper>,
}

impl Drop for StopGuard {
    fn drop(&mut self) {
        let Some(channel) = self.channel.take() else {
            return;
        };
        if self.ended.load(Ordering::SeqCst) {
            return;
        }
        spawn_stop(Some(channel), self.stopper.take());
    }
}

/// A stream end that keeps a command's [`StopGuard`] alive as long as it lives.
pub(crate) struct HoldsGuard<T> {
    inner: T,
    _guard: Arc<StopGuard>,
}

impl<T> HoldsGuard<T> {
    pub(crate) fn new(inner: T, guard: Arc<StopGuard>) -> HoldsGuard<T> {
        HoldsGuard {
            inner,
            _guard: guard,
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for HoldsGuard<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for HoldsGuard<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The stops in flight, so that ferry can let them finish before it exits.
static STOPS: std::sync::LazyLock<tokio_util::task::TaskTracker> =
    std::sync::LazyLock::new(tokio_util::task::TaskTracker::new);

/// How long a stop script may take.
const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Stop a command in the background: signal and close its channel (when given), then
/// run the stop script (when given).
pub(crate) fn spawn_stop(channel: Option<Arc<ChannelWriteHalf<Msg>>>, stopper: Option<Stopper>) {
    // The connection is held from here until the stop is done (the command's transport
    // may be going away right now).
    let stopper = stopper.and_then(|s| s.conn.upgrade().map(|conn| (conn, s)));
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        STOPS.spawn_on(stop(channel, stopper), &rt);
    }
}

/// Wait (up to `limit`) for the stops of abandoned commands to reach their hosts: when
/// ferry exits, its connections end, and a stop not yet sent never will be.
pub async fn wait_for_stops(limit: std::time::Duration) {
    STOPS.close();
    let _ = tokio::time::timeout(limit, STOPS.wait()).await;
    STOPS.reopen();
}

async fn stop(
    channel: Option<Arc<ChannelWriteHalf<Msg>>>,
    stopper: Option<(Arc<Connection>, Stopper)>,
) {
    if let Some(channel) = channel {
        // sshd signals the command's process group where it can (not for a root
        // login: see `script::stop_script`), then the channel goes.
        let _ = channel.signal(russh::Sig::TERM).await;
        let _ = channel.eof().await;
        let _ = channel.close().await;
    }
    let Some((conn, s)) = stopper else {
        return;
    };
    let host = s.host.clone();
    let run = async move {
        let stop = crate::command::Cmd::script(
            super::script::stop_script(&s.mark),
            "stop an abandoned command",
        );
        let (line, preamble, hs) =
            super::command_line(&s.shell, s.become_.as_ref(), &stop, &super::script::mark()?)?;
        let running = start(&conn, line, Some(preamble), hs, &s.host, &s.secrets, None).await?;
        collect(running, None, Some(OutputLimit::REPORT)).await
    };
    match tokio::time::timeout(STOP_TIMEOUT, run).await {
        Ok(Ok(out)) if out.success() => {
            tracing::debug!(host, "stopped an abandoned command's processes");
        }
        Ok(Ok(out)) => tracing::warn!(
            host,
            "stopping an abandoned command's processes failed: {}",
            out.stderr_str()
        ),
        Ok(Err(e)) => tracing::warn!(host, "cannot stop an abandoned command's processes: {e}"),
        Err(_) => tracing::warn!(
            host,
            "stopping an abandoned command's processes took over {}s",
            STOP_TIMEOUT.as_secs()
        ),
    }
}

/// Open a session channel on `conn` and exec `command` (already a complete shell command
/// line for the login shell), then send `preamble` (the script, see `script`) ahead of
/// anything written to stdin. With `become_`, returns only once sudo has accepted, so
/// nothing written to stdin can reach sudo's password prompt.
pub(crate) async fn start(
    conn: &Arc<Connection>,
    command: String,
    preamble: Option<Bytes>,
    become_: Option<BecomeHandshake>,
    host: &str,
    secrets: &Secrets,
    stopper: Option<Stopper>,
) -> Result<Running, TransportError> {
    let permit =
        conn.sessions
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| TransportError::Disconnected {
                host: host.to_string(),
                reason: "connection shut down".into(),
            })?;
    tracing::trace!(host, "exec: a session channel is free; opening it");
    let (read, write) = conn.exec_channel(command, host).await?;
    tracing::trace!(host, "exec: channel open, command sent");
    let write = Arc::new(write);

    let (out_tx, out_rx) = mpsc::channel::<io::Result<Bytes>>(STDOUT_QUEUE);
    let (exit_tx, exit_rx) = oneshot::channel();
    let (ready_tx, ready_rx) = oneshot::channel();
    let (channel_open_tx, channel_open_rx) = tokio::sync::watch::channel(());
    let pump = Pump {
        _channel_open: channel_open_tx,
        read,
        write: write.clone(),
        out: out_tx,
        stderr: Vec::new(),
        stderr_truncated: false,
        become_: become_.map(|hs| BecomeState {
            hs,
            pre: Vec::new(),
            prompts_answered: 0,
            failure: None,
        }),
        ready: Some(ready_tx),
        host: host.to_string(),
        secrets: secrets.clone(),
        conn: conn.clone(),
    };
    let ended = Arc::new(AtomicBool::new(false));
    let guard = StopGuard {
        channel: Some(write.clone()),
        ended: ended.clone(),
        stopper,
    };
    tokio::spawn(async move {
        let result = pump.run().await;
        ended.store(true, Ordering::SeqCst);
        let _ = exit_tx.send(result);
        drop(permit);
    });

    // Without become the pump reports ready at once.
    match ready_rx.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            return Err(TransportError::Disconnected {
                host: host.to_string(),
                reason: "channel ended before the command started".into(),
            })
        }
    }

    if let Some(preamble) = preamble {
        // russh waits for window space without watching the connection: a connection
        // that died just as the channel opened would leave this send waiting forever
        // (seen when an sshd was killed mid-stream). Bounded, and given up as soon as
        // the connection is seen closed.
        let send = write.data_bytes(preamble);
        tokio::pin!(send);
        let started = std::time::Instant::now();
        loop {
            tokio::select! {
                sent = &mut send => {
                    sent.map_err(|e| map_russh_error(e, host))?;
                    break;
                }
                _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {
                    let reason = if conn.is_closed() {
                        "the connection closed before the command's script was sent".to_string()
                    } else if started.elapsed() > SCRIPT_SEND_TIMEOUT {
                        format!(
                            "the command's script could not be sent within {}s: the \
                             connection stopped taking data",
                            SCRIPT_SEND_TIMEOUT.as_secs()
                        )
                    } else {
                        continue;
                    };
                    return Err(TransportError::Disconnected {
                        host: host.to_string(),
                        reason,
                    });
                }
            }
        }
        tracing::trace!(host, "exec: script sent");
    }

    let host_owned = host.to_string();
    let exit: BoxFuture<Result<StreamExit, TransportError>> = Box::pin(async move {
        exit_rx.await.unwrap_or_else(|_| {
            Err(TransportError::Disconnected {
                host: host_owned,
                reason: "command state lost".into(),
            })
        })
    });
    Ok(Running {
        stdin: StdinWriter::spawn(write.clone(), channel_open_rx),
        stdout: Box::pin(StreamReader::new(out_rx)),
        exit,
        channel: write,
        guard,
    })
}

/// Run to completion: feed `stdin` (EOF right away when `None`), collect stdout/stderr,
/// each bounded by `limit` (`None`: keep everything).
///
/// Dropped before the end (a timeout): the channel is closed, so neither the session
/// slot nor the remote command's pipes are kept for ever.
pub(crate) async fn collect(
    running: Running,
    stdin: Option<&[u8]>,
    limit: Option<OutputLimit>,
) -> Result<ExecOutput, TransportError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Running {
        stdin: mut input,
        stdout: mut output,
        exit,
        channel: _,
        guard,
    } = running;
    let write = async {
        if let Some(data) = stdin.filter(|d| !d.is_empty()) {
            input.write_all(data).await?;
        }
        input.shutdown().await
    };
    let read = async {
        let mut kept = BoundedOutput::new(limit);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = output.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, io::Error>(kept);
            }
            kept.push(buf.get(..n).unwrap_or_default());
        }
    };
    // A command that exits without reading its stdin makes the write fail: not an error.
    let (_written, read) = tokio::join!(write, read);
    let exit = exit.await?;
    let stdout = read?;
    drop(guard);
    let stderr = match limit {
        Some(l) => {
            let mut kept = BoundedOutput::new(Some(l));
            kept.push(&exit.stderr);
            kept.finish("stderr")
        }
        None => exit.stderr,
    };
    Ok(ExecOutput {
        status: exit.status,
        stdout: stdout.finish("stdout"),
        stderr,
    })
}

/// How long the few kilobytes of a command's script may take to be accepted by the
/// connection (see `start`).
const SCRIPT_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// After the command's exit status arrived, how long the channel may stay silent before
/// ferry stops waiting for its end of output: a process the command left in the
/// background (`daemon &`) keeps the output pipes, and with them the channel, open.
const AFTER_EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

struct BecomeState {
    hs: BecomeHandshake,
    /// Stderr before sudo let the command start.
    pre: Vec<u8>,
    prompts_answered: usize,
    failure: Option<TransportError>,
}

struct Pump {
    /// Dropped when the pump ends: tells the stdin sender the channel is gone.
    _channel_open: tokio::sync::watch::Sender<()>,
    read: ChannelReadHalf,
    write: Arc<ChannelWriteHalf<Msg>>,
    out: mpsc::Sender<io::Result<Bytes>>,
    stderr: Vec<u8>,
    stderr_truncated: bool,
    become_: Option<BecomeState>,
    ready: Option<oneshot::Sender<Result<(), TransportError>>>,
    host: String,
    secrets: Secrets,
    /// Held while the pump runs (the connection lives as long as its commands), and
    /// asked why it ended when the channel ends without an exit status.
    conn: Arc<Connection>,
}

impl Pump {
    /// Why the connection ended, if it did: russh tells its handler a moment after the
    /// channels see the end, so wait for that moment (briefly: a channel can also end
    /// alone, the connection still up).
    async fn session_end_reason(&self) -> Option<String> {
        for _ in 0..20 {
            if let Some(why) = self.conn.lost_reason() {
                return Some(why);
            }
            if !self.conn.is_closed() {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.conn.lost_reason()
    }

    async fn run(mut self) -> Result<StreamExit, TransportError> {
        if self.become_.is_none() {
            self.signal_ready(Ok(()));
        }
        let mut status: Option<u32> = None;
        let mut signal: Option<String> = None;
        let mut closed = false;
        let mut eof = false;
        let mut reader_gone = false;
        let mut left_open = false;
        loop {
            let msg = if status.is_some() || signal.is_some() {
                match tokio::time::timeout(AFTER_EXIT_GRACE, self.read.wait()).await {
                    Ok(msg) => msg,
                    Err(_) => {
                        // Exited, but something it started still holds the output open.
                        left_open = true;
                        break;
                    }
                }
            } else {
                self.read.wait().await
            };
            let Some(msg) = msg else { break };
            match msg {
                // A dropped reader: keep draining so the command can finish.
                ChannelMsg::Data { data } if !reader_gone => {
                    reader_gone = self.out.send(Ok(data)).await.is_err();
                }
                ChannelMsg::ExtendedData { data, ext: 1 } => self.on_stderr(&data).await,
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                ChannelMsg::ExitSignal {
                    signal_name,
                    error_message,
                    ..
                } => {
                    signal = Some(
                        format!("{signal_name:?} {error_message}")
                            .trim()
                            .to_string(),
                    );
                }
                ChannelMsg::Eof => eof = true,
                ChannelMsg::Close => {
                    closed = true;
                    break;
                }
                ChannelMsg::Failure => {
                    let e = TransportError::Protocol(format!(
                        "{}: the server refused to run the command",
                        self.host
                    ));
                    self.signal_ready(Err(TransportError::Protocol(e.to_string())));
                    let _ = self.write.close().await;
                    return Err(e);
                }
                _ => {}
            }
        }

        if left_open {
            tracing::debug!(
                "{}: the command exited but a process it left running keeps its output \
                 open; closing the channel",
                self.host
            );
            let _ = self.write.eof().await;
            let _ = self.write.close().await;
        }
        let lost = !closed && !((eof || left_open) && (status.is_some() || signal.is_some()));
        if lost {
            let reason = match self.session_end_reason().await {
                Some(why) => format!("connection lost ({why}) while the command was running"),
                None => "connection lost while the command was running".to_string(),
            };
            if !reader_gone {
                let _ = self
                    .out
                    .send(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!("{}: {reason}", self.host),
                    )))
                    .await;
            }
            let e = TransportError::Disconnected {
                host: self.host.clone(),
                reason,
            };
            self.signal_ready(Err(TransportError::Disconnected {
                host: self.host.clone(),
                reason: "connection lost before the command started".into(),
            }));
            return Err(e);
        }

        if let Some(state) = self.become_.take() {
            // The channel ended before sudo let the command start (or after a refusal).
            let e = state.failure.unwrap_or_else(|| {
                become_::failure(&state.hs, &state.pre, status, &self.host, &self.secrets)
            });
            self.signal_ready(Err(clone_become(&e)));
            return Err(e);
        }

        if let Some(sig) = signal {
            self.push_stderr(
                format!("\n[ferry: remote command killed by signal {sig}]\n").as_bytes(),
            );
        }
        if self.stderr_truncated {
            self.stderr
                .extend_from_slice(b"\n[ferry: stderr truncated]\n");
        }
        Ok(StreamExit {
            status,
            stderr: std::mem::take(&mut self.stderr),
        })
    }

    fn signal_ready(&mut self, r: Result<(), TransportError>) {
        if let Some(tx) = self.ready.take() {
            let _ = tx.send(r);
        }
    }

    fn push_stderr(&mut self, data: &[u8]) {
        let room = STDERR_LIMIT.saturating_sub(self.stderr.len());
        if data.len() > room {
            self.stderr_truncated = true;
        }
        self.stderr
            .extend_from_slice(data.get(..room.min(data.len())).unwrap_or_default());
    }

    async fn on_stderr(&mut self, data: &[u8]) {
        let Some(mut state) = self.become_.take() else {
            self.push_stderr(data);
            return;
        };
        state.pre.extend_from_slice(data);
        if state.failure.is_none() {
            let prompts = become_::count(&state.pre, state.hs.prompt.as_bytes());
            if prompts > state.prompts_answered {
                match (&state.hs.password, state.prompts_answered) {
                    (Some(pw), 0) => {
                        state.prompts_answered = 1;
                        let line = Bytes::from(format!("{pw}\n"));
                        if let Err(e) = self.write.data_bytes(line).await {
                            tracing::debug!("could not send the sudo password: {e}");
                        }
                    }
                    _ => {
                        // Asked again: the password was wrong (or none was expected).
                        let e = become_::failure(
                            &state.hs,
                            &state.pre,
                            None,
                            &self.host,
                            &self.secrets,
                        );
                        self.signal_ready(Err(clone_become(&e)));
                        state.failure = Some(e);
                        let _ = self.write.eof().await;
                        let _ = self.write.close().await;
                    }
                }
            }
        }
        if state.failure.is_none() {
            let ok_line = format!("{}\n", state.hs.ok);
            if let Some(pos) = become_::find(&state.pre, ok_line.as_bytes()) {
                let rest = state
                    .pre
                    .get(pos + ok_line.len()..)
                    .unwrap_or_default()
                    .to_vec();
                self.push_stderr(&rest);
                self.signal_ready(Ok(()));
                return;
            }
        }
        self.become_ = Some(state);
    }
}

/// `TransportError` is not `Clone`; sudo failures are rebuilt for the second receiver.
fn clone_become(e: &TransportError) -> TransportError {
    match e {
        TransportError::Become { host, reason } => TransportError::Become {
            host: host.clone(),
            reason: reason.clone(),
        },
        other => TransportError::Protocol(other.to_string()),
    }
}
