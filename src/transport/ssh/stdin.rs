//! The stdin side of a command on a session channel (a queue merged into large SSH
//! packets, EOF on shutdown or drop), and the byte relay over an exec channel used where
//! the server forbids forwarding.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::channel::{mpsc, oneshot};
use futures::Future;
use russh::client::Msg;
use russh::ChannelWriteHalf;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::exec::Running;
use crate::transport::BoxRead;

/// Bytes accepted per `poll_write` (larger writes are taken in parts).
const STDIN_WRITE_MAX: usize = 64 * 1024;
/// Writes queued towards the channel (at most `STDIN_QUEUE * STDIN_WRITE_MAX` bytes).
const STDIN_QUEUE: usize = 16;
/// Queued writes are merged into sends of up to this size.
const STDIN_COALESCE: usize = 256 * 1024;

enum StdinItem {
    Data(Bytes),
    Eof,
}

/// The command's stdin. Shutting it down, or dropping it, sends EOF.
///
/// Writes go through a small queue to a sender task that merges whatever is queued into
/// large SSH packets: callers that write 8 KiB at a time (`tokio::io::copy`) get the
/// throughput of large writes, and no byte ever waits for a flush.
pub(crate) struct StdinWriter {
    queue: mpsc::Sender<StdinItem>,
    /// Resolves when the sender task has sent EOF (or failed).
    done: Option<oneshot::Receiver<io::Result<()>>>,
    eof_queued: bool,
}

impl StdinWriter {
    pub(super) fn spawn(
        channel: Arc<ChannelWriteHalf<Msg>>,
        channel_open: tokio::sync::watch::Receiver<()>,
    ) -> Self {
        let (queue, rx) = mpsc::channel(STDIN_QUEUE);
        let (done_tx, done_rx) = oneshot::channel();
        tokio::spawn(async move {
            let result = stdin_sender(rx, channel, channel_open).await;
            let _ = done_tx.send(result);
        });
        StdinWriter {
            queue,
            done: Some(done_rx),
            eof_queued: false,
        }
    }
}

/// Drain the queue into the channel; EOF when asked or when the writer is dropped.
/// `channel_open` ends (its sender is dropped) when the pump saw the channel end: a command
/// that exited without reading all its input must not leave this task waiting for window
/// space forever.
async fn stdin_sender(
    mut rx: mpsc::Receiver<StdinItem>,
    channel: Arc<ChannelWriteHalf<Msg>>,
    mut channel_open: tokio::sync::watch::Receiver<()>,
) -> io::Result<()> {
    use futures::StreamExt;
    use tokio::io::AsyncWriteExt;
    let mut tx = channel.make_writer();
    let mut buf = bytes::BytesMut::new();
    loop {
        let mut eof = false;
        match rx.next().await {
            None | Some(StdinItem::Eof) => eof = true,
            Some(StdinItem::Data(b)) => buf.extend_from_slice(&b),
        }
        while !eof && buf.len() < STDIN_COALESCE {
            match rx.try_recv() {
                Ok(StdinItem::Data(b)) => buf.extend_from_slice(&b),
                Ok(StdinItem::Eof) | Err(mpsc::TryRecvError::Closed) => eof = true,
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        if !buf.is_empty() {
            tokio::select! {
                r = tx.write_all(&buf) => r?,
                _ = channel_open.changed() => return Err(broken_pipe()),
            }
            buf.clear();
        }
        if eof {
            return tx.shutdown().await;
        }
    }
}

fn broken_pipe() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the remote command's stdin is closed",
    )
}

impl AsyncWrite for StdinWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.eof_queued {
            return Poll::Ready(Err(broken_pipe()));
        }
        if let Err(_closed) = futures::ready!(self.queue.poll_ready(cx)) {
            return Poll::Ready(Err(broken_pipe()));
        }
        let n = buf.len().min(STDIN_WRITE_MAX);
        let chunk = Bytes::copy_from_slice(buf.get(..n).unwrap_or_default());
        match self.queue.start_send(StdinItem::Data(chunk)) {
            Ok(()) => Poll::Ready(Ok(n)),
            Err(_) => Poll::Ready(Err(broken_pipe())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Queued bytes are sent without further prompting.
        Poll::Ready(Ok(()))
    }

    /// Queue EOF and wait until everything before it went out.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.eof_queued {
            if futures::ready!(self.queue.poll_ready(cx)).is_ok() {
                let _ = self.queue.start_send(StdinItem::Eof);
            }
            self.eof_queued = true;
        }
        let Some(done) = self.done.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let result = futures::ready!(std::pin::Pin::new(done).poll(cx));
        self.done = None;
        Poll::Ready(match result {
            Ok(r) => r,
            Err(_) => Err(broken_pipe()),
        })
    }
}

/// A relay command's stdout/stdin as one duplex pipe; dropping it closes the channel so
/// the remote relay process goes away with it.
pub(crate) struct RelayPipe {
    stdin: StdinWriter,
    stdout: BoxRead,
    channel: Arc<ChannelWriteHalf<Msg>>,
    /// The relay process is stopped with the pipe.
    _guard: super::exec::StopGuard,
}

impl RelayPipe {
    pub fn new(running: Running) -> Self {
        // The relay's exit status is of no interest; the pump finishes on its own.
        drop(running.exit);
        RelayPipe {
            stdin: running.stdin,
            stdout: running.stdout,
            channel: running.channel,
            _guard: running.guard,
        }
    }
}

impl AsyncRead for RelayPipe {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.stdout.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for RelayPipe {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stdin).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stdin).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stdin).poll_shutdown(cx)
    }
}

impl Drop for RelayPipe {
    fn drop(&mut self) {
        let channel = self.channel.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = channel.close().await;
            });
        }
    }
}
