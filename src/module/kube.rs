//! The Kubernetes side of a step: where its cluster is (one shared argument set), the
//! connection shared by a host's tasks, and running a program in a pod.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::command::Cmd;
use crate::k8s::{Cluster, KubeconfigSource};
use crate::module::artifact::df_text;
use crate::module::{HostReader, ModuleError, VarDecl, VarKind};
use crate::playbook::template::Template;

// ---------------------------------------------------------------------------------------
// Kubernetes

/// Default kubeconfig on an embedded-cluster node.
pub const DEFAULT_KUBECONFIG: &str = "/etc/kubernetes/admin.conf";

/// Where a Kubernetes step finds its cluster; every field falls back to a host var
/// (`namespace`, `kubeconfig`, `kubeconfig_local`, `kube_context`), then to the
/// embedded-cluster defaults (`default`, `/etc/kubernetes/admin.conf`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K8sTarget {
    pub namespace: Option<Template>,
    /// kubeconfig on the node, read over SSH.
    pub kubeconfig: Option<Template>,
}

/// Modules that take the Kubernetes argument set ([`k8s_args!`]): where their cluster is.
pub trait K8sArgs {
    fn k8s(&self) -> K8sTarget;
}

/// Declares a module's args struct with the Kubernetes argument set appended, once for
/// every Kubernetes module: `namespace` and `kubeconfig` (see [`K8sTarget`] and
/// docs/modules.md, "Kubernetes arguments"), plus [`K8sArgs`] for the struct. The fields
/// are plain fields of the struct (not `#[serde(flatten)]`), so `deny_unknown_fields` and
/// located errors keep working. The module's `Module::VARS` lists [`VARS`], the host
/// vars [`K8sTarget`] falls back to. The macro derives `Debug`, `Clone`, `Serialize` and
/// `Deserialize` and denies unknown fields: an args struct is parsed strictly, always.
///
/// ```text
/// k8s_args! {
///     pub struct RedisFlushdb {
///         pub db: u32,
///     }
/// }
/// ```
macro_rules! k8s_args {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $($(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        $vis struct $name {
            $($(#[$fmeta])* $fvis $field: $ty,)*
            /// Namespace; default: host var `namespace`, else `default`.
            pub namespace: Option<$crate::playbook::template::Template>,
            /// kubeconfig on the node, read over SSH. Default: host var `kubeconfig_local`
            /// (a kubeconfig on the control machine, context host var `kube_context`),
            /// else host var `kubeconfig`, else `/etc/kubernetes/admin.conf`.
            pub kubeconfig: Option<$crate::playbook::template::Template>,
        }

        impl $crate::module::kube::K8sArgs for $name {
            fn k8s(&self) -> $crate::module::kube::K8sTarget {
                $crate::module::kube::K8sTarget {
                    namespace: self.namespace.clone(),
                    kubeconfig: self.kubeconfig.clone(),
                }
            }
        }
    };
}
pub(crate) use k8s_args;

/// Host var: the namespace of the Kubernetes steps (default `default`).
pub const NAMESPACE: VarDecl = VarDecl::new("namespace", VarKind::Str);
/// Host var: the kubeconfig on the node, read over SSH (default /etc/kubernetes/admin.conf).
pub const KUBECONFIG: VarDecl = VarDecl::new("kubeconfig", VarKind::Str);
/// Host var: a kubeconfig on the laptop, used instead of the node's: a path, a
/// `:`-separated list merged as `$KUBECONFIG`'s, or `"kubectl"` (as kubectl finds it).
pub const KUBECONFIG_LOCAL: VarDecl = VarDecl::new("kubeconfig_local", VarKind::Str);
/// Host var: the context of `kubeconfig_local` to use (default: its current context).
pub const KUBE_CONTEXT: VarDecl = VarDecl::new("kube_context", VarKind::Str);

/// The host vars [`K8sTarget`] reads: every Kubernetes module declares them.
pub const VARS: &[&VarDecl] = &[&NAMESPACE, &KUBECONFIG, &KUBECONFIG_LOCAL, &KUBE_CONTEXT];

/// Host var `kubeconfig_local`: `"kubectl"` finds the files as kubectl does (none
/// given); else a path or a `:`-separated list, as `$KUBECONFIG`, each with `~/`
/// expanded.
fn local_kubeconfig_paths(value: &str) -> Vec<std::path::PathBuf> {
    if value == "kubectl" {
        return Vec::new();
    }
    value
        .split(':')
        .filter(|p| !p.is_empty())
        .map(|p| match (p.strip_prefix("~/"), crate::home_dir()) {
            (Some(rest), Some(home)) => home.join(rest),
            _ => std::path::PathBuf::from(p),
        })
        .collect()
}

fn var_str(ctx: &HostReader, decl: &'static VarDecl) -> Result<Option<String>, ModuleError> {
    Ok(ctx.var_str_of(decl)?.map(str::to_string))
}

impl K8sTarget {
    /// The namespace the task names (its `namespace`, else host var `namespace`); `None`:
    /// the kubeconfig context's, as kubectl (see [`Cluster::namespace`]).
    pub fn namespace(&self, ctx: &HostReader) -> Result<Option<String>, ModuleError> {
        Ok(match &self.namespace {
            Some(t) => Some(ctx.render_operand(t)?),
            None => var_str(ctx, &NAMESPACE)?,
        })
    }

    fn source(&self, ctx: &HostReader) -> Result<KubeconfigSource, ModuleError> {
        if let Some(t) = &self.kubeconfig {
            return Ok(KubeconfigSource::RemoteFile(ctx.render_operand(t)?));
        }
        if let Some(local) = var_str(ctx, &KUBECONFIG_LOCAL)? {
            return Ok(KubeconfigSource::Local {
                paths: local_kubeconfig_paths(&local),
                context: var_str(ctx, &KUBE_CONTEXT)?,
            });
        }
        Ok(KubeconfigSource::RemoteFile(
            var_str(ctx, &KUBECONFIG)?.unwrap_or_else(|| DEFAULT_KUBECONFIG.into()),
        ))
    }

    /// The kubeconfig file on the node this target uses, if it uses one there (not with
    /// `kubeconfig_local`): kubectl run on the node can use it too.
    pub fn node_kubeconfig(&self, ctx: &HostReader) -> Result<Option<String>, ModuleError> {
        Ok(match self.source(ctx)? {
            KubeconfigSource::RemoteFile(path) => Some(path),
            KubeconfigSource::Local { .. } => None,
        })
    }

    /// The cluster, connected once per host and namespace and shared by later tasks.
    pub async fn cluster(&self, ctx: &HostReader) -> Result<Arc<Cluster>, ModuleError> {
        let namespace = self.namespace(ctx)?;
        let source = self.source(ctx)?;
        let key = format!("k8s:{namespace:?}:{source:?}");
        let transport = ctx.transport.clone();
        let cell = ctx.cache.cell::<Cluster>(&key);
        let cluster = cell
            .get_or_try_init(|| async move {
                Cluster::connect(transport, &source, namespace.as_deref())
                    .await
                    .map(Arc::new)
            })
            .await?;
        Ok(cluster.clone())
    }
}

/// Run `argv` in a pod with `input` on stdin; stdout on success, an error naming the
/// pod and stderr otherwise. Feeds and drains at the same time (either alone can stall).
pub async fn pod_exec(
    cluster: &Cluster,
    pod: &str,
    container: Option<&str>,
    argv: &[String],
    input: Option<&[u8]>,
) -> Result<Vec<u8>, ModuleError> {
    let mut proc = cluster.exec(pod, container, argv, input.is_some()).await?;
    let stdin = proc.stdin();
    let feed = async move {
        if let (Some(mut w), Some(bytes)) = (stdin, input) {
            use tokio::io::AsyncWriteExt;
            w.write_all(bytes).await?;
            w.shutdown().await?;
        }
        Ok::<(), std::io::Error>(())
    };
    let (fed, (out, err)) = tokio::join!(feed, crate::k8s::drain(&mut proc));
    crate::k8s::finish(pod, proc, &err).await?;
    fed.map_err(|source| ModuleError::Io {
        what: format!("writing to {pod}"),
        source,
    })?;
    Ok(out)
}

/// `sh -c SCRIPT` as argv, for a pod exec.
pub fn sh_argv(script: &Cmd) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.to_shell()]
}

/// The name of a ready pod of `deployment`, if any.
pub async fn ready_deployment_pod(
    cluster: &Cluster,
    deployment: &str,
) -> Result<Option<String>, ModuleError> {
    let (_, pods) = cluster
        .workload(crate::k8s::WorkloadKind::Deployment, deployment)
        .await?;
    Ok(cluster
        .pods(&pods)
        .await?
        .into_iter()
        .find(crate::k8s::pod_ready)
        .and_then(|p| p.metadata.name))
}

/// The directory that will hold `path` (where its free space is measured).
pub fn parent_dir(path: &str) -> String {
    std::path::Path::new(path)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "/".into())
}

/// `df -PB1` of `dir` in a pod.
async fn pod_df(
    cluster: &Cluster,
    pod: &str,
    container: &str,
    dir: &str,
) -> Result<String, ModuleError> {
    let df = Cmd::new("df").arg("-PB1").arg("--").arg(dir);
    let out = pod_exec(cluster, pod, Some(container), &sh_argv(&df), None).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// "N bytes free of M …" for the directory holding `path` in a pod, or why not.
pub async fn pod_free_text(cluster: &Cluster, pod: &str, container: &str, path: &str) -> String {
    let dir = parent_dir(path);
    match pod_df(cluster, pod, container, &dir).await {
        Ok(out) => df_text(&dir, &out),
        Err(e) => format!("free space unknown ({e})"),
    }
}

/// Bytes available in the directory that will hold `path` in a pod (`df -PB1` of it),
/// `None` when it cannot be read.
pub async fn pod_free_bytes(
    cluster: &Cluster,
    pod: &str,
    container: &str,
    path: &str,
) -> Option<u64> {
    let out = pod_df(cluster, pod, container, &parent_dir(path))
        .await
        .ok()?;
    df_available(&out)
}

/// Pure: the `Available` column of `df -PB1`'s data line.
pub fn df_available(out: &str) -> Option<u64> {
    out.lines()
        .find(|l| !l.starts_with("Filesystem") && !l.trim().is_empty())?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

/// A ConfigMap whose presence says "done here, the system may be live": a task with a
/// guard leaves `store` alone while it exists (reported ok, with this reason), unless
/// the operator named the store (or `all`) in `--overwrite`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MarkerGuard {
    pub configmap: String,
    pub store: String,
}

/// `--overwrite` names `store` (or `all`).
pub fn overwrites(overwrite: &[String], store: &str) -> bool {
    overwrite.iter().any(|o| o == store || o == "all")
}

/// The reason to leave `store` alone, when `marker` (ConfigMap `configmap`'s data) exists
/// and `--overwrite` does not name the store.
pub fn marker_guard(
    overwrite: &[String],
    configmap: &str,
    marker: &Option<BTreeMap<String, String>>,
    store: &str,
) -> Option<String> {
    let m = marker.as_ref()?;
    if overwrites(overwrite, store) {
        return None;
    }
    Some(format!(
        "the migration already completed on this cluster at {} (ConfigMap {configmap}); \
         the new system may be live, so {store} is left alone. To overwrite it anyway, \
         pass --overwrite {store}",
        m.get("completed_at")
            .map(String::as_str)
            .unwrap_or("an unknown time")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn df_available_reads_the_data_line_and_parent_dir_is_the_staging_dir() {
        let out = "Filesystem 1B-blocks Used Available Capacity Mounted on\n\
                   overlay 1000 400 600 40% /\n";
        assert_eq!(df_available(out), Some(600));
        assert_eq!(df_available("df: /x: No such file or directory\n"), None);
        assert_eq!(parent_dir("/tmp/packagist_storage.tar.gz"), "/tmp");
        assert_eq!(parent_dir("archive.tar.gz"), "");
    }
}

/// A file on the node that runs the cluster (an artifact a `transfer` put there), and
/// the node's kubeconfig: fed into a pod by the node's own kubectl, at local speed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeFile {
    pub path: String,
    pub kubeconfig: String,
}

/// Read-only: the artifact `name` as a [`NodeFile`] when it is on this host, holds the
/// same bytes as `source` (the artifact it is a copy of), and the cluster is reached
/// through a kubeconfig on this host.
pub fn node_copy(
    ctx: &HostReader,
    k8s: &K8sTarget,
    name: Option<&str>,
    source: Option<&crate::journal::Artifact>,
) -> Result<Option<NodeFile>, ModuleError> {
    let (Some(name), Some(source)) = (name, source) else {
        return Ok(None);
    };
    let Ok(copy) = crate::module::artifact::find_artifact(ctx, name) else {
        return Ok(None);
    };
    if copy.host != ctx.host || copy.sha256 != source.sha256 || copy.size != source.size {
        return Ok(None);
    }
    Ok(k8s.node_kubeconfig(ctx)?.map(|kubeconfig| NodeFile {
        path: copy.path,
        kubeconfig,
    }))
}

/// On the node: `kubectl exec -i POD [-c C] -- ARGV < FILE` with the node's kubectl,
/// run so that it stops when ferry does: ferry holds the command's stdin open while it
/// waits, and its EOF (ferry gone, its connection lost) kills the kubectl, which would
/// otherwise go on reading the file into the pod beside a re-run's. Every half second
/// it prints `progress N`: how far kubectl has read the file (its stdin's offset in
/// `/proc/PID/fdinfo/0`), for the progress bar. The command's own stdout should be
/// quiet (psql `-o /dev/null`).
pub fn node_exec_from_file(
    node: &NodeFile,
    namespace: &str,
    pod: &str,
    container: Option<&str>,
    argv: &[String],
) -> Cmd {
    let mut kubectl = Cmd::new("kubectl")
        .arg("--kubeconfig")
        .arg(node.kubeconfig.as_str())
        .arg("-n")
        .arg(namespace)
        .args(["exec", "-i", pod]);
    if let Some(c) = container {
        kubectl = kubectl.args(["-c", c]);
    }
    let kubectl = kubectl
        .arg("--")
        .args(argv.iter().map(String::as_str))
        .op("<")
        .arg(node.path.as_str());
    Cmd::new("sh")
        .arg("-c")
        .arg(
            // An asynchronous list's stdin is /dev/null unless redirected: the
            // watchdog reads ferry's stdin through fd 3.
            "exec 3<&0\n\
             sh -c \"exec $1\" 3<&- & k=$!\n\
             { cat <&3 >/dev/null 2>&1; kill $k 2>/dev/null; } & w=$!\n\
             exec 3<&-\n\
             { while kill -0 $k 2>/dev/null; do\n\
                 p=$(sed -n 's/^pos:[[:space:]]*//p' /proc/$k/fdinfo/0 2>/dev/null)\n\
                 [ -n \"$p\" ] && echo \"progress $p\"\n\
                 sleep 0.5\n\
               done; } & m=$!\n\
             wait $k; rc=$?\n\
             kill $w $m 2>/dev/null\n\
             exit $rc",
        )
        .arg("ferry-node-exec")
        .arg(kubectl.to_shell())
}

/// The completed-migration marker a new host's preflight of this run read from its
/// cluster and handed over in the journal (memo `new_side_completed` of that task).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedOverMarker {
    pub host: String,
    pub marker: BTreeMap<String, String>,
}

/// The guard of a step that reads no cluster itself (a `transfer` to the new node):
/// [`marker_guard`] on the marker handed over in the journal, if any.
pub fn handed_over_guard(ctx: &HostReader, configmap: &str, store: &str) -> Option<String> {
    let memo: crate::module::memo::Memo<HandedOverMarker> =
        crate::module::memo::Memo::new("new_side_completed");
    let data = ctx.journal.snapshot();
    let done = data
        .hosts
        .iter()
        .flat_map(|(host, tasks)| tasks.iter().map(move |(task, r)| (host, task, r)))
        .find_map(|(host, task, r)| memo.read(host, task, r).ok().flatten())?;
    marker_guard(&ctx.overwrite, configmap, &Some(done.marker), store)
}
