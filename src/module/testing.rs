//! Contexts for tests of modules (fixture tests and the tests in `tests/`): a task's
//! context as the engine builds it, over any transport (usually
//! [`crate::transport::fake::FakeTransport`]).

use std::sync::Arc;

use async_trait::async_trait;

use crate::secrets::Secrets;
use crate::transport::{Transport, TransportError};

/// Peers of a test that has none.
pub struct NoPeers;

#[async_trait]
impl crate::module::Peers for NoPeers {
    async fn transport(&self, host: &str) -> Result<Arc<dyn Transport>, TransportError> {
        Err(TransportError::Config(format!(
            "no peer `{host}` in this test"
        )))
    }
}

/// A [`crate::module::TaskCtx`] as the engine builds it (guarded transport), for `task`
/// on `transport.host()` with `vars`, recording in `journal`; `--yes` given.
pub fn task_ctx(
    transport: Arc<dyn Transport>,
    task: &str,
    peers: Arc<dyn crate::module::Peers>,
    journal: Arc<crate::journal::Journal>,
    vars: serde_json::Map<String, serde_json::Value>,
) -> crate::module::TaskCtx {
    use crate::module::{HostReader, JournalView, NeverConfirm, TaskCtx};
    use crate::playbook::template::{Renderer, Vars};
    let secrets = Secrets::new();
    TaskCtx {
        reader: HostReader {
            host: transport.host().to_string(),
            task: task.into(),
            transport: crate::transport::read_only::Guarded::wrap(transport),
            peers,
            journal: JournalView::new(journal.clone()),
            secrets: secrets.clone(),
            vars: Arc::new(Vars::new(vars, &secrets)),
            renderer: Arc::new(Renderer::new(None)),
            overwrite: Vec::new(),
            cache: Arc::new(crate::module::HostCache::default()),
            declared: None,
            base_dir: std::path::PathBuf::from("."),
        },
        yes: true,
        journal,
        events: crate::report::EventSink::none(),
        confirmer: Arc::new(NeverConfirm),
    }
}

/// Run a command's shell text with the machine's `sh` (tests of the shell that steps
/// send: staging, uploads).
pub fn run_sh(cmd: &crate::command::Cmd) -> std::io::Result<std::process::Output> {
    std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd.to_shell())
        .output()
}
