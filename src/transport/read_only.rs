//! The facts guard: while a module reads the state of its host (`Module::facts`), nothing
//! may change it. The engine runs `facts` inside [`scope`]; in it every transport handed
//! to the module ([`Guarded`]) and the Kubernetes client refuse what writes: a byte
//! stream to the host, a command that [`Cmd::writes`] flags (in a pod too), and every
//! Kubernetes write verb. Input on stdin is allowed (a query fed to `psql -f -` reads).
//! This is jetporch's validate-stage guard: a module that tries gets an error naming
//! what it tried, in tests and in production alike.
//!
//! The guard follows the task, not the thread: work a module spawns onto another tokio
//! task inside `facts` is not covered (nothing in ferry does).

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;

use crate::command::Cmd;
use crate::transport::{
    Duplex, ExecResult, ExecStream, ForwardMethod, OutputLimit, Transport, TransportError,
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

    fn check(&self, cmd: &Cmd, stream: bool) -> Result<(), TransportError> {
        let host = self.0.host();
        if stream {
            ensure_may_write(host, || format!("a byte stream into `{}`", cmd.display()))?;
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

    fn verified_host_key(&self) -> Option<String> {
        self.0.verified_host_key()
    }

    async fn exec(&self, cmd: &Cmd, stdin: Option<&[u8]>) -> ExecResult {
        self.check(cmd, false)?;
        self.0.exec(cmd, stdin).await
    }

    async fn exec_bounded(&self, cmd: &Cmd, stdin: Option<&[u8]>, keep: OutputLimit) -> ExecResult {
        self.check(cmd, false)?;
        self.0.exec_bounded(cmd, stdin, keep).await
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::fake::{output, FakeTransport};

    #[tokio::test]
    async fn writes_are_refused_inside_the_scope_and_allowed_outside() {
        let fake = FakeTransport::new("h");
        fake.on("", output(0, ""));
        let guarded = Guarded::wrap(fake.clone());
        let rm = Cmd::new("rm").arg("-f").arg("/x");
        let read = Cmd::new("stat").arg("/x");
        let redirect = Cmd::new("echo").arg("x").op(">").arg("/x");
        let kubectl = Cmd::new("kubectl").args(["-n", "default", "scale", "deployment/ui"]);
        let docker = Cmd::new("docker").args(["stop", "packagist-ui"]);
        scope(async {
            assert!(active());
            guarded.exec(&read, None).await.unwrap();
            // Input on stdin reads (a query for psql -f -).
            guarded.exec(&read, Some(b"select 1")).await.unwrap();
            for cmd in [&rm, &redirect, &kubectl, &docker] {
                let err = guarded.exec(cmd, None).await.unwrap_err().to_string();
                assert!(err.contains("while reading facts"), "{err}");
                assert!(err.contains(&cmd.display()), "{err}");
            }
            let err = guarded.exec_stream(&read).await.err().unwrap().to_string();
            assert!(err.contains("a byte stream into"), "{err}");
        })
        .await;
        assert!(!active());
        // Refused commands never reached the host; outside the scope they do.
        assert!(!fake.commands().iter().any(|c| c.contains("rm -f")));
        guarded.exec(&rm, None).await.unwrap();
        assert!(fake.commands().iter().any(|c| c.contains("rm -f /x")));
    }

    #[test]
    fn what_cmd_writes_flags() {
        let flagged = [
            Cmd::new("cd")
                .arg("/d")
                .and(Cmd::new("mkdir").args(["-p", "a"])),
            Cmd::new("find")
                .arg(".")
                .pipe(Cmd::new("tee").arg("/tmp/x")),
            Cmd::new("/usr/bin/docker").args(["rm", "-f", "c"]),
            Cmd::new("redis-cli").args(["-p", "1", "-n", "5", "FLUSHDB"]),
            Cmd::new("cat").arg("a").op(">>").arg("b"),
        ];
        for c in &flagged {
            assert!(c.writes().is_some(), "{}", c.display());
        }
        let reads = [
            Cmd::new("docker").args(["inspect", "packagist-ui"]),
            Cmd::new("find").args(["composer", "-type", "f"]).op("2>&1"),
            Cmd::new("redis-cli").args(["-p", "1", "INFO", "keyspace"]),
            Cmd::new("kubectl").args(["get", "pods"]),
            Cmd::new("sha256sum").arg("--").arg("rm"),
        ];
        for c in &reads {
            assert_eq!(c.writes(), None, "{}", c.display());
        }
    }
}
