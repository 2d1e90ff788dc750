//! An in-memory [`Transport`] for engine and module tests: scripted responses matched on
//! the command line, and a log of every command received.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::command::Cmd;
use crate::secrets::Secrets;
use crate::transport::{
    BoxRead, ConnectSpec, Connector, Duplex, ExecOutput, ExecStream, ForwardMethod, StreamExit,
    Transport, TransportError,
};

type Handler = Box<dyn Fn(&str, Option<&[u8]>) -> ExecOutput + Send + Sync>;

struct Rule {
    /// Matches when the command line (unmasked) contains this text.
    contains: String,
    handler: Handler,
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
    log: Mutex<Vec<Received>>,
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
            log: Mutex::new(Vec::new()),
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
        if let Ok(mut rules) = self.rules.lock() {
            rules.push(Rule {
                contains: contains.to_string(),
                handler: Box::new(f),
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

    fn answer(&self, cmd: &Cmd, stdin: Option<&[u8]>) -> ExecOutput {
        let shell = cmd.to_shell();
        if let Ok(mut log) = self.log.lock() {
            log.push(Received {
                shell: shell.clone(),
                display: cmd.display(),
                stdin: stdin.map(<[u8]>::to_vec),
            });
        }
        let rules = match self.rules.lock() {
            Ok(r) => r,
            Err(_) => return output(127, ""),
        };
        match rules.iter().rev().find(|r| shell.contains(&r.contains)) {
            Some(rule) => (rule.handler)(&shell, stdin),
            None => ExecOutput {
                status: Some(127),
                stdout: Vec::new(),
                stderr: format!("fake transport: no rule for `{shell}`").into_bytes(),
            },
        }
    }
}

#[async_trait]
impl Transport for FakeTransport {
    fn host(&self) -> &str {
        &self.host
    }

    async fn exec(&self, cmd: &Cmd, stdin: Option<&[u8]>) -> Result<ExecOutput, TransportError> {
        Ok(self.answer(cmd, stdin))
    }

    /// Streams the scripted stdout; stdin is discarded.
    async fn exec_stream(&self, cmd: &Cmd) -> Result<ExecStream, TransportError> {
        let out = self.answer(cmd, None);
        let stdout: BoxRead = Box::pin(std::io::Cursor::new(out.stdout));
        let exit = StreamExit {
            status: out.status,
            stderr: out.stderr,
        };
        Ok(ExecStream {
            stdin: Box::pin(tokio::io::sink()),
            stdout,
            exit: Box::pin(async move { Ok(exit) }),
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

/// Run `f` with a [`crate::modules::TaskCtx`] on a fresh fake host `h` (for module
/// fixture tests of `decide`, which must not need a real host).
pub fn with_dummy_ctx<T>(f: impl FnOnce(&crate::modules::TaskCtx) -> T) -> T {
    let (ctx, _dir) = test_ctx(FakeTransport::new("h"), Default::default());
    f(&ctx)
}

/// A [`crate::modules::TaskCtx`] for host `transport.host()` with `vars`, a journal in a
/// fresh temp dir (returned: keep it alive), no peers, and no confirmation.
pub fn test_ctx(
    transport: Arc<FakeTransport>,
    vars: serde_json::Map<String, serde_json::Value>,
) -> (crate::modules::TaskCtx, tempfile::TempDir) {
    use crate::modules::{NeverConfirm, Peers, TaskCtx};
    use crate::playbook::template::{Renderer, Vars};

    struct NoPeers;
    #[async_trait]
    impl Peers for NoPeers {
        async fn transport(&self, host: &str) -> Result<Arc<dyn Transport>, TransportError> {
            Err(TransportError::Config(format!(
                "no peer `{host}` in this test"
            )))
        }
    }

    #[allow(clippy::expect_used)]
    let dir = tempfile::tempdir().expect("temp dir for a test journal");
    let secrets = Secrets::new();
    #[allow(clippy::expect_used)]
    let journal = crate::journal::Journal::open(
        &dir.path().join("test.journal.json"),
        "test",
        secrets.clone(),
        true,
    )
    .expect("test journal");
    let ctx = TaskCtx {
        host: transport.host().to_string(),
        task: "test".into(),
        check: false,
        yes: false,
        transport,
        peers: Arc::new(NoPeers),
        journal: Arc::new(journal),
        secrets: secrets.clone(),
        events: crate::report::EventSink::none(),
        vars: Arc::new(Vars::new(vars, &secrets)),
        renderer: Arc::new(Renderer::new(None)),
        confirmer: Arc::new(NeverConfirm),
    };
    (ctx, dir)
}
