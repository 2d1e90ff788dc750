//! The local end of the Kubernetes API tunnel over the node's SSH connection.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::K8sError;
use crate::transport::Transport;

/// Start the local end of the API tunnel: returns the local port.
pub(super) async fn open_tunnel(
    node: Arc<dyn Transport>,
    host: String,
    port: u16,
) -> Result<(u16, JoinHandle<()>), K8sError> {
    // Fail early (and clearly) if the node cannot reach its API server at all.
    let (probe, method) = node
        .forward(&host, port)
        .await
        .map_err(|e| K8sError::Tunnel(e.to_string()))?;
    drop(probe);
    tracing::info!(host = node.host(), api = %format!("{host}:{port}"), ?method, "Kubernetes API tunnel");
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| K8sError::Tunnel(e.to_string()))?;
    let local_port = listener
        .local_addr()
        .map_err(|e| K8sError::Tunnel(e.to_string()))?
        .port();
    let handle = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let node = node.clone();
            let host = host.clone();
            tokio::spawn(async move {
                match node.forward(&host, port).await {
                    Ok((mut remote, _)) => {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut remote).await;
                    }
                    Err(e) => tracing::warn!("Kubernetes API tunnel connection failed: {e}"),
                }
            });
        }
    });
    Ok((local_port, handle))
}
