//! `pods/exec` over WebSocket with the `v5.channel.k8s.io` / `v4.channel.k8s.io` protocols:
//! binary messages whose first byte is the channel (0 stdin, 1 stdout, 2 stderr, 3 status,
//! 4 resize, 255 close — v5 only), the exit status as a metav1.Status on channel 3.

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::api::{full, Body, ExecFlags, Sim};
use crate::kubelet::{exit_code, ExecTarget};
use crate::nsexec;
use crate::ops::PODS;
use crate::store::ApiError;

const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const CLOSE: u8 = 255;
const CHUNK: usize = 64 * 1024;

/// The container an exec runs in, as the API server picks it: the one named, else the
/// pod's only container. A pod with several needs a name: 400, with the API server's
/// message. (The `kubectl.kubernetes.io/default-container` annotation is read by kubectl,
/// client side, which then sends `container=`; the server itself ignores it.)
pub fn exec_container(
    pod: &serde_json::Value,
    pod_name: &str,
    container: Option<&str>,
) -> Result<String, String> {
    let names: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .map(|cs| cs.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    match (container, names.as_slice()) {
        (Some(c), _) if names.contains(&c) => Ok(c.to_string()),
        (Some(c), _) => Err(format!("container {c} is not valid for pod {pod_name}")),
        (None, [only]) => Ok(only.to_string()),
        (None, []) => Err(format!("pod {pod_name} does not have a host assigned")),
        (None, _) => Err(format!(
            "a container name must be specified for pod {pod_name}, choose one of: [{}]",
            names.join(" ")
        )),
    }
}

pub async fn handle_exec(
    sim: Arc<Sim>,
    req: Request<Incoming>,
    namespace: &str,
    pod_name: &str,
    command: &[String],
    container: Option<&str>,
    flags: ExecFlags,
) -> Result<Response<Body>, ApiError> {
    let pod = sim
        .store
        .get(PODS, namespace, pod_name)
        .ok_or_else(|| ApiError::not_found(PODS, pod_name))?;
    let container = exec_container(&pod, pod_name, container).map_err(ApiError::bad_request)?;
    let target = sim
        .kubelet
        .exec_target(namespace, pod_name, &container)
        .map_err(ApiError::bad_request)?;
    let headers = req.headers();
    let is_websocket = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !is_websocket {
        return Err(ApiError::bad_request(
            "the simulator serves exec over WebSocket only (v5.channel.k8s.io / v4.channel.k8s.io); SPDY is not supported",
        ));
    }
    let key = headers
        .get("sec-websocket-key")
        .ok_or_else(|| ApiError::bad_request("missing Sec-WebSocket-Key"))?
        .as_bytes()
        .to_vec();
    let offered: Vec<String> = headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .collect();
    // v5 (stdin can be closed alone) came with Kubernetes 1.30; an older server speaks v4.
    let supported: &[&str] = if sim.config.version < (1, 30) {
        &PROTOCOLS[1..]
    } else {
        &PROTOCOLS
    };
    let protocol = offered
        .iter()
        .find(|p| supported.contains(&p.as_str()))
        .cloned()
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "no supported WebSocket subprotocol in {offered:?}; supported: {supported:?}"
            ))
        })?;
    if command.is_empty() {
        return Err(ApiError::bad_request("you must specify at least 1 command"));
    }
    tracing::info!("exec in {namespace}/{pod_name}/{container} ({protocol}): {command:?}");

    let v5 = protocol == PROTOCOLS[0];
    let command = command.to_vec();
    let kubelet = sim.kubelet.clone();
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::warn!("exec upgrade failed: {error}");
                return;
            }
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(256 << 20))
            .max_frame_size(Some(64 << 20));
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let uid = target.uid.clone();
        run_session(socket, target, command, flags, v5, &kubelet, &uid).await;
    });

    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(
        header::UPGRADE,
        header::HeaderValue::from_static("websocket"),
    );
    h.insert(
        header::CONNECTION,
        header::HeaderValue::from_static("Upgrade"),
    );
    if let Ok(accept) = header::HeaderValue::from_str(&derive_accept_key(&key)) {
        h.insert("sec-websocket-accept", accept);
    }
    if let Ok(p) = header::HeaderValue::from_str(&protocol) {
        h.insert("sec-websocket-protocol", p);
    }
    Ok(response)
}

fn channel_message(channel: u8, data: &[u8]) -> Message {
    let mut payload = Vec::with_capacity(data.len() + 1);
    payload.push(channel);
    payload.extend_from_slice(data);
    Message::Binary(payload.into())
}

fn exit_status(code: i32) -> Value {
    if code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        })
    }
}

/// Forward a process's output to the client; once the client is gone, keep reading and
/// drop it, so the process neither blocks on a full pipe nor dies of SIGPIPE (it goes on
/// running, as on a real node).
async fn pump<R: AsyncRead + Unpin>(mut reader: R, channel: u8, out: mpsc::Sender<Message>) {
    let mut buffer = vec![0u8; CHUNK];
    let mut client = true;
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) if client => {
                client = out
                    .send(channel_message(channel, &buffer[..n]))
                    .await
                    .is_ok();
            }
            Ok(_) => {}
        }
    }
}

async fn run_session<S>(
    socket: WebSocketStream<S>,
    target: ExecTarget,
    command: Vec<String>,
    flags: ExecFlags,
    v5: bool,
    kubelet: &crate::kubelet::Kubelet,
    uid: &str,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = socket.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(16);
    let writer = tokio::spawn(async move {
        while let Some(message) = out_rx.recv().await {
            if sink.send(message).await.is_err() {
                return;
            }
        }
        let _ = sink
            .send(Message::Close(Some(CloseFrame {
                code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
                reason: "".into(),
            })))
            .await;
        let _ = sink.close().await;
    });

    let spawned = nsexec::exec_command(
        &command,
        &target.env,
        &target.workdir,
        target.pid,
        target.user,
    )
    .and_then(|(mut cmd, namespaces)| {
        cmd.stdin(if flags.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(if flags.stdout {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stderr(if flags.stderr {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .kill_on_drop(true);
        let child = cmd.spawn();
        drop(namespaces);
        child
    });
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            let status = json!({
                "metadata": {}, "status": "Failure",
                "message": format!("failed to exec in container: {error}"),
                "reason": "InternalError",
            });
            let _ = out_tx
                .send(channel_message(
                    STATUS,
                    &serde_json::to_vec(&status).unwrap_or_default(),
                ))
                .await;
            drop(out_tx);
            let _ = writer.await;
            return;
        }
    };
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);
    kubelet.register_exec(uid, pgid, true);
    let _ = flags.tty;

    let mut pumps = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        pumps.push(tokio::spawn(pump(stdout, STDOUT, out_tx.clone())));
    }
    if let Some(stderr) = child.stderr.take() {
        pumps.push(tokio::spawn(pump(stderr, STDERR, out_tx.clone())));
    }
    let mut stdin = child.stdin.take();
    // Client → process: stdin with backpressure (the next frame is read only after the
    // previous one was written to the pipe).
    let reader = tokio::spawn(async move {
        while let Some(message) = stream.next().await {
            match message {
                Ok(Message::Binary(data)) if !data.is_empty() => match data[0] {
                    STDIN => {
                        if let Some(pipe) = stdin.as_mut() {
                            if pipe.write_all(&data[1..]).await.is_err() {
                                stdin = None;
                            }
                        }
                    }
                    CLOSE if v5 && data.get(1) == Some(&STDIN) => {
                        if let Some(mut pipe) = stdin.take() {
                            let _ = pipe.shutdown().await;
                        }
                    }
                    _ => {}
                },
                Ok(Message::Close(_)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    });

    let mut reader = reader;
    let code = tokio::select! {
        status = child.wait() => status.map(exit_code).unwrap_or(128),
        _ = &mut reader => {
            // The client went away. As on a real node the command goes on: its stdin is
            // closed (the reader dropped it), its output goes nowhere, and it ends on its
            // own or with its pod (it stays among the pod's exec groups until then).
            tracing::info!("exec client left; process group {pgid} keeps running");
            drop(out_tx);
            writer.abort();
            let _ = child.wait().await;
            kubelet.register_exec(uid, pgid, false);
            for pump in pumps {
                let _ = pump.await;
            }
            return;
        }
    };
    kubelet.register_exec(uid, pgid, false);
    // Forward everything the command wrote before reporting its status; a background process
    // that keeps the pipes open must not hold the session forever.
    for pump in pumps {
        let abort = pump.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), pump)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    let status = serde_json::to_vec(&exit_status(code)).unwrap_or_default();
    let _ = out_tx.send(channel_message(STATUS, &status)).await;
    drop(out_tx);
    let _ = writer.await;
    reader.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_follows_the_api_server() {
        assert_eq!(exit_status(0)["status"], "Success");
        let failure = exit_status(3);
        assert_eq!(failure["reason"], "NonZeroExitCode");
        assert_eq!(failure["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(failure["details"]["causes"][0]["message"], "3");
    }

    #[test]
    fn an_exec_without_a_container_needs_a_single_container_pod() {
        let two = json!({
            "metadata": {"annotations": {"kubectl.kubernetes.io/default-container": "ui"}},
            "spec": {"containers": [{"name": "ui"}, {"name": "sidecar"}]},
        });
        // The annotation is kubectl's: the API server still wants a name.
        assert_eq!(
            exec_container(&two, "ui-1", None).unwrap_err(),
            "a container name must be specified for pod ui-1, choose one of: [ui sidecar]"
        );
        assert_eq!(
            exec_container(&two, "ui-1", Some("sidecar")).unwrap(),
            "sidecar"
        );
        assert_eq!(
            exec_container(&two, "ui-1", Some("app")).unwrap_err(),
            "container app is not valid for pod ui-1"
        );
        let one = json!({"spec": {"containers": [{"name": "redis"}]}});
        assert_eq!(exec_container(&one, "redis-0", None).unwrap(), "redis");
    }
}
