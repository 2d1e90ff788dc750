//! A local TCP port that forwards every connection through a host's SSH connection to
//! `host:port` as that host sees it (`ssh -L`): the Kubernetes API of the node, the blob
//! store's endpoint on the node's loopback. Clients that speak plain TCP (kube's, the
//! object-store client) connect to `127.0.0.1:<port>` on the laptop.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::{Transport, TransportError};

/// Open the local end: returns the local port and the task accepting on it (abort it to
/// close the tunnel). Fails at once if `host` cannot reach `target:port` at all.
pub async fn local_forward(
    host: Arc<dyn Transport>,
    target: String,
    port: u16,
    what: &'static str,
) -> Result<(u16, JoinHandle<()>), TransportError> {
    let (probe, method) = host.forward(&target, port).await?;
    drop(probe);
    tracing::info!(host = host.host(), to = %format!("{target}:{port}"), ?method, "{what} tunnel");
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let local_port = listener.local_addr()?.port();
    let handle = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let host = host.clone();
            let target = target.clone();
            tokio::spawn(async move {
                match host.forward(&target, port).await {
                    Ok((mut remote, _)) => {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut remote).await;
                    }
                    Err(e) => tracing::warn!("{what} tunnel connection failed: {e}"),
                }
            });
        }
    });
    Ok((local_port, handle))
}
