//! A persistent remote shell per connection, for short commands.
//!
//! Opening a session channel costs sshd a fork and the login shell an exec for every
//! command (~5 ms on an idle machine, much more on a loaded one); a no-op task is
//! nothing but such a command. So [`super::SshTransport::exec`] without stdin and
//! without `become` runs its command through one long-lived `sh` on the control
//! connection instead: one round trip plus a fork.
//!
//! Each command is written to the shell's stdin as one line,
//!
//! ```sh
//! sh -c '<command>' </dev/null; printf '\n%s %s\n' '<nonce> <seq>' "$?"; printf '\n%s\n' '<nonce> <seq>' >&2
//! ```
//!
//! and is done once both markers have arrived (stdout and stderr are separate streams of
//! the channel, ordered independently). The command runs in its own `sh -c`, as on its
//! own channel: `cd`, `exit` or variables do not leak into the next command; its stdin
//! is `/dev/null` (on a channel it would be an empty pipe). The nonce is random per
//! shell, so output cannot end a command early by accident.
//!
//! Differences from a channel of its own, all harmless for what runs here: a command
//! killed by a signal reports the shell's `128 + signal` status instead of no status,
//! and output written later by a process the command left in the background would be
//! attributed to the next command (a command on its own channel would instead hang
//! until that process exits).
//!
//! A shell is used by one command at a time. If a command's future is dropped midway,
//! or the shell misbehaves, the shell is closed and the next command opens a new one.

use std::sync::Arc;

use bytes::Bytes;
use russh::client::Msg;
use russh::{ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::sync::OwnedSemaphorePermit;

use super::session::{map_russh_error, Connection};
use crate::transport::{ExecOutput, TransportError};

/// Stderr kept per command, as on a channel of its own (see `exec`).
const STDERR_LIMIT: usize = 4 * 1024 * 1024;

/// One `sh` reading commands from its stdin.
pub(crate) struct Shell {
    read: ChannelReadHalf,
    write: Arc<ChannelWriteHalf<Msg>>,
    nonce: String,
    seq: u64,
    /// Counts against the connection's session channels for as long as the shell lives.
    _permit: OwnedSemaphorePermit,
}

impl Drop for Shell {
    fn drop(&mut self) {
        // Closing the channel ends the remote shell (and whatever it still runs gets
        // EOF/SIGPIPE, as on a dropped channel of its own).
        let write = self.write.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = write.eof().await;
                let _ = write.close().await;
            });
        }
    }
}

/// Random hex, for markers no command prints by accident.
fn nonce() -> Result<String, TransportError> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| TransportError::Protocol(format!("no randomness for a marker: {e}")))?;
    Ok(format!("ferry-{}", hex::encode(bytes)))
}

/// Where the marker `\n<nonce> <seq>` + `rest` ends `buf`; returns the marker's start
/// and what followed it up to the final newline.
fn find_end<'a>(buf: &'a [u8], marker: &[u8]) -> Option<(usize, &'a [u8])> {
    if buf.last() != Some(&b'\n') {
        return None;
    }
    let body = &buf[..buf.len() - 1];
    // The marker is on the last line.
    let line_start = body.iter().rposition(|&b| b == b'\n')?;
    let line = &body[line_start + 1..];
    let rest = line.strip_prefix(marker)?;
    Some((line_start, rest))
}

/// Bytes of one stream of the running command.
struct Collected {
    buf: Vec<u8>,
    limit: Option<usize>,
    truncated: bool,
}

impl Collected {
    fn new(limit: Option<usize>) -> Self {
        Collected {
            buf: Vec::new(),
            limit,
            truncated: false,
        }
    }

    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        // Keep the first `limit` bytes and a tail long enough to hold the marker.
        const TAIL: usize = 256;
        if let Some(limit) = self.limit {
            if self.buf.len() > limit + 2 * TAIL {
                let cut_end = self.buf.len() - TAIL;
                self.buf.drain(limit..cut_end);
                self.truncated = true;
            }
        }
    }
}

impl Shell {
    /// Start `sh` on a new session channel of `conn`. `None` when no session channel is
    /// free right now (the caller then uses a channel of its own).
    pub(crate) async fn open(
        conn: &Arc<Connection>,
        host: &str,
    ) -> Result<Option<Shell>, TransportError> {
        let Ok(permit) = conn.sessions.clone().try_acquire_owned() else {
            return Ok(None);
        };
        let channel = conn
            .handle
            .channel_open_session()
            .await
            .map_err(|e| map_russh_error(e, host))?;
        channel
            .exec(true, "sh")
            .await
            .map_err(|e| map_russh_error(e, host))?;
        let (read, write) = channel.split();
        let mut shell = Shell {
            read,
            write: Arc::new(write),
            nonce: nonce()?,
            seq: 0,
            _permit: permit,
        };
        // Wait until the shell answers: then it runs, and whatever the login shell's
        // startup files printed is behind us, not in the first command's output.
        shell.ready(host).await?;
        Ok(Some(shell))
    }

    async fn ready(&mut self, host: &str) -> Result<(), TransportError> {
        let tag = format!("{} ready", self.nonce);
        let script = format!("printf '\\n%s\\n' '{tag}'; printf '\\n%s\\n' '{tag}' >&2\n");
        self.write
            .data_bytes(Bytes::from(script))
            .await
            .map_err(|e| map_russh_error(e, host))?;
        let mut out = Collected::new(Some(STDERR_LIMIT));
        let mut err = Collected::new(Some(STDERR_LIMIT));
        let (mut out_done, mut err_done) = (false, false);
        while !(out_done && err_done) {
            match self.read.wait().await {
                Some(ChannelMsg::Data { data }) => {
                    out.push(&data);
                    out_done =
                        find_end(&out.buf, tag.as_bytes()).is_some_and(|(_, r)| r.is_empty());
                }
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => {
                    err.push(&data);
                    err_done =
                        find_end(&err.buf, tag.as_bytes()).is_some_and(|(_, r)| r.is_empty());
                }
                Some(ChannelMsg::Success | ChannelMsg::WindowAdjusted { .. }) => {}
                Some(ChannelMsg::Failure) => {
                    return Err(TransportError::Protocol(format!(
                        "{host}: the server refused to start sh"
                    )))
                }
                Some(_) | None => {
                    return Err(TransportError::Protocol(format!(
                        "{host}: sh ended at once: {}",
                        String::from_utf8_lossy(&err.buf).trim()
                    )))
                }
            }
        }
        Ok(())
    }

    /// Run `line` (a complete `sh -c ...` command line) and collect its output. An error
    /// means the shell is unusable: drop it.
    pub(crate) async fn run(&mut self, line: &str, host: &str) -> Result<ExecOutput, ShellError> {
        self.seq += 1;
        let tag = format!("{} {}", self.nonce, self.seq);
        // Only [a-z0-9- ]: single quotes are enough.
        let quoted_tag = format!("'{tag}'");
        let script = format!(
            "{line} </dev/null; printf '\\n%s %s\\n' {quoted_tag} \"$?\"; printf '\\n%s\\n' {quoted_tag} >&2\n"
        );
        self.write
            .data_bytes(Bytes::from(script))
            .await
            .map_err(|e| ShellError::Lost(map_russh_error(e, host)))?;

        let out_marker = format!("{tag} ");
        let err_marker = tag.as_bytes();
        let mut stdout = Collected::new(None);
        let mut stderr = Collected::new(Some(STDERR_LIMIT));
        let mut status: Option<Option<u32>> = None;
        let mut err_done = false;
        while status.is_none() || !err_done {
            let Some(msg) = self.read.wait().await else {
                return Err(ShellError::Ended);
            };
            match msg {
                ChannelMsg::Data { data } => {
                    stdout.push(&data);
                    if let Some((at, rest)) = find_end(&stdout.buf, out_marker.as_bytes()) {
                        let code = std::str::from_utf8(rest)
                            .ok()
                            .and_then(|s| s.trim().parse::<u32>().ok());
                        if code.is_none() {
                            return Err(ShellError::Garbled);
                        }
                        status = Some(code);
                        stdout.buf.truncate(at);
                    }
                }
                ChannelMsg::ExtendedData { data, ext: 1 } => {
                    stderr.push(&data);
                    if let Some((at, rest)) = find_end(&stderr.buf, err_marker) {
                        if rest.is_empty() {
                            err_done = true;
                            stderr.buf.truncate(at);
                        }
                    }
                }
                ChannelMsg::Eof | ChannelMsg::Close | ChannelMsg::ExitStatus { .. } => {
                    return Err(ShellError::Ended);
                }
                ChannelMsg::ExitSignal { .. } | ChannelMsg::Failure => {
                    return Err(ShellError::Ended)
                }
                _ => {}
            }
        }
        if stderr.truncated {
            stderr
                .buf
                .extend_from_slice(b"\n[ferry: stderr truncated]\n");
        }
        Ok(ExecOutput {
            status: status.flatten(),
            stdout: stdout.buf,
            stderr: stderr.buf,
        })
    }
}

/// Why a shell cannot be used any more.
#[derive(Debug)]
pub(crate) enum ShellError {
    /// The connection failed.
    Lost(TransportError),
    /// The shell exited (or the server refused to start it).
    Ended,
    /// A marker line that does not parse.
    Garbled,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_must_end_the_output() {
        let m = b"ferry-ab 3 ";
        assert_eq!(
            find_end(b"hello\n\nferry-ab 3 0\n", m),
            Some((6, &b"0"[..]))
        );
        // Output without a final newline: the marker's own newline comes first.
        assert_eq!(find_end(b"hi\nferry-ab 3 17\n", m), Some((2, &b"17"[..])));
        assert_eq!(find_end(b"\nferry-ab 3 0\n", m), Some((0, &b"0"[..])));
        // Not at the end, other sequence number, incomplete line.
        assert_eq!(find_end(b"\nferry-ab 3 0\nmore\n", m), None);
        assert_eq!(find_end(b"\nferry-ab 4 0\n", m), None);
        assert_eq!(find_end(b"\nferry-ab 3 0", m), None);
    }

    #[test]
    fn stderr_keeps_its_head_and_the_tail_with_the_marker() {
        let mut c = Collected {
            buf: Vec::new(),
            limit: Some(1000),
            truncated: false,
        };
        for _ in 0..100 {
            c.push(&[b'x'; 100]);
        }
        c.push(b"\nferry-ab 1\n");
        assert!(c.truncated);
        assert!(c.buf.len() < 1000 + 600, "{}", c.buf.len());
        assert!(find_end(&c.buf, b"ferry-ab 1").is_some());
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(nonce().unwrap(), nonce().unwrap());
    }
}
