//! The record of what a task ran: every command sent through a [`Recorded`] transport,
//! with its exit status and the first and last bytes of its output, for the JSON
//! report (`tasks[].commands`). The engine wraps each task's transport in one; the
//! record is masked when the task's result is made.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use futures::FutureExt;

use crate::command::Cmd;
use crate::report::CommandRecord;
use crate::transport::{
    BoundedOutput, Duplex, ExecResult, ExecStream, ForwardMethod, OutputLimit, Transport,
    TransportError,
};

/// How much of each stream a record keeps: enough for an error message and a summary
/// line, never a dump's worth.
const KEEP: OutputLimit = OutputLimit {
    head: 2048,
    tail: 2048,
};

/// Past this many commands a task's record keeps only a count (a loop over thousands of
/// files must not grow the report without bound).
const MAX_COMMANDS: usize = 200;

/// The commands of one task, in the order they were sent.
#[derive(Debug, Default)]
pub struct CommandLog {
    records: Mutex<Vec<CommandRecord>>,
}

impl CommandLog {
    /// Everything recorded so far (the log is left empty).
    pub fn take(&self) -> Vec<CommandRecord> {
        self.records
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }

    /// How many commands are recorded so far.
    pub fn len(&self) -> usize {
        self.records.lock().map(|r| r.len()).unwrap_or_default()
    }

    /// Whether nothing is recorded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The command recorded last, if it is later than the first `after` ones.
    pub fn last_after(&self, after: usize) -> Option<CommandRecord> {
        let records = self.records.lock().ok()?;
        records.get(after..)?.last().cloned()
    }

    fn push(&self, record: CommandRecord) {
        if let Ok(mut records) = self.records.lock() {
            if records.len() < MAX_COMMANDS {
                records.push(record);
            }
        }
    }
}

/// A transport that records each command it runs in a [`CommandLog`].
pub struct Recorded {
    inner: Arc<dyn Transport>,
    log: Arc<CommandLog>,
}

impl Recorded {
    pub fn wrap(inner: Arc<dyn Transport>, log: Arc<CommandLog>) -> Arc<dyn Transport> {
        Arc::new(Recorded { inner, log })
    }
}

fn text(bytes: &[u8], stream: &str) -> String {
    let mut kept = BoundedOutput::new(Some(KEEP));
    kept.push(bytes);
    String::from_utf8_lossy(&kept.finish(stream)).into_owned()
}

fn record(cmd: &Cmd, started: Instant, result: &ExecResult) -> CommandRecord {
    let (exit_status, stdout, stderr) = match result {
        Ok(out) => (
            out.status,
            text(&out.stdout, "stdout"),
            text(&out.stderr, "stderr"),
        ),
        Err(e) => (None, String::new(), format!("[ferry: {e}]")),
    };
    CommandRecord {
        cmd: cmd.display(),
        exit_status,
        stdout,
        stderr,
        duration_ms: started.elapsed().as_millis() as u64,
    }
}

#[async_trait]
impl Transport for Recorded {
    fn host(&self) -> &str {
        self.inner.host()
    }

    fn verified_host_key(&self) -> Option<String> {
        self.inner.verified_host_key()
    }

    async fn exec(&self, cmd: &Cmd, stdin: Option<&[u8]>) -> ExecResult {
        let started = Instant::now();
        let result = self.inner.exec(cmd, stdin).await;
        self.log.push(record(cmd, started, &result));
        result
    }

    async fn exec_bounded(&self, cmd: &Cmd, stdin: Option<&[u8]>, keep: OutputLimit) -> ExecResult {
        let started = Instant::now();
        let result = self.inner.exec_bounded(cmd, stdin, keep).await;
        self.log.push(record(cmd, started, &result));
        result
    }

    async fn exec_stream(&self, cmd: &Cmd) -> Result<ExecStream, TransportError> {
        let started = Instant::now();
        let display = cmd.display();
        let log = self.log.clone();
        let mut stream = self.inner.exec_stream(cmd).await?;
        // The record is made when the command's exit is read: stdout is the data.
        stream.exit = stream
            .exit
            .map(move |exit| {
                let (exit_status, stderr) = match &exit {
                    Ok(e) => (e.status, text(&e.stderr, "stderr")),
                    Err(e) => (None, format!("[ferry: {e}]")),
                };
                log.push(CommandRecord {
                    cmd: display,
                    exit_status,
                    stdout: "[ferry: streamed]".into(),
                    stderr,
                    duration_ms: started.elapsed().as_millis() as u64,
                });
                exit
            })
            .boxed();
        Ok(stream)
    }

    async fn forward(
        &self,
        host: &str,
        port: u16,
    ) -> Result<(Box<dyn Duplex>, ForwardMethod), TransportError> {
        self.inner.forward(host, port).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::fake::{output, FakeTransport};

    #[tokio::test]
    async fn commands_are_recorded_with_status_and_bounded_output() {
        let fake = FakeTransport::new("h");
        fake.on("big", output(0, &"x".repeat(10_000)));
        fake.on("false", output(3, ""));
        let log = Arc::new(CommandLog::default());
        let t = Recorded::wrap(fake.clone(), log.clone());
        t.exec(&Cmd::new("big"), None).await.unwrap();
        t.exec(&Cmd::new("false"), None).await.unwrap();
        let records = log.take();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].cmd, "big");
        assert_eq!(records[0].exit_status, Some(0));
        assert!(
            records[0].stdout.len() < 4200,
            "{}",
            records[0].stdout.len()
        );
        assert!(records[0].stdout.contains("5904 bytes of stdout omitted"));
        assert_eq!(records[1].exit_status, Some(3));
        assert!(log.take().is_empty());
    }
}
