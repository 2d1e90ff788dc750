//! An in-memory [`Transport`] for engine and module tests: scripted responses matched on
//! the command line, and a log of every command received (with what was written to its
//! stdin, also for streamed commands).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::command::Cmd;
use crate::secrets::Secrets;
use crate::transport::{
    BoxRead, ConnectSpec, Connector, Duplex, ExecOutput, ExecResult, ExecStream, ForwardMethod,
    StreamExit, Transport, TransportError,
};

type Handler = Arc<dyn Fn(&str, Option<&[u8]>) -> ExecOutput + Send + Sync>;

struct Rule {
    /// Matches when the command line (unmasked) contains this text.
    contains: String,
    handler: Handler,
    /// For `exec_stream`: answer only once stdin is closed, with everything written to
    /// it (a far end that consumes its input, e.g. `tee FILE | sha256sum`).
    after_stdin: bool,
}

/// A command the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// What a real host's `sh -c` would have got.
    pub shell: String,
    /// The masked display.
    pub display: String,
    pub stdin: Option<Vec<u8>>,
}

/// A scripted host. Rules added later take precedence; unmatched commands exit 127.
pub struct FakeTransport {
    host: String,
    rules: Mutex<Vec<Rule>>,
    /// Shared with the stdin writers of streamed commands, which fill in `stdin` when
    /// they are closed.
    log: Arc<Mutex<Vec<Received>>>,
}

/// An exit status with stdout.
pub fn output(status: u32, stdout: &str) -> ExecOutput {
    ExecOutput {
        status: Some(status),
        stdout: stdout.as_bytes().to_vec(),
        stderr: Vec::new(),
    }
}

impl FakeTransport {
    pub fn new(host: &str) -> Arc<Self> {
        Arc::new(FakeTransport {
            host: host.to_string(),
            rules: Mutex::new(Vec::new()),
            log: Arc::new(Mutex::new(Vec::new())),
        })
    }

    /// Commands containing `contains` get `out`.
    pub fn on(&self, contains: &str, out: ExecOutput) {
        self.on_fn(contains, move |_, _| out.clone());
    }

    /// Commands containing `contains` are answered by `f(command line, stdin)`.
    pub fn on_fn(
        &self,
        contains: &str,
        f: impl Fn(&str, Option<&[u8]>) -> ExecOutput + Send + Sync + 'static,
    ) {
        self.push_rule(contains, Arc::new(f), false);
    }

    /// Commands containing `contains` are answered by `f(command line, stdin)`, where a
    /// streamed command's answer (stdout, exit) is computed only after its stdin was
    /// closed, from every byte written to it. Plain `exec` calls get their stdin (or
    /// nothing) the same way.
    pub fn on_stream(
        &self,
        contains: &str,
        f: impl Fn(&str, &[u8]) -> ExecOutput + Send + Sync + 'static,
    ) {
        let handler: Handler = Arc::new(move |cmd, stdin| f(cmd, stdin.unwrap_or_default()));
        self.push_rule(contains, handler, true);
    }

    fn push_rule(&self, contains: &str, handler: Handler, after_stdin: bool) {
        if let Ok(mut rules) = self.rules.lock() {
            rules.push(Rule {
                contains: contains.to_string(),
                handler,
                after_stdin,
            });
        }
    }

    /// Every command received, in order.
    pub fn received(&self) -> Vec<Received> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The shell lines received, in order.
    pub fn commands(&self) -> Vec<String> {
        self.received().into_iter().map(|r| r.shell).collect()
    }

    /// Log `cmd` (with `stdin`); returns its index in the log.
    fn log_received(&self, cmd: &Cmd, stdin: Option<&[u8]>) -> usize {
        match self.log.lock() {
            Ok(mut log) => {
                log.push(Received {
                    shell: cmd.to_shell(),
                    display: cmd.display(),
                    stdin: stdin.map(<[u8]>::to_vec),
                });
                log.len() - 1
            }
            Err(_) => usize::MAX,
        }
    }

    /// The newest rule matching `shell`: its handler and whether it waits for stdin.
    fn rule_for(&self, shell: &str) -> Option<(Handler, bool)> {
        let rules = self.rules.lock().ok()?;
        rules
            .iter()
            .rev()
            .find(|r| shell.contains(&r.contains))
            .map(|r| (r.handler.clone(), r.after_stdin))
    }

    fn answer(&self, cmd: &Cmd, stdin: Option<&[u8]>) -> ExecOutput {
        self.log_received(cmd, stdin);
        let shell = cmd.to_shell();
        match self.rule_for(&shell) {
            Some((handler, _)) => handler(&shell, stdin),
            None => no_rule(&shell),
        }
    }
}

fn no_rule(shell: &str) -> ExecOutput {
    ExecOutput {
        status: Some(127),
        stdout: Vec::new(),
        stderr: format!("fake transport: no rule for `{shell}`").into_bytes(),
    }
}

/// The stdin of a streamed fake command: collects every byte; when shut down or
/// dropped, records them in the log entry and hands them to whoever waits for EOF.
struct CaptureStdin {
    buf: Vec<u8>,
    log: Arc<Mutex<Vec<Received>>>,
    index: usize,
    eof: Option<tokio::sync::oneshot::Sender<Vec<u8>>>,
}

impl CaptureStdin {
    fn finish(&mut self) {
        let Some(eof) = self.eof.take() else {
            return;
        };
        let bytes = std::mem::take(&mut self.buf);
        if let Ok(mut log) = self.log.lock() {
            if let Some(r) = log.get_mut(self.index) {
                r.stdin = Some(bytes.clone());
            }
        }
        let _ = eof.send(bytes);
    }
}

impl tokio::io::AsyncWrite for CaptureStdin {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.eof.is_none() {
            return std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "stdin already closed",
            )));
        }
        self.buf.extend_from_slice(data);
        std::task::Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.finish();
        std::task::Poll::Ready(Ok(()))
    }
}

impl Drop for CaptureStdin {
    fn drop(&mut self) {
        self.finish();
    }
}

#[async_trait]
impl Transport for FakeTransport {
    fn host(&self) -> &str {
        &self.host
    }

    async fn exec(&self, cmd: &Cmd, stdin: Option<&[u8]>) -> ExecResult {
        Ok(self.answer(cmd, stdin))
    }

    /// Streams the scripted stdout. Stdin is captured into the log entry when closed;
    /// rules added with [`FakeTransport::on_stream`] answer only then, from it.
    async fn exec_stream(&self, cmd: &Cmd) -> Result<ExecStream, TransportError> {
        let index = self.log_received(cmd, None);
        let shell = cmd.to_shell();
        let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<Vec<u8>>();
        let stdin = CaptureStdin {
            buf: Vec::new(),
            log: self.log.clone(),
            index,
            eof: Some(eof_tx),
        };
        let rule = self.rule_for(&shell);
        let Some((handler, true)) = rule else {
            // Answered at once, whatever is written to stdin later.
            let out = match rule {
                Some((handler, _)) => handler(&shell, None),
                None => no_rule(&shell),
            };
            let exit = StreamExit {
                status: out.status,
                stderr: out.stderr,
            };
            return Ok(ExecStream {
                stdin: Box::pin(stdin),
                stdout: Box::pin(std::io::Cursor::new(out.stdout)),
                exit: Box::pin(async move { Ok(exit) }),
            });
        };
        // Answer after EOF on stdin: stdout through a pipe, the exit through a channel.
        let (stdout_reader, mut stdout_writer) = tokio::io::duplex(64 << 10);
        let (exit_tx, exit_rx) = tokio::sync::oneshot::channel::<StreamExit>();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let input = eof_rx.await.unwrap_or_default();
            let out = handler(&shell, Some(&input));
            // The reader may have gone away; the exit still reports the status.
            let _ = stdout_writer.write_all(&out.stdout).await;
            let _ = stdout_writer.shutdown().await;
            drop(stdout_writer);
            let _ = exit_tx.send(StreamExit {
                status: out.status,
                stderr: out.stderr,
            });
        });
        let stdout: BoxRead = Box::pin(stdout_reader);
        let host = self.host.clone();
        Ok(ExecStream {
            stdin: Box::pin(stdin),
            stdout,
            exit: Box::pin(async move {
                exit_rx.await.map_err(|_| TransportError::Disconnected {
                    host,
                    reason: "fake command ended without an exit status".into(),
                })
            }),
        })
    }

    async fn forward(
        &self,
        host: &str,
        port: u16,
    ) -> Result<(Box<dyn Duplex>, ForwardMethod), TransportError> {
        Err(TransportError::Forward {
            target: format!("{host}:{port}"),
            reason: "the fake transport does not forward".into(),
        })
    }
}

/// Hands out fake transports by host name; hosts listed as unreachable fail to connect.
#[derive(Default)]
pub struct FakeConnector {
    pub transports: BTreeMap<String, Arc<FakeTransport>>,
    pub unreachable: BTreeSet<String>,
    /// How many times each host was connected.
    pub connects: Mutex<BTreeMap<String, usize>>,
}

impl FakeConnector {
    pub fn new(transports: impl IntoIterator<Item = Arc<FakeTransport>>) -> Self {
        FakeConnector {
            transports: transports
                .into_iter()
                .map(|t| (t.host().to_string(), t))
                .collect(),
            ..Default::default()
        }
    }
}

#[async_trait]
impl Connector for FakeConnector {
    async fn connect(
        &self,
        spec: &ConnectSpec,
        _: &Secrets,
    ) -> Result<Arc<dyn Transport>, TransportError> {
        if let Ok(mut c) = self.connects.lock() {
            *c.entry(spec.name.clone()).or_default() += 1;
        }
        if self.unreachable.contains(&spec.name) {
            return Err(TransportError::Refused {
                addr: spec.address.clone(),
            });
        }
        match self.transports.get(&spec.name) {
            Some(t) => Ok(t.clone() as Arc<dyn Transport>),
            None => Err(TransportError::Unreachable {
                addr: spec.address.clone(),
                reason: "no fake transport for this host".into(),
            }),
        }
    }
}
