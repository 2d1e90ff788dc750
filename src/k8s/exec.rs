//! Programs in pods: exec with stdin/stdout/stderr attached (buffers sized for bulk
//! data), feeding and draining, and the exit status from the status channel.

use kube::api::{AttachParams, AttachedProcess};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use k8s_openapi::api::core::v1::Pod;

use super::{api_err, may_write, pod_argv_writes, Cluster, K8sError};

impl Cluster {
    /// Start `argv` in `pod`/`container` with stdin, stdout and stderr attached, with
    /// buffers sized for bulk data (kube's default of 1 KiB crawls).
    pub async fn exec(
        &self,
        pod: &str,
        container: Option<&str>,
        argv: &[String],
        stdin: bool,
    ) -> Result<AttachedProcess, K8sError> {
        if let Some(why) = pod_argv_writes(argv) {
            may_write(|| format!("{argv:?} in pod {pod} ({why})"))?;
        }
        const BUF: usize = 1 << 20;
        let mut ap = AttachParams::default()
            .stdin(stdin)
            .stdout(true)
            .stderr(true)
            .max_stdin_buf_size(BUF)
            .max_stdout_buf_size(BUF)
            .max_stderr_buf_size(BUF);
        if let Some(c) = container {
            ap = ap.container(c);
        }
        self.api::<Pod>()
            .exec(pod, argv.to_vec(), &ap)
            .await
            .map_err(api_err(format!("exec in pod {pod}")))
    }

    /// Run `argv` in a pod without stdin and collect stdout; fails on a non-zero exit.
    pub async fn exec_output(
        &self,
        pod: &str,
        container: Option<&str>,
        argv: &[String],
    ) -> Result<Vec<u8>, K8sError> {
        let mut proc = self.exec(pod, container, argv, false).await?;
        let (out, err) = drain(&mut proc).await;
        finish(pod, proc, &err).await?;
        Ok(out)
    }
}

/// Read stdout and stderr of an attached process to the end, concurrently (reading
/// one while the other fills up would stall both).
pub async fn drain(proc: &mut AttachedProcess) -> (Vec<u8>, Vec<u8>) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let so = proc.stdout();
    let se = proc.stderr();
    let read_out = async {
        if let Some(mut r) = so {
            let _ = r.read_to_end(&mut out).await;
        }
    };
    let read_err = async {
        if let Some(mut r) = se {
            let _ = r.read_to_end(&mut err).await;
        }
    };
    tokio::join!(read_out, read_err);
    (out, err)
}

/// Wait for an attached process's status; a non-zero exit becomes an error with stderr.
pub async fn finish(pod: &str, mut proc: AttachedProcess, stderr: &[u8]) -> Result<(), K8sError> {
    let status = match proc.take_status() {
        Some(s) => s.await,
        None => None,
    };
    let _ = proc.join().await;
    match status {
        Some(s) if s.status.as_deref() == Some("Success") => Ok(()),
        Some(s) => Err(K8sError::Exec {
            pod: pod.to_string(),
            reason: format!(
                "{} {}",
                s.message.unwrap_or_default(),
                String::from_utf8_lossy(stderr).trim()
            ),
        }),
        None => Err(K8sError::Exec {
            pod: pod.to_string(),
            reason: "the connection closed without an exit status".to_string(),
        }),
    }
}

/// Copy all of `reader` into the process's stdin, then close it (EOF).
pub async fn feed_stdin<R: tokio::io::AsyncRead + Unpin>(
    proc: &mut AttachedProcess,
    reader: &mut R,
) -> std::io::Result<u64> {
    let Some(mut w) = proc.stdin() else {
        return Ok(0);
    };
    let n = tokio::io::copy(reader, &mut w).await?;
    w.shutdown().await?;
    Ok(n)
}
