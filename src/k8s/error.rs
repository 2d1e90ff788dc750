//! What can go wrong in a Kubernetes operation ([`K8sError`]), and the facts guard's
//! refusal of cluster writes while a module reads facts.

use crate::command::Cmd;

/// Why a Kubernetes operation failed.
#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error("could not read the kubeconfig {path} on {host}: {reason}")]
    KubeconfigRead {
        host: String,
        path: String,
        reason: String,
    },
    #[error("the kubeconfig {path} is not usable: {reason}")]
    KubeconfigInvalid { path: String, reason: String },
    #[error("could not open the tunnel to the Kubernetes API: {0}")]
    Tunnel(String),
    #[error("Kubernetes API error while trying to {action}: {source}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error("timed out after {secs}s waiting until {what}")]
    Timeout { what: String, secs: u64 },
    /// The API stayed unreachable in the middle of a wait (see `API_OUTAGE_LIMIT`).
    #[error(
        "the Kubernetes API has been unreachable for {secs}s while waiting until {what} \
         (last error: {last}); is the host reachable? Run ferry again once it is: the wait \
         picks up where it was"
    )]
    ApiLost {
        what: String,
        secs: u64,
        last: String,
    },
    #[error("{kind} {name} not found in namespace {namespace}")]
    NotFound {
        kind: &'static str,
        name: String,
        namespace: String,
    },
    /// The provisioner could not clean a deleted claim's volume up: the PV stays, Failed.
    #[error(
        "the provisioner failed to clean up PV {pv} (of PVC {pvc}) after {elapsed_secs}s: \
         {message}; the PV stays in phase Failed and its directory{path} may still hold the \
         old data. Look with: kubectl describe pv {pv} ; once the directory is removed on the \
         node, delete the PV (kubectl delete pv {pv}) and run ferry again"
    )]
    PvCleanupFailed {
        pv: String,
        pvc: String,
        message: String,
        path: String,
        elapsed_secs: u64,
    },
    #[error("exec in pod {pod} failed: {reason}")]
    Exec { pod: String, reason: String },
    #[error("watch of {what} ended: {reason}")]
    Watch { what: String, reason: String },
    /// The API server answered something ferry cannot read (e.g. a version that is no
    /// number).
    #[error("the API server's {what} cannot be read: {reason}")]
    Unreadable { what: String, reason: String },
    /// A write while a module read facts: a bug in that module.
    #[error("refused while reading facts: {0} would change the cluster; facts only read (a bug in the module)")]
    ReadOnly(String),
}

/// Refuse a cluster write (`what`) inside the facts guard ([`crate::transport::read_only`]).
pub(super) fn may_write(what: impl FnOnce() -> String) -> Result<(), K8sError> {
    if crate::transport::read_only::active() {
        Err(K8sError::ReadOnly(what()))
    } else {
        Ok(())
    }
}

/// Programs run in a pod that plainly write, for the facts guard.
pub(super) fn pod_argv_writes(argv: &[String]) -> Option<String> {
    let mut cmd = Cmd::new(argv.first().map(String::as_str).unwrap_or(""));
    for a in argv.iter().skip(1) {
        cmd = cmd.arg(a.as_str());
    }
    cmd.writes()
}

pub(super) fn api_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> K8sError {
    let action = action.into();
    move |source| K8sError::Api { action, source }
}
