//! Kubernetes access for the migration: a kube `Client` that reaches the new host's API
//! server through an SSH tunnel, and the few operations the migration needs, each
//! waiting by watch (not by polling) and each able to say which kubectl command an
//! operator would have typed for it.
//!
//! The tunnel: a listener on the laptop's 127.0.0.1:<random> whose every accepted
//! connection is carried to the API server's host:port through [`Transport::forward`].
//! TLS runs end to end between kube and the API server; the SSH side only sees bytes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Config};
use tokio::task::JoinHandle;

use crate::command::Cmd;
use crate::transport::Transport;

mod error;
mod exec;
mod tunnel;

pub use error::K8sError;
use error::{api_err, may_write, pod_argv_writes};
pub use exec::{drain, feed_stdin, finish};
use tunnel::open_tunnel;

/// Where the kubeconfig comes from.
#[derive(Debug, Clone)]
pub enum KubeconfigSource {
    /// A file on the node, read over SSH (with become): `/etc/kubernetes/admin.conf` on
    /// an embedded-cluster node. The API server is reached through the SSH tunnel.
    RemoteFile(String),
    /// Kubeconfig files on the laptop (an existing cluster), merged as kubectl merges the
    /// files of `$KUBECONFIG` (the first to set a value wins); none: as kubectl finds
    /// them (`$KUBECONFIG`, else `~/.kube/config`). Optionally a context of them. The API
    /// server is reached directly.
    Local {
        paths: Vec<std::path::PathBuf>,
        context: Option<String>,
    },
}

/// The kinds of workload the migration scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
}

impl WorkloadKind {
    /// The resource name kubectl uses (`deployment/ui`).
    pub fn kubectl_name(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "deployment",
            WorkloadKind::StatefulSet => "statefulset",
        }
    }
}

/// The pods of one workload: those matching its selector that it controls (a
/// StatefulSet directly, a Deployment through one of its ReplicaSets). A pod made by hand
/// with the same labels (`kubectl run debug -l app=redis`) matches the selector but is
/// not one of them, as `kubectl rollout status` does not count it either.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSet {
    pub kind: WorkloadKind,
    pub name: String,
    pub selector: String,
}

impl PodSet {
    /// Whether `pod` is one of this workload's; `replicasets` are the Deployment's own.
    fn owns(&self, pod: &Pod, replicasets: &std::collections::BTreeSet<String>) -> bool {
        let Some(owner) = controller_of(&pod.metadata) else {
            return false;
        };
        match self.kind {
            WorkloadKind::StatefulSet => owner.kind == "StatefulSet" && owner.name == self.name,
            WorkloadKind::Deployment => {
                owner.kind == "ReplicaSet" && replicasets.contains(&owner.name)
            }
        }
    }

    /// A pod whose controller is a ReplicaSet not in `replicasets` that could be one of
    /// this Deployment's (made since they were listed, by a rollout): list them again.
    fn may_own(&self, pod: &Pod, replicasets: &std::collections::BTreeSet<String>) -> bool {
        self.kind == WorkloadKind::Deployment
            && controller_of(&pod.metadata).is_some_and(|o| {
                o.kind == "ReplicaSet"
                    && !replicasets.contains(&o.name)
                    && o.name.starts_with(&format!("{}-", self.name))
            })
    }
}

fn controller_of(
    meta: &kube::api::ObjectMeta,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
}

/// What a wait on a workload's pods is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodsWanted {
    /// No pod left (not even terminating ones). Pods that ended (phase Failed or
    /// Succeeded: evicted, completed) run nothing and are not counted.
    Gone,
    /// Exactly `n` pods, all Running with every container ready, none terminating; ended
    /// pods are not counted, as a ReplicaSet does not count them.
    Ready(u32),
}

/// A connected cluster in one namespace. Dropping it closes the tunnel.
pub struct Cluster {
    client: Client,
    namespace: String,
    tunnel: Option<JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(t) = &self.tunnel {
            t.abort();
        }
    }
}

/// The kubectl command an operator would have typed, for the report and `-v`.
pub fn kubectl(namespace: &str, args: &[&str]) -> String {
    let mut c = Cmd::new("kubectl").arg("-n").arg(namespace);
    for a in args {
        c = c.arg(*a);
    }
    c.display()
}

/// `kubectl -n NS exec [-i] POD [-c CONTAINER] -- ARGV…`, for the report and `-v`: the
/// exec ferry runs, container included.
pub fn kubectl_exec(
    namespace: &str,
    pod: &str,
    container: Option<&str>,
    stdin: bool,
    argv: &[&str],
) -> String {
    let mut args = vec!["exec"];
    if stdin {
        args.push("-i");
    }
    args.push(pod);
    if let Some(c) = container {
        args.extend(["-c", c]);
    }
    args.push("--");
    args.extend_from_slice(argv);
    kubectl(namespace, &args)
}

/// Pauses between a watcher's attempts to reach a lost API: 200 ms doubling to 2 s,
/// jittered (backon's exponential backoff, as kube's own `DefaultBackoff`, which waits
/// up to 30 s: too long for an operator waiting for a tunnel to come back), without end
/// ([`Outage`] decides when to stop), from the start again once the API answers.
struct ReconnectBackoff {
    builder: backon::ExponentialBuilder,
    delays: backon::ExponentialBackoff,
}

impl ReconnectBackoff {
    fn new() -> Self {
        use backon::BackoffBuilder;
        let builder = backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(2))
            .with_jitter()
            .without_max_times();
        ReconnectBackoff {
            builder,
            delays: builder.build(),
        }
    }
}

impl Iterator for ReconnectBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        self.delays.next()
    }
}

impl kube::runtime::utils::Backoff for ReconnectBackoff {
    fn reset(&mut self) {
        use backon::BackoffBuilder;
        self.delays = self.builder.build();
    }
}

/// A watcher's error during a wait until `what`: the API's connection lost (the watcher
/// retries after its backoff; `Err` once [`Outage`] says it lasted too long), or an
/// answer that no retry changes (`Err` at once).
fn reconnecting(
    what: &str,
    e: &watcher::Error,
    outage: &mut Outage,
    lost: &mut Option<String>,
) -> Result<(), K8sError> {
    let transient = match e {
        watcher::Error::InitialListFailed(k)
        | watcher::Error::WatchStartFailed(k)
        | watcher::Error::WatchFailed(k) => is_transient(k),
        // An expired resourceVersion and the like: the watcher lists again.
        watcher::Error::WatchError(_) => true,
        watcher::Error::NoResourceVersion => false,
    };
    if !transient {
        return Err(K8sError::Watch {
            what: format!("the wait until {what}"),
            reason: e.to_string(),
        });
    }
    outage.still(what, e)?;
    tracing::warn!(
        "lost the Kubernetes API connection while waiting until {what}: {e}; reconnecting"
    );
    *lost = Some(e.to_string());
    Ok(())
}

/// The laptop's kubeconfig: `paths` merged, or as kubectl finds it; and how to name it in
/// messages.
fn read_local_kubeconfig(paths: &[std::path::PathBuf]) -> Result<(Kubeconfig, String), K8sError> {
    let invalid = |shown: &str, e: kube::config::KubeconfigError| K8sError::KubeconfigInvalid {
        path: shown.to_string(),
        reason: e.to_string(),
    };
    if paths.is_empty() {
        let shown = match std::env::var("KUBECONFIG") {
            Ok(v) if !v.is_empty() => format!("$KUBECONFIG ({v})"),
            _ => "~/.kube/config".to_string(),
        };
        return Kubeconfig::read()
            .map(|kc| (kc, shown.clone()))
            .map_err(|e| invalid(&shown, e));
    }
    let shown = paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let mut merged = Kubeconfig::default();
    for path in paths {
        let next =
            Kubeconfig::read_from(path).map_err(|e| invalid(&path.display().to_string(), e))?;
        merged = merged.merge(next).map_err(|e| invalid(&shown, e))?;
    }
    Ok((merged, shown))
}

impl Cluster {
    /// Connect using `source`; `namespace` defaults to the kubeconfig's, else `default`.
    /// `node` is the transport of the host that runs the API server (for `RemoteFile`).
    pub async fn connect(
        node: Arc<dyn Transport>,
        source: &KubeconfigSource,
        namespace: Option<&str>,
    ) -> Result<Cluster, K8sError> {
        crate::install_tls_provider();
        let (kubeconfig, path, context) = match source {
            KubeconfigSource::RemoteFile(path) => {
                let out = node
                    .exec(&Cmd::new("cat").arg(path.as_str()), None)
                    .await
                    .map_err(|e| K8sError::KubeconfigRead {
                        host: node.host().to_string(),
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                if !out.success() {
                    return Err(K8sError::KubeconfigRead {
                        host: node.host().to_string(),
                        path: path.clone(),
                        reason: out.stderr_str().trim().to_string(),
                    });
                }
                let kc = Kubeconfig::from_yaml(&out.stdout_str()).map_err(|e| {
                    K8sError::KubeconfigInvalid {
                        path: path.clone(),
                        reason: e.to_string(),
                    }
                })?;
                (kc, path.clone(), None)
            }
            KubeconfigSource::Local { paths, context } => {
                let (kc, shown) = read_local_kubeconfig(paths)?;
                (kc, shown, context.clone())
            }
        };
        let options = KubeConfigOptions {
            context,
            ..Default::default()
        };
        let mut config = Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|e| K8sError::KubeconfigInvalid {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let mut tunnel = None;
        if let KubeconfigSource::RemoteFile(_) = source {
            let host = config.cluster_url.host().unwrap_or("127.0.0.1").to_string();
            let port = config.cluster_url.port_u16().unwrap_or(443);
            let (local_port, handle) = open_tunnel(node.clone(), host.clone(), port).await?;
            // Keep verifying the server certificate against its real name.
            config.tls_server_name = Some(host.trim_matches(['[', ']']).to_string());
            config.cluster_url = format!("https://127.0.0.1:{local_port}")
                .parse()
                .map_err(|e| K8sError::Tunnel(format!("bad local URL: {e}")))?;
            tunnel = Some(handle);
        }
        config.connect_timeout = Some(Duration::from_secs(15));
        let namespace = namespace
            .map(str::to_string)
            .unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).map_err(api_err("build the client"))?;
        Ok(Cluster {
            client,
            namespace,
            tunnel,
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Object `name` of this namespace (`what`: the kind, as kubectl names it), or `None`.
    async fn get_opt<K>(&self, what: &str, name: &str) -> Result<Option<K>, K8sError>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        <K as kube::Resource>::DynamicType: Default,
    {
        self.api::<K>()
            .get_opt(name)
            .await
            .map_err(api_err(format!("read {what} {name}")))
    }

    /// The API server's version: (major, minor, gitVersion), minor without a `+` suffix
    /// (some distributions report `27+`).
    pub async fn server_version(&self) -> Result<(u32, u32, String), K8sError> {
        let info = self
            .client
            .apiserver_version()
            .await
            .map_err(api_err("read the server version"))?;
        let number = |s: &str| {
            s.trim_end_matches('+')
                .parse::<u32>()
                .map_err(|_| K8sError::Unreadable {
                    what: "version".into(),
                    reason: format!("{:?} is not a number ({})", s, info.git_version),
                })
        };
        Ok((
            number(&info.major)?,
            number(&info.minor)?,
            info.git_version.clone(),
        ))
    }

    /// Check the API answers and the namespace exists.
    pub async fn ping(&self) -> Result<(), K8sError> {
        let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(self.client.clone());
        match api
            .get_opt(&self.namespace)
            .await
            .map_err(api_err("read the namespace"))?
        {
            Some(_) => Ok(()),
            None => Err(K8sError::NotFound {
                kind: "namespace",
                name: self.namespace.clone(),
                namespace: self.namespace.clone(),
            }),
        }
    }

    /// Desired replicas and the pods of a workload.
    pub async fn workload(
        &self,
        kind: WorkloadKind,
        name: &str,
    ) -> Result<(u32, PodSet), K8sError> {
        let not_found = || K8sError::NotFound {
            kind: kind.kubectl_name(),
            name: name.to_string(),
            namespace: self.namespace.clone(),
        };
        let (replicas, labels) = match kind {
            WorkloadKind::Deployment => {
                let d: Deployment = self
                    .get_opt(kind.kubectl_name(), name)
                    .await?
                    .ok_or_else(not_found)?;
                let spec = d.spec.unwrap_or_default();
                (spec.replicas, spec.selector.match_labels)
            }
            WorkloadKind::StatefulSet => {
                let s: StatefulSet = self
                    .get_opt(kind.kubectl_name(), name)
                    .await?
                    .ok_or_else(not_found)?;
                let spec = s.spec.unwrap_or_default();
                (spec.replicas, spec.selector.match_labels)
            }
        };
        let selector = labels
            .unwrap_or_default()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let set = PodSet {
            kind,
            name: name.to_string(),
            selector,
        };
        Ok((replicas.unwrap_or(1).max(0) as u32, set))
    }

    /// Set a workload's replicas through the scale subresource.
    pub async fn scale(
        &self,
        kind: WorkloadKind,
        name: &str,
        replicas: u32,
    ) -> Result<(), K8sError> {
        may_write(|| format!("scaling {} {name}", kind.kubectl_name()))?;
        let patch = serde_json::json!({ "spec": { "replicas": replicas } });
        let pp = PatchParams::default();
        let action = format!("scale {} {name} to {replicas}", kind.kubectl_name());
        match kind {
            WorkloadKind::Deployment => self
                .api::<Deployment>()
                .patch_scale(name, &pp, &Patch::Merge(&patch))
                .await
                .map(|_| ())
                .map_err(api_err(action)),
            WorkloadKind::StatefulSet => self
                .api::<StatefulSet>()
                .patch_scale(name, &pp, &Patch::Merge(&patch))
                .await
                .map(|_| ())
                .map_err(api_err(action)),
        }
    }

    /// The workload's pods right now (ended ones included).
    pub async fn pods(&self, set: &PodSet) -> Result<Vec<Pod>, K8sError> {
        let what = || format!("list pods {}", set.selector);
        let replicasets = self.replicasets_of(set).await.map_err(api_err(what()))?;
        Ok(self
            .api::<Pod>()
            .list(&ListParams::default().labels(&set.selector))
            .await
            .map_err(api_err(what()))?
            .items
            .into_iter()
            .filter(|p| set.owns(p, &replicasets))
            .collect())
    }

    /// The names of a Deployment's own ReplicaSets (empty for a StatefulSet).
    async fn replicasets_of(
        &self,
        set: &PodSet,
    ) -> Result<std::collections::BTreeSet<String>, kube::Error> {
        if set.kind != WorkloadKind::Deployment {
            return Ok(Default::default());
        }
        let list = self
            .api::<k8s_openapi::api::apps::v1::ReplicaSet>()
            .list(&ListParams::default().labels(&set.selector))
            .await?;
        Ok(list
            .items
            .into_iter()
            .filter(|rs| {
                controller_of(&rs.metadata)
                    .is_some_and(|o| o.kind == "Deployment" && o.name == set.name)
            })
            .filter_map(|rs| rs.metadata.name)
            .collect())
    }

    /// Wait by watch until the pods matching `selector` are as `wanted`.
    ///
    /// An API that stays unreachable for [`API_OUTAGE_LIMIT`] fails the wait (see
    /// [`Outage`]).
    ///
    /// The watch survives a lost connection to the API (the SSH tunnel dropped, the API
    /// server restarted): it lists again (a fresh resourceVersion) and watches on, through
    /// a new tunnel connection, until `timeout`. A timeout that happened while the API was
    /// unreachable says so, with the last connection error.
    pub async fn wait_pods(
        &self,
        set: &PodSet,
        wanted: PodsWanted,
        timeout: Duration,
    ) -> Result<(), K8sError> {
        let selector = set.selector.as_str();
        let what = match wanted {
            PodsWanted::Gone => format!("pods {selector} are gone"),
            PodsWanted::Ready(n) => format!("{n} pod(s) {selector} are running and ready"),
        };
        let mut lost: Option<String> = None;
        let fut = async {
            let stream = watcher::watcher(
                self.api::<Pod>(),
                watcher::Config::default().labels(selector),
            )
            .backoff(ReconnectBackoff::new());
            futures::pin_mut!(stream);
            let mut outage = Outage::default();
            let mut pods: BTreeMap<String, Pod> = BTreeMap::new();
            // Some while the watcher (re)lists: the pods so far.
            let mut listing: Option<BTreeMap<String, Pod>> = None;
            // The Deployment's ReplicaSets, listed again after each (re)list and when a
            // pod names one not known yet (a rollout).
            let mut replicasets: Option<std::collections::BTreeSet<String>> = None;
            while let Some(item) = stream.next().await {
                match item {
                    Ok(event) => {
                        outage.over();
                        match event {
                            watcher::Event::Init => listing = Some(BTreeMap::new()),
                            watcher::Event::InitApply(p) => {
                                if let (Some(l), Some(n)) =
                                    (listing.as_mut(), p.metadata.name.clone())
                                {
                                    l.insert(n, p);
                                }
                            }
                            watcher::Event::InitDone => {
                                pods = listing.take().unwrap_or_default();
                                replicasets = None;
                            }
                            watcher::Event::Apply(p) => {
                                if let Some(n) = p.metadata.name.clone() {
                                    pods.insert(n, p);
                                }
                            }
                            watcher::Event::Delete(p) => {
                                if let Some(n) = &p.metadata.name {
                                    pods.remove(n);
                                }
                            }
                        }
                    }
                    Err(e) => {
                        reconnecting(&what, &e, &mut outage, &mut lost)?;
                        continue;
                    }
                }
                if listing.is_some() {
                    continue;
                }
                let stale = match &replicasets {
                    None => true,
                    Some(rs) => pods.values().any(|p| set.may_own(p, rs)),
                };
                if stale {
                    match self.replicasets_of(set).await {
                        Ok(rs) => replicasets = Some(rs),
                        Err(e) if is_transient(&e) => {
                            outage.still(&what, &e)?;
                            lost = Some(e.to_string());
                            continue;
                        }
                        Err(e) => {
                            return Err(api_err(format!("list the replicasets of {}", set.name))(e))
                        }
                    }
                }
                let none = std::collections::BTreeSet::new();
                let rs = replicasets.as_ref().unwrap_or(&none);
                let owned: Vec<&Pod> = pods.values().filter(|p| set.owns(p, rs)).collect();
                if pods_match(owned.iter().copied(), wanted) {
                    return Ok(());
                }
                crate::report::status::set(&pods_status(set, owned.into_iter(), wanted));
            }
            Err(K8sError::Watch {
                what: format!("pods {selector}"),
                reason: "the stream ended".into(),
            })
        };
        let result = tokio::time::timeout(timeout, fut).await;
        match result {
            Ok(r) => r,
            Err(_) => Err(K8sError::Timeout {
                what: match &lost {
                    Some(e) => format!(
                        "{what} (the Kubernetes API connection through the tunnel was lost \
                         on the way; last error: {e})"
                    ),
                    None => what,
                },
                secs: timeout.as_secs(),
            }),
        }
    }

    /// `spec.volumeName` of a PVC, or `None` when the PVC does not exist (or is unbound).
    pub async fn pvc(&self, name: &str) -> Result<Option<PersistentVolumeClaim>, K8sError> {
        self.get_opt("pvc", name).await
    }

    /// A PV (cluster-scoped).
    pub async fn pv(&self, name: &str) -> Result<Option<PersistentVolume>, K8sError> {
        Api::<PersistentVolume>::all(self.client.clone())
            .get_opt(name)
            .await
            .map_err(api_err(format!("read pv {name}")))
    }

    /// Delete a PVC and wait until both it and its bound PV are gone: the PV only goes
    /// once the provisioner has cleaned its volume up (OpenEBS runs a helper pod, up to
    /// 120 s), and a cleanup that fails (the PV turns Failed) is an error at once.
    pub async fn delete_pvc_and_wait(&self, name: &str, timeout: Duration) -> Result<(), K8sError> {
        may_write(|| format!("deleting pvc {name}"))?;
        let started = tokio::time::Instant::now();
        let pv_name = self
            .pvc(name)
            .await?
            .and_then(|p| p.spec.and_then(|s| s.volume_name));
        match self
            .api::<PersistentVolumeClaim>()
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(api_err(format!("delete pvc {name}"))(e)),
        }
        let deadline = started + timeout;
        let none = |_: &PersistentVolumeClaim| None;
        let pvc_what = format!("pvc {name}");
        self.wait_gone(self.api(), &pvc_what, name, started, deadline, none)
            .await?;
        if let Some(pv) = pv_name {
            let api = Api::<PersistentVolume>::all(self.client.clone());
            let failed = |v: &PersistentVolume| {
                let status = v.status.as_ref()?;
                (status.phase.as_deref() == Some("Failed")).then(|| K8sError::PvCleanupFailed {
                    pv: pv.clone(),
                    pvc: name.to_string(),
                    message: status
                        .message
                        .clone()
                        .unwrap_or_else(|| "no message".into()),
                    path: v
                        .spec
                        .as_ref()
                        .and_then(|s| s.local.as_ref().map(|l| format!(" {}", l.path)))
                        .unwrap_or_default(),
                    elapsed_secs: started.elapsed().as_secs(),
                })
            };
            let what = format!("pv {pv} (the volume of pvc {name}, cleaned up by its provisioner)");
            self.wait_gone(api, &what, &pv, started, deadline, failed)
                .await?;
        }
        Ok(())
    }

    /// Wait by watch until object `name` is gone, or `failed` says it never will be. A
    /// wait that lasts says so every 15 s; times are counted from `started` (when the
    /// deletion began), so a timeout gives the whole time waited.
    async fn wait_gone<K>(
        &self,
        api: Api<K>,
        what: &str,
        name: &str,
        started: tokio::time::Instant,
        deadline: tokio::time::Instant,
        failed: impl Fn(&K) -> Option<K8sError>,
    ) -> Result<(), K8sError>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    {
        let every = Duration::from_secs(15);
        let mut progress = tokio::time::interval_at(started + every, every);
        let deleted = format!("{what} is deleted");
        // A lost API connection (the tunnel dropped, the API server restarted): the
        // watcher lists and watches again through a new tunnel connection.
        let fut = async {
            let stream = watcher::watcher(
                api,
                watcher::Config::default().fields(&format!("metadata.name={name}")),
            )
            .backoff(ReconnectBackoff::new());
            futures::pin_mut!(stream);
            let mut outage = Outage::default();
            let mut lost = None;
            let mut listed: Option<bool> = None;
            crate::report::status::set(&format!("waiting until {deleted}"));
            loop {
                let item = tokio::select! {
                    item = stream.next() => item,
                    _ = progress.tick() => {
                        tracing::info!(
                            "still waiting until {deleted} ({}s)",
                            started.elapsed().as_secs()
                        );
                        crate::report::status::set(&format!(
                            "waiting until {deleted} ({} so far)",
                            crate::report::human_ms(started.elapsed().as_millis() as u64)
                        ));
                        continue;
                    }
                };
                let Some(item) = item else {
                    return Err(K8sError::Watch {
                        what: name.to_string(),
                        reason: "the stream ended".into(),
                    });
                };
                let event = match item {
                    Ok(e) => {
                        outage.over();
                        e
                    }
                    Err(e) => {
                        reconnecting(&deleted, &e, &mut outage, &mut lost)?;
                        continue;
                    }
                };
                match event {
                    watcher::Event::Init => listed = Some(false),
                    watcher::Event::InitApply(o) | watcher::Event::Apply(o) => {
                        if let Some(e) = failed(&o) {
                            return Err(e);
                        }
                        if listed.is_some() {
                            listed = Some(true);
                        }
                    }
                    // Listed and not there: gone.
                    watcher::Event::InitDone if listed != Some(true) => return Ok(()),
                    watcher::Event::InitDone => listed = None,
                    watcher::Event::Delete(_) => return Ok(()),
                }
            }
        };
        tokio::time::timeout_at(deadline, fut)
            .await
            .map_err(|_| K8sError::Timeout {
                what: deleted.clone(),
                secs: started.elapsed().as_secs(),
            })?
    }

    /// A deployment, or `None`.
    pub async fn deployment(&self, name: &str) -> Result<Option<Deployment>, K8sError> {
        self.get_opt("deployment", name).await
    }

    /// A Secret's data (decoded bytes), or `None`. The values are secrets: callers keep
    /// them out of messages, the report and the journal.
    pub async fn secret_data(
        &self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, Vec<u8>>>, K8sError> {
        Ok(self
            .get_opt::<k8s_openapi::api::core::v1::Secret>("secret", name)
            .await?
            .map(|s| {
                s.data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect()
            }))
    }

    /// A ConfigMap's data, or `None`.
    pub async fn configmap(
        &self,
        name: &str,
    ) -> Result<Option<BTreeMap<String, String>>, K8sError> {
        Ok(self
            .get_opt::<ConfigMap>("configmap", name)
            .await?
            .map(|c| c.data.unwrap_or_default()))
    }

    /// Create or replace a ConfigMap's data.
    pub async fn put_configmap(
        &self,
        name: &str,
        data: BTreeMap<String, String>,
    ) -> Result<(), K8sError> {
        may_write(|| format!("writing configmap {name}"))?;
        let api = self.api::<ConfigMap>();
        let cm = ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_string()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    "ferry".to_string(),
                )])),
                ..Default::default()
            },
            data: Some(data.clone()),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &cm).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => api
                .patch(
                    name,
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({ "data": data })),
                )
                .await
                .map(|_| ())
                .map_err(api_err(format!("update configmap {name}"))),
            Err(e) => Err(api_err(format!("create configmap {name}"))(e)),
        }
    }
}

/// How long the Kubernetes API may stay unreachable in the middle of a wait before the
/// wait gives up. A dropped tunnel or a restarting API server is back within seconds; a
/// laptop whose link is gone is not, and waiting out a wait's own timeout (minutes)
/// would hide that the run cannot go on. A re-run picks the wait up again.
pub const API_OUTAGE_LIMIT: Duration = Duration::from_secs(60);

/// Since when a wait's watch has failed without a success in between.
#[derive(Default)]
struct Outage {
    since: Option<tokio::time::Instant>,
}

impl Outage {
    /// A watch worked again: the outage is over.
    fn over(&mut self) {
        self.since = None;
    }

    /// Another failure: `Err` once the API has been unreachable for the limit.
    fn still(&mut self, what: &str, e: &dyn std::fmt::Display) -> Result<(), K8sError> {
        let since = *self.since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() < API_OUTAGE_LIMIT {
            return Ok(());
        }
        Err(K8sError::ApiLost {
            what: what.to_string(),
            secs: since.elapsed().as_secs(),
            last: e.to_string(),
        })
    }
}

/// A failure of the connection to the API (worth reconnecting), not an answer of it.
fn is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        kube::Error::Api(s) => s.code >= 500,
        _ => false,
    }
}

/// What a pod wait waits for, for the task's live line: "waiting for deployment/ui: 0/1
/// ready", "waiting until the pods of statefulset/postgres are gone: 1 left".
fn pods_status<'a>(
    set: &PodSet,
    pods: impl Iterator<Item = &'a Pod>,
    wanted: PodsWanted,
) -> String {
    let live: Vec<&Pod> = pods.filter(|p| !pod_ended(p)).collect();
    let workload = format!("{}/{}", set.kind.kubectl_name(), set.name);
    match wanted {
        PodsWanted::Gone => format!(
            "waiting until the pods of {workload} are gone: {} left",
            live.len()
        ),
        PodsWanted::Ready(n) => format!(
            "waiting for {workload}: {}/{n} ready",
            live.iter().filter(|p| pod_ready(p)).count()
        ),
    }
}

fn pods_match<'a>(pods: impl Iterator<Item = &'a Pod>, wanted: PodsWanted) -> bool {
    let pods: Vec<&Pod> = pods.filter(|p| !pod_ended(p)).collect();
    match wanted {
        PodsWanted::Gone => pods.is_empty(),
        PodsWanted::Ready(n) => pods.len() == n as usize && pods.iter().all(|p| pod_ready(p)),
    }
}

/// Phase Failed or Succeeded: the pod ended (evicted, completed, its container exited
/// under `restartPolicy: Never`); it runs nothing, stays until deleted, and no controller
/// counts it as a replica.
pub fn pod_ended(p: &Pod) -> bool {
    matches!(
        p.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Failed") | Some("Succeeded")
    )
}

/// Running, not terminating, and every container ready.
pub fn pod_ready(p: &Pod) -> bool {
    if p.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let Some(status) = &p.status else {
        return false;
    };
    if status.phase.as_deref() != Some("Running") {
        return false;
    }
    match &status.container_statuses {
        Some(cs) if !cs.is_empty() => cs.iter().all(|c| c.ready),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
