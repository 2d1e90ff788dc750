//! The facts guard: while a module reads the state of its host (`Module::facts`), nothing
//! may change it. The engine runs `facts` inside [`scope`]; in it every transport handed
//! to the module ([`Guarded`]) and the Kubernetes client refuse what writes: a byte
//! stream to the host, a command that [`Cmd::writes`] flags (in a pod too), and every
//! Kubernetes write verb. Input on stdin is allowed (a query fed to `psql -f -` reads). This is jetporch's validate-stage guard: a module that
//! tries gets an error naming what it tried, in tests and in production alike.
//!
//! The guard follows the task, not the thread: work a module spawns onto another tokio
//! task inside `facts` is not covered (nothing in ferry does).

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;

use crate::command::Cmd;
use crate::transport::{
    Duplex, ExecOutput, ExecStream, ForwardMethod, OutputLimit, Transport, TransportError,
};

tokio::task_local! {
    static READ_ONLY: ();
}

/// Run `f` with writes refused (see the module docs).
pub async fn scope<F: Future>(f: F) -> F::Output {
    READ_ONLY.scope((), f).await
}

/// Whether the current task is inside [`scope`].
pub fn active() -> bool {
    READ_ONLY.try_with(|_| ()).is_ok()
}

/// `Err` naming `what` when writes are refused here.
pub fn ensure_may_write(host: &str, what: impl FnOnce() -> String) -> Result<(), TransportError> {
    if active() {
        Err(TransportError::ReadOnly {
            host: host.to_string(),
            what: what(),
        })
    } else {
        Ok(())
    }
}

/// A transport whose writes are refused inside [`scope`]; outside it, the transport as is.
pub struct Guarded(pub Arc<dyn Transport>);

impl Guarded {
    /// `transport`, guarded (once: a guarded transport is not wrapped again).
    pub fn wrap(transport: Arc<dyn Transport>) -> Arc<dyn Transport> {
        Arc::new(Guarded(transport))
    }

    fn check(&self, cmd: &Cmd, stdin: bool) -> Result<(), TransportError> {
        let host = self.0.host();
        if stdin {
            ensure_may_write(host, || {
                format!("input on the stdin of `{}`", cmd.display())
            })?;
        }
        if let Some(why) = cmd.writes() {
            ensure_may_write(host, || format!("`{}` ({why})", cmd.display()))?;
        }
        Ok(())
    }
}

#[async_trait]
impl Transport for Guarded {
    fn host(&self) -> &str {
        self.0.host()
    }

    async fn exec(&self, cmd: &Cmd, stdin: Option<&[u8]>) -> Result<ExecOutput, TransportError> {
        self.check(cmd, false)?;
        self.0.exec(cmd, stdin).await
    }

    async fn exec_bounded(
        &self,
        cmd: &Cmd,
        stdin: Option<&[u8]>,
        limit: OutputLimit,
    ) -> Result<ExecOutput, TransportError> {
        self.check(cmd, false)?;
        self.0.exec_bounded(cmd, stdin, limit).await
    }

    async fn exec_stream(&self, cmd: &Cmd) -> Result<ExecStream, TransportError> {
        // A stream carries bytes to the host: never part of reading its state.
        self.check(cmd, true)?;
        self.0.exec_stream(cmd).await
    }

    async fn forward(
        &self,
        host: &str,
        port: u16,
    ) -> Result<(Box<dyn Duplex>, ForwardMethod), TransportError> {
        // A tunnel (the Kubernetes API's) only carries requests; the API client
        // guards its own write verbs.
        self.0.forward(host, port).await
    }
}
