//! A persistent remote shell per connection, for short commands.
//!
//! Opening a session channel costs sshd a fork and the login shell an exec for every
//! command (~5 ms on an idle machine, much more on a loaded one); a no-op task is
//! nothing but such a command. So [`super::SshTransport::exec`] without stdin and
//! without `become` runs its command through one long-lived `sh` on the control
//! connection instead: one round trip plus a fork.
//!
//! Each command is written to the shell's stdin as
//!
//! ```sh
//! ( <collect the here-document into a variable and eval it, see `script::heredoc`> ) </dev/null
//! printf '\n%s %s\n' '<nonce> <seq>' "$?"; printf '\n%s\n' '<nonce> <seq>' >&2
//! ```
//!
//! and is done once both markers have arrived (stdout and stderr are separate streams of
//! the channel, ordered independently). The command runs in a subshell: `cd`, `exit` or
//! variables do not leak into the next command; its stdin is `/dev/null` (on a channel it
//! would be an empty pipe); its text is never in any argv (`ps` shows `sh`). The nonce is
//! random per shell, so output cannot end a command early by accident.
//!
//! A process the command left in the background (`daemon &`) keeps the shell's output
//! pipes: the end of a command is its marker, wherever it is in the stream, never an EOF,
//! so such a process cannot make a command wait. What it writes after the marker is
//! dropped; what it writes while a later command runs shows up in that command's output.
//! A command killed by a signal reports the shell's `128 + signal` status instead of no
//! status.
//!
//! A shell is used by one command at a time. If a command's future is dropped midway,
//! or the shell misbehaves, the shell is closed and the next command opens a new one.
//!
//! Between commands a task drains the shell's channel. russh queues each channel's
//! messages in a bounded queue and its session reader waits while one is full, so a
//! background process writing to an idle shell nobody reads would stop every other
//! channel of the connection (a stream, a tunnel) once the queue filled. What the task
//! reads is dropped, as after a command's marker; an end of the shell it sees makes the
//! next command use a channel of its own before anything was written.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use russh::client::Msg;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::sync::{oneshot, OwnedSemaphorePermit};
use tokio::task::JoinHandle;

use super::script;
use super::session::{map_russh_error, Connection};
use crate::transport::{BoundedOutput, ExecOutput, OutputLimit, TransportError};

/// Stderr kept per command when the caller sets no limit, as on a channel of its own
/// (see `exec`).
const STDERR_LIMIT: OutputLimit = OutputLimit {
    head: 4 * 1024 * 1024,
    tail: 64 * 1024,
};

/// How long a new shell may take to answer its first probe.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Once a new shell printed errors instead of answering, how long to wait for more.
const READY_ERROR_WAIT: Duration = Duration::from_secs(1);

/// Who reads the shell's channel: the running command, or between commands a task
/// that drops what arrives (see the module's comment).
enum Reader {
    Held(ChannelReadHalf),
    Draining {
        stop: oneshot::Sender<()>,
        task: JoinHandle<Drained>,
    },
    /// Only while a command takes the reader back.
    Taken,
}

/// What the draining task hands back.
struct Drained {
    read: ChannelReadHalf,
    /// Bytes it dropped.
    stray: usize,
    /// The shell's channel ended while no command ran.
    ended: bool,
}

impl Reader {
    fn drain(read: ChannelReadHalf) -> Reader {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let mut read = read;
            let mut stray = 0;
            let mut ended = false;
            loop {
                tokio::select! {
                    biased;
                    // A stop, or the shell dropped (the sender with it).
                    _ = &mut stopped => break,
                    msg = read.wait() => match msg {
                        Some(ChannelMsg::Data { data })
                        | Some(ChannelMsg::ExtendedData { data, .. }) => stray += data.len(),
                        Some(ChannelMsg::WindowAdjusted { .. } | ChannelMsg::Success) => {}
                        Some(_) | None => {
                            ended = true;
                            break;
                        }
                    },
                }
            }
            Drained { read, stray, ended }
        });
        Reader::Draining { stop, task }
    }
}

/// One `sh` reading commands from its stdin.
pub(crate) struct Shell {
    reader: Reader,
    write: Arc<ChannelWriteHalf<Msg>>,
    nonce: String,
    seq: u64,
    /// Counts against the connection's session channels for as long as the shell lives.
    _permit: OwnedSemaphorePermit,
    /// A command is in it: dropped now, what it runs is stopped (see `exec::StopGuard`).
    busy: bool,
    /// Stops the shell's processes (its mark is an argument of the shell).
    stopper: Option<Box<super::exec::Stopper>>,
}

impl Drop for Shell {
    fn drop(&mut self) {
        // Closing the channel ends the remote shell (and whatever it still runs gets
        // EOF/SIGPIPE, as on a dropped channel of its own).
        // A command dropped halfway (Ctrl-C, a timeout) may have started processes that
        // outlive the shell: stop them too.
        let stopper = if self.busy {
            self.stopper.take().map(|s| *s)
        } else {
            None
        };
        super::exec::spawn_stop(Some(self.write.clone()), stopper);
    }
}

/// Random hex, for markers no command prints by accident.
fn nonce() -> Result<String, TransportError> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| TransportError::Protocol(format!("no randomness for a marker: {e}")))?;
    Ok(format!("ferry-{}", hex::encode(bytes)))
}

/// Where `marker` starts in `buf` (a plain search that only compares at newlines, which
/// every marker starts with).
fn find_marker(buf: &[u8], marker: &[u8]) -> Option<usize> {
    let first = *marker.first()?;
    let mut from = 0;
    while let Some(rel) = buf.get(from..)?.iter().position(|&b| b == first) {
        let at = from + rel;
        if buf.get(at..at + marker.len())? == marker {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// One output stream of the running command, up to its end marker.
struct MarkedStream {
    /// `\n<tag> ` followed by a status and `\n` (stdout), or `\n<tag>\n` (stderr).
    marker: Vec<u8>,
    with_status: bool,
    /// Bytes not yet known to be output (they may be the start of the marker).
    window: Vec<u8>,
    kept: BoundedOutput,
    /// Set at the marker: the status (stdout) or `None` (stderr).
    done: Option<Option<u32>>,
    /// Bytes after the marker: written by processes the command left running.
    stray: usize,
}

impl MarkedStream {
    fn new(marker: String, with_status: bool, limit: Option<OutputLimit>) -> Self {
        MarkedStream {
            marker: marker.into_bytes(),
            with_status,
            window: Vec::new(),
            kept: BoundedOutput::new(limit),
            done: None,
            stray: 0,
        }
    }

    fn push(&mut self, data: &[u8]) -> Result<(), ShellError> {
        if self.done.is_some() {
            self.stray += data.len();
            return Ok(());
        }
        self.window.extend_from_slice(data);
        if let Some(at) = find_marker(&self.window, &self.marker) {
            let after = at + self.marker.len();
            let status = if self.with_status {
                let Some(nl) = self
                    .window
                    .get(after..)
                    .and_then(|r| r.iter().position(|&b| b == b'\n'))
                else {
                    // The status line is not complete yet.
                    return Ok(());
                };
                let text = self.window.get(after..after + nl).unwrap_or_default();
                let code = std::str::from_utf8(text)
                    .ok()
                    .and_then(|s| s.trim().parse::<u32>().ok())
                    .ok_or(ShellError::Garbled)?;
                self.stray = self.window.len() - (after + nl + 1);
                Some(code)
            } else {
                self.stray = self.window.len() - after;
                None
            };
            self.kept.push(self.window.get(..at).unwrap_or_default());
            self.window = Vec::new();
            self.done = Some(status);
            return Ok(());
        }
        // Keep what could be the start of a marker; the rest is output.
        let keep = self.marker.len().saturating_sub(1);
        if self.window.len() > keep {
            let cut = self.window.len() - keep;
            self.kept.push(self.window.get(..cut).unwrap_or_default());
            self.window.drain(..cut);
        }
        Ok(())
    }
}

impl Shell {
    /// Start `program` (a POSIX shell: `sh` or the inventory's `shell`) on a new session
    /// channel of `conn`. `None` when no session channel is free right now (the caller
    /// then uses a channel of its own).
    pub(crate) async fn open(
        conn: &Arc<Connection>,
        host: &str,
        program: &str,
        mark: &str,
        stopper: super::exec::Stopper,
    ) -> Result<Option<Shell>, TransportError> {
        let Ok(permit) = conn.sessions.clone().try_acquire_owned() else {
            return Ok(None);
        };
        let (read, write) = conn
            .exec_channel(
                format!("{} -s {mark}", crate::command::quote(program)),
                host,
            )
            .await?;
        let mut shell = Shell {
            reader: Reader::Held(read),
            write: Arc::new(write),
            nonce: nonce()?,
            seq: 0,
            _permit: permit,
            busy: false,
            stopper: Some(Box::new(stopper)),
        };
        // Wait until the shell answers: then it runs, and whatever the login shell's
        // startup files printed is behind us, not in the first command's output.
        shell.ready(host, program).await?;
        shell.start_draining();
        Ok(Some(shell))
    }

    /// The channel's reader, taken back from the draining task. `Err(Ended)` when the
    /// shell ended while idle (nothing of the next command was written yet).
    async fn take_reader(&mut self, host: &str) -> Result<ChannelReadHalf, ShellError> {
        match std::mem::replace(&mut self.reader, Reader::Taken) {
            Reader::Held(read) => Ok(read),
            Reader::Taken => Err(ShellError::Ended),
            Reader::Draining { stop, task } => {
                let _ = stop.send(());
                let drained = task.await.map_err(|_| ShellError::Ended)?;
                if drained.stray > 0 {
                    tracing::debug!(
                        "{host}: dropped {} bytes a process left running wrote to the idle \
                         shell",
                        drained.stray
                    );
                }
                if drained.ended {
                    return Err(ShellError::EndedWhileIdle);
                }
                Ok(drained.read)
            }
        }
    }

    fn start_draining(&mut self) {
        if let Reader::Held(read) = std::mem::replace(&mut self.reader, Reader::Taken) {
            self.reader = Reader::drain(read);
        }
    }

    /// Probe the new shell with POSIX arithmetic: a csh, tcsh or fish fails it.
    async fn ready(&mut self, host: &str, program: &str) -> Result<(), TransportError> {
        let Reader::Held(read) = &mut self.reader else {
            return Err(TransportError::Protocol(format!(
                "{host}: {program}'s channel is not held while it starts"
            )));
        };
        let tag = format!("{} ready", self.nonce);
        let script =
            format!("printf '\\n%s %s\\n' '{tag}' \"$((6*7))\"; printf '\\n%s\\n' '{tag}' >&2\n");
        self.write
            .data_bytes(Bytes::from(script))
            .await
            .map_err(|e| map_russh_error(e, host))?;
        let mut out = MarkedStream::new(format!("\n{tag} "), true, Some(STDERR_LIMIT));
        let mut err = MarkedStream::new(format!("\n{tag}\n"), false, Some(STDERR_LIMIT));
        let mut errors = Vec::new();
        let not_posix = |errors: &[u8], why: &str| {
            let text = String::from_utf8_lossy(errors);
            let first = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty())
                .unwrap_or(why)
                .to_string();
            TransportError::NotPosixShell {
                host: host.to_string(),
                detail: format!("`{program}` answered: {first}"),
            }
        };
        while out.done.is_none() || err.done.is_none() {
            let wait = if errors.is_empty() || out.done.is_some() {
                READY_TIMEOUT
            } else {
                READY_ERROR_WAIT
            };
            let msg = match tokio::time::timeout(wait, read.wait()).await {
                Ok(msg) => msg,
                Err(_) if !errors.is_empty() => return Err(not_posix(&errors, "")),
                Err(_) => {
                    return Err(TransportError::Protocol(format!(
                        "{host}: `{program}` did not answer within {}s",
                        READY_TIMEOUT.as_secs()
                    )))
                }
            };
            match msg {
                Some(ChannelMsg::Data { data }) => {
                    out.push(&data)
                        .map_err(|_| not_posix(&errors, "garbled answer"))?;
                }
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                    if errors.len() < 4096 {
                        errors.extend_from_slice(&data);
                    }
                    let _ = err.push(&data);
                }
                Some(ChannelMsg::Success | ChannelMsg::WindowAdjusted { .. }) => {}
                Some(ChannelMsg::Failure) => {
                    return Err(TransportError::Protocol(format!(
                        "{host}: the server refused to start {program}"
                    )))
                }
                Some(_) | None if !errors.is_empty() => {
                    return Err(not_posix(&errors, "it ended at once"))
                }
                Some(_) | None => {
                    return Err(TransportError::Protocol(format!(
                        "{host}: {program} ended at once"
                    )))
                }
            }
        }
        if out.done != Some(Some(42)) {
            return Err(not_posix(&errors, "$((6*7)) is not 42"));
        }
        Ok(())
    }

    /// Run `script` (the command's shell text) and collect its output, each stream
    /// bounded by `limit` (`None`: all of stdout, the first 4 MiB of stderr). An error
    /// means the shell is unusable: drop it.
    pub(crate) async fn run(
        &mut self,
        script: &str,
        host: &str,
        limit: Option<OutputLimit>,
    ) -> Result<ExecOutput, ShellError> {
        let mut read = self.take_reader(host).await?;
        self.busy = true;
        self.seq += 1;
        let tag = format!("{} {}", self.nonce, self.seq);
        let token = script::token().map_err(ShellError::Setup)?;
        // Only [a-z0-9- ]: single quotes are enough.
        let quoted_tag = format!("'{tag}'");
        let text = format!(
            "{} </dev/null; printf '\\n%s %s\\n' {quoted_tag} \"$?\"; printf '\\n%s\\n' {quoted_tag} >&2\n",
            script::heredoc(script, &token)
        );
        self.write
            .data_bytes(Bytes::from(text))
            .await
            .map_err(|e| ShellError::Lost(map_russh_error(e, host)))?;

        let mut stdout = MarkedStream::new(format!("\n{tag} "), true, limit);
        let mut stderr = MarkedStream::new(
            format!("\n{tag}\n"),
            false,
            Some(limit.unwrap_or(STDERR_LIMIT)),
        );
        while stdout.done.is_none() || stderr.done.is_none() {
            let Some(msg) = read.wait().await else {
                return Err(ShellError::Ended);
            };
            match msg {
                ChannelMsg::Data { data } => stdout.push(&data)?,
                ChannelMsg::ExtendedData { data, ext: 1 } => stderr.push(&data)?,
                ChannelMsg::Eof | ChannelMsg::Close | ChannelMsg::ExitStatus { .. } => {
                    return Err(ShellError::Ended);
                }
                ChannelMsg::ExitSignal { .. } | ChannelMsg::Failure => {
                    return Err(ShellError::Ended)
                }
                _ => {}
            }
        }
        self.busy = false;
        self.reader = Reader::drain(read);
        let stray = stdout.stray + stderr.stray;
        if stray > 0 {
            tracing::debug!(
                "{host}: dropped {stray} bytes written after the command's end by a process \
                 it left running"
            );
        }
        Ok(ExecOutput {
            status: stdout.done.flatten(),
            stdout: stdout.kept.finish("stdout"),
            stderr: stderr.kept.finish("stderr"),
        })
    }
}

/// Why a shell cannot be used any more.
#[derive(Debug)]
pub(crate) enum ShellError {
    /// The connection failed.
    Lost(TransportError),
    /// The command could not be prepared (no randomness for its markers).
    Setup(TransportError),
    /// The shell exited (or the server refused to start it).
    Ended,
    /// The shell had ended before this command: nothing of it was written.
    EndedWhileIdle,
    /// A marker line that does not parse.
    Garbled,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(chunks: &[&[u8]], marker: &str, with_status: bool) -> MarkedStream {
        let mut s = MarkedStream::new(marker.to_string(), with_status, None);
        for c in chunks {
            s.push(c).unwrap();
        }
        s
    }

    #[test]
    fn the_marker_ends_the_output_wherever_it_is() {
        let m = "\nferry-ab 3 ";
        let s = feed(&[b"hello\n", b"\nferry-ab 3 0\n"], m, true);
        assert_eq!(s.done, Some(Some(0)));
        assert_eq!(s.kept.finish("stdout"), b"hello\n");
        // Split inside the marker and the status, with output of a background process
        // right behind it: the command is still done.
        let s = feed(&[b"hi\nferry", b"-ab 3 1", b"7\nlate output"], m, true);
        assert_eq!(s.done, Some(Some(17)));
        assert_eq!(s.stray, b"late output".len());
        assert_eq!(s.kept.finish("stdout"), b"hi");
        // Another sequence number or an incomplete status line: not done.
        assert_eq!(feed(&[b"\nferry-ab 4 0\n"], m, true).done, None);
        assert_eq!(feed(&[b"\nferry-ab 3 0"], m, true).done, None);
        let s = feed(&[b"err\n\nferry-ab 3\nmore"], "\nferry-ab 3\n", false);
        assert_eq!(s.done, Some(None));
        assert_eq!(s.kept.finish("stderr"), b"err\n");
    }

    #[test]
    fn a_garbled_status_is_an_error() {
        let mut s = MarkedStream::new("\nferry-ab 1 ".into(), true, None);
        assert!(matches!(
            s.push(b"\nferry-ab 1 x\n"),
            Err(ShellError::Garbled)
        ));
    }

    #[test]
    fn output_is_bounded_and_the_marker_still_found() {
        let mut s = MarkedStream::new(
            "\nferry-ab 1 ".into(),
            true,
            Some(OutputLimit {
                head: 100,
                tail: 100,
            }),
        );
        for _ in 0..1000 {
            s.push(&[b'x'; 1000]).unwrap();
        }
        s.push(b"\nferry-ab 1 0\n").unwrap();
        assert_eq!(s.done, Some(Some(0)));
        let out = String::from_utf8(s.kept.finish("stdout")).unwrap();
        assert!(
            out.contains("[ferry: 999800 bytes of stdout omitted]"),
            "{out}"
        );
        assert!(out.len() < 300);
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(nonce().unwrap(), nonce().unwrap());
    }
}
