//! The new host's checks of `preflight`: the cluster answers, the namespace and its
//! workloads exist, and free disk under OpenEBS against the old side's data.

use std::collections::BTreeMap;

use serde::Serialize;

use super::probe::{
    artifacts_under, disk_free, render_or_var, DiskFree, BACKUP_DIR_NEW, OPENEBS_BASE,
};
use super::{needed, DataSizes, Preflight, DEFAULT_OPENEBS_BASE, OLD_SIZES_KEY};
use crate::k8s::{K8sError, WorkloadKind};
use crate::module::direct_route::{self, DirectFacts, DirectProbe, RouteSetting};
use crate::module::kube::K8sArgs;
use crate::module::units::{exact, human};
use crate::module::{HostReader, ModuleError};
use crate::packagist::blob_store::BlobStore;
use crate::packagist::completed::completed_marker;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkloadCheck {
    pub kind: WorkloadKind,
    pub name: String,
    /// `None`: present; `Some(why)`: missing or unreadable.
    pub problem: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewFacts {
    pub host: String,
    pub namespace: String,
    /// The kubeconfig could not be read or the API did not answer.
    pub cluster_error: Option<String>,
    /// The namespace is missing (or could not be read).
    pub namespace_error: Option<String>,
    pub workloads: Vec<WorkloadCheck>,
    pub ui_deployment: String,
    pub ui_app_container: String,
    /// Containers of the ui deployment's pod template, when it could be read.
    pub ui_containers: Option<Vec<String>>,
    /// The completion marker's data, when the migration already completed on this
    /// cluster (the disk check is moot then; handed to the old side's steps).
    pub completed_marker: Option<std::collections::BTreeMap<String, String>>,
    pub openebs: Result<DiskFree, String>,
    pub staging: Option<Result<DiskFree, String>>,
    /// Bytes of artifacts already staged on this host.
    pub already_staged: u64,
    /// The object store of host var `blob_store`: `None` when not set, else whether its
    /// bucket answered with the credentials (the reason when not).
    pub blob_store: Option<Result<String, String>>,
    /// The old side's figures from the journal, with the host they were measured on.
    pub old_sizes: Option<(String, DataSizes)>,
    pub safety_factor: f64,
    /// The API server's (major, minor, gitVersion), when it answered.
    pub server_version: Option<(u32, u32, String)>,
    /// `route = "direct"` was asked and cannot be used: why.
    pub direct_unavailable: Option<String>,
}

/// The first Kubernetes minor version whose exec speaks `v5.channel.k8s.io` (KEP-4006),
/// where a client can close stdin alone and still read the exit status.
pub const FIRST_V5_EXEC_MINOR: u32 = 30;

/// Pure: why ferry cannot migrate onto a server of `version`, if it cannot.
pub fn server_version_failure(host: &str, version: &(u32, u32, String)) -> Option<String> {
    let (major, minor, git) = version;
    (*major == 1 && *minor < FIRST_V5_EXEC_MINOR).then(|| {
        format!(
            "{host}: the Kubernetes API server is {git}: ferry streams the dump, the RDB and \
             the storage into pods over exec, and before Kubernetes 1.{FIRST_V5_EXEC_MINOR} \
             exec speaks only v4.channel.k8s.io, where stdin can only end by closing the \
             whole stream and the output or exit status may be lost: ferry could not trust \
             what it restored. Upgrade the cluster to 1.{FIRST_V5_EXEC_MINOR} or newer, or \
             follow the vendor's manual procedure"
        )
    })
}

impl Preflight {
    pub(super) async fn new_facts(&self, ctx: &HostReader) -> Result<NewFacts, ModuleError> {
        let target = self.k8s();
        // The context's namespace when none is named; the cluster says which below.
        let namespace = target.namespace(ctx)?.unwrap_or_else(|| "default".into());
        let ui_deployment = self.ui_deployment.clone().unwrap_or_else(|| "ui".into());
        let mut f = NewFacts {
            host: ctx.host.clone(),
            namespace: namespace.clone(),
            cluster_error: None,
            namespace_error: None,
            workloads: Vec::new(),
            ui_deployment: ui_deployment.clone(),
            ui_app_container: self.ui_app_container.clone().unwrap_or_else(|| "ui".into()),
            ui_containers: None,
            completed_marker: None,
            openebs: Err("not checked".into()),
            staging: None,
            already_staged: 0,
            blob_store: None,
            old_sizes: old_sizes_from_journal(ctx),
            safety_factor: self.safety_factor(),
            server_version: None,
            direct_unavailable: None,
        };

        let cluster = match target.cluster(ctx).await {
            Err(e) => {
                f.cluster_error = Some(e.to_string());
                None
            }
            Ok(cluster) => {
                f.namespace = cluster.namespace().to_string();
                Some(cluster)
            }
        };
        if let Some(cluster) = &cluster {
            f.server_version = cluster.server_version().await.ok();
            match cluster.ping().await {
                Err(K8sError::NotFound { .. }) => f.namespace_error = Some("not found".into()),
                Err(e) => f.cluster_error = Some(e.to_string()),
                Ok(()) => {
                    let names = |v: &Option<Vec<String>>, d: &[&str]| -> Vec<String> {
                        v.clone()
                            .unwrap_or_else(|| d.iter().map(|s| s.to_string()).collect())
                    };
                    let wanted = names(&self.deployments, &["ui", "repo", "worker"])
                        .into_iter()
                        .map(|n| (WorkloadKind::Deployment, n))
                        .chain(
                            names(&self.statefulsets, &["postgres", "redis"])
                                .into_iter()
                                .map(|n| (WorkloadKind::StatefulSet, n)),
                        );
                    for (kind, name) in wanted {
                        let problem = match cluster.workload(kind, &name).await {
                            Ok(_) => None,
                            Err(K8sError::NotFound { .. }) => Some("not found".to_string()),
                            Err(e) => Some(e.to_string()),
                        };
                        f.workloads.push(WorkloadCheck {
                            kind,
                            name,
                            problem,
                        });
                    }
                    if let Ok(Some(d)) = cluster.deployment(&ui_deployment).await {
                        f.ui_containers = Some(
                            d.spec
                                .and_then(|s| s.template.spec)
                                .map(|s| s.containers.into_iter().map(|c| c.name).collect())
                                .unwrap_or_default(),
                        );
                    }
                    f.completed_marker = completed_marker(cluster).await?;
                }
            }
        }

        f.blob_store = match BlobStore::from_host(ctx, cluster.as_deref()).await {
            Ok(None) => None,
            Ok(Some(store)) => Some(match store.check(ctx.transport.clone()).await {
                Ok(()) => Ok(store.describe()),
                Err(e) => Err(e.to_string()),
            }),
            Err(e) => Some(Err(e.to_string())),
        };
        let openebs = render_or_var(ctx, &self.openebs_base, &OPENEBS_BASE)?
            .unwrap_or_else(|| DEFAULT_OPENEBS_BASE.into());
        f.openebs = disk_free(ctx, &openebs).await.map_err(|e| e.to_string());
        if let Some(dir) = render_or_var(ctx, &self.staging_dir, &BACKUP_DIR_NEW)? {
            f.staging = Some(disk_free(ctx, &dir).await.map_err(|e| e.to_string()));
            f.already_staged = artifacts_under(ctx, &dir).await?;
        }
        f.direct_unavailable = self.direct_unavailable(ctx).await?;
        Ok(f)
    }

    /// With `route = "direct"`: the streams' own probe, now (read-only), and why it
    /// fails. `auto` and `controller` need nothing here (auto falls back by itself).
    async fn direct_unavailable(&self, ctx: &HostReader) -> Result<Option<String>, ModuleError> {
        let (Some(route), Some(from)) = (&self.route, &self.route_from) else {
            return Ok(None);
        };
        if direct_route::route_setting(ctx, Some(route))? != RouteSetting::Direct {
            return Ok(None);
        }
        let source_host = crate::packagist::storage_stream::resolve_source(
            &ctx.vars,
            &ctx.render_operand(from)?,
        )?;
        let source = ctx.peer(&source_host).await?;
        let mut direct = DirectFacts::new(RouteSetting::Direct);
        // The staging path's own check is the stream's: "" passes it.
        let unavailable = direct_route::unavailable_for(ctx, "");
        direct_route::look(ctx, &source_host, &source, unavailable, &mut direct).await?;
        Ok(match direct.probe {
            DirectProbe::Unavailable(why) => Some(why),
            _ => None,
        })
    }
}

/// The newest figures recorded by an old-role preflight, on any host.
fn old_sizes_from_journal(ctx: &HostReader) -> Option<(String, DataSizes)> {
    let data = ctx.journal.snapshot();
    data.hosts
        .iter()
        .flat_map(|(host, tasks)| tasks.values().map(move |r| (host, r)))
        .filter_map(|(host, r)| {
            let sizes = serde_json::from_value(r.fingerprints.get(OLD_SIZES_KEY)?.clone()).ok()?;
            Some((r.started.clone(), host.clone(), sizes))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, host, sizes)| (host, sizes))
}

/// Every failed check on the new host.
pub fn new_failures(f: &NewFacts) -> Vec<String> {
    let mut out = Vec::new();
    let host = &f.host;
    if let Some(why) = &f.direct_unavailable {
        out.push(format!(
            "{host}: route = \"direct\" cannot be used: {why}. Set stream_route = \"auto\" \
             (through the laptop when the old host cannot reach this host) or \"controller\""
        ));
    }
    if let Some(e) = &f.cluster_error {
        out.push(format!(
            "{host}: the Kubernetes API is not usable: {e}. Check var kubeconfig (a readable \
             kubeconfig on the node, become may be needed) or kubeconfig_local/kube_context"
        ));
    } else if let Some(e) = &f.namespace_error {
        out.push(format!(
            "{host}: expected namespace {} to exist: {e}. Set var namespace to the namespace \
             Private Packagist is installed in",
            f.namespace
        ));
    } else {
        if let Some(why) = f
            .server_version
            .as_ref()
            .and_then(|v| server_version_failure(host, v))
        {
            out.push(why);
        }
        let missing: Vec<String> = f
            .workloads
            .iter()
            .filter_map(|w| {
                w.problem
                    .as_ref()
                    .map(|p| format!("{}/{} ({p})", w.kind.kubectl_name(), w.name))
            })
            .collect();
        if !missing.is_empty() {
            out.push(format!(
                "{host}: expected every Private Packagist workload in namespace {}; missing: \
                 {}. Install Private Packagist on the cluster first (or name the workloads: \
                 args deployments, statefulsets)",
                f.namespace,
                missing.join(", ")
            ));
        }
        match &f.ui_containers {
            Some(c) if c.contains(&f.ui_app_container) => {}
            Some(c) => out.push(format!(
                "{host}: expected a container named {} in deployment/{}; found: {}. \
                 Set arg ui_app_container to the app container's name",
                f.ui_app_container,
                f.ui_deployment,
                if c.is_empty() {
                    "none".to_string()
                } else {
                    c.join(", ")
                }
            )),
            // The missing deployment is already listed above.
            None => {}
        }
    }

    if let Some(Err(e)) = &f.blob_store {
        out.push(format!(
            "{host}: the blob storage (host var blob_store) cannot be read: {e}. Check the \
             endpoint, the bucket and the credentials' secret vars; the storage import is \
             proven there"
        ));
    }
    if f.completed_marker.is_some() {
        // The data is on the cluster already: the space it takes is not needed again.
        return out;
    }
    let need = f
        .old_sizes
        .as_ref()
        .map(|(_, s)| needed(s.total(), f.safety_factor));
    let mut per_fs: BTreeMap<String, (u64, u64, Vec<String>)> = BTreeMap::new();
    match &f.openebs {
        Err(e) => out.push(format!(
            "{host}: cannot read the free space under the OpenEBS base directory: {e}"
        )),
        Ok(d) => {
            if let Some(need) = need {
                let e = per_fs
                    .entry(d.mount.clone())
                    .or_insert((d.available, 0, Vec::new()));
                e.1 += need;
                e.2.push(format!("volumes under {}", d.path));
            }
        }
    }
    match &f.staging {
        None => {}
        Some(Err(e)) => out.push(format!(
            "{host}: cannot read the free space of the staging directory: {e}"
        )),
        Some(Ok(d)) => {
            if let Some(need) = need {
                let e = per_fs
                    .entry(d.mount.clone())
                    .or_insert((d.available, 0, Vec::new()));
                e.1 += need.saturating_sub(f.already_staged);
                e.2.push(format!("staged backup in {}", d.path));
            }
        }
    }
    if let Some((old_host, sizes)) = &f.old_sizes {
        for (mount, (available, need, uses)) in per_fs {
            if available < need {
                out.push(format!(
                    "{host}: not enough free disk on filesystem {mount} for {}: need {} \
                     (the old side's data on {old_host}: storage {} + database {} + Redis {}, \
                     × {} per use), found {} available. Free space on the node or grow the disk",
                    uses.join(" and "),
                    exact(need),
                    human(sizes.storage),
                    human(sizes.database),
                    human(sizes.redis),
                    f.safety_factor,
                    exact(available)
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod version_tests {
    use super::*;

    #[test]
    fn servers_before_1_30_are_refused_naming_their_version() {
        let old = server_version_failure("new", &(1, 29, "v1.29.4".into())).unwrap();
        for want in [
            "new: the Kubernetes API server is v1.29.4",
            "v4.channel.k8s.io",
            "1.30 or newer",
        ] {
            assert!(old.contains(want), "{want:?} not in {old}");
        }
        assert_eq!(
            server_version_failure("new", &(1, 30, "v1.30.0".into())),
            None
        );
        assert_eq!(
            server_version_failure("new", &(1, 33, "v1.33.0".into())),
            None
        );
    }
}
