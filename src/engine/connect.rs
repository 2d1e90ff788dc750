//! The real [`Connector`]: SSH.

use std::sync::Arc;

use async_trait::async_trait;

use crate::secrets::Secrets;
use crate::transport::{ConnectSpec, Connector, Transport, TransportError};

/// Connects with the russh transport.
pub struct SshConnector;

#[async_trait]
impl Connector for SshConnector {
    async fn connect(
        &self,
        spec: &ConnectSpec,
        secrets: &Secrets,
    ) -> Result<Arc<dyn Transport>, TransportError> {
        ssh_connect(spec.clone(), secrets.clone()).await
    }
}

/// The one call into `transport::ssh`.
async fn ssh_connect(
    spec: ConnectSpec,
    secrets: Secrets,
) -> Result<Arc<dyn Transport>, TransportError> {
    Ok(Arc::new(
        crate::transport::ssh::SshTransport::connect(spec, secrets).await?,
    ))
}
