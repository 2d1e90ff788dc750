//! The local end of the Kubernetes API tunnel over the node's SSH connection.

use std::sync::Arc;

use tokio::task::JoinHandle;

use super::K8sError;
use crate::transport::tunnel::local_forward;
use crate::transport::Transport;

/// Start the local end of the API tunnel: returns the local port.
pub(super) async fn open_tunnel(
    node: Arc<dyn Transport>,
    host: String,
    port: u16,
) -> Result<(u16, JoinHandle<()>), K8sError> {
    local_forward(node, host, port, "Kubernetes API")
        .await
        .map_err(|e| K8sError::Tunnel(e.to_string()))
}
