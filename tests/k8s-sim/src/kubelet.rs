//! The kubelet: runs the pods of the store as real processes, reports their status, runs exec
//! readiness probes, restarts exited containers, and tears pods down on deletion.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::nsexec::{self, Mount, NamespaceFiles, RunAs};
use crate::ops::{Config, CONFIGMAPS, PODS, PVCS, PVS};
use crate::store::{is_deleting, meta_str, name_of, now_rfc3339, Store};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const RESTART_BACKOFF: Duration = Duration::from_secs(1);
const PROBE_INTERVAL: Duration = Duration::from_millis(500);

enum Message {
    Exited {
        uid: String,
        container: String,
        pid: i32,
        code: i32,
    },
    Probe {
        uid: String,
        container: String,
        pid: i32,
        ok: bool,
    },
}

struct ContainerRt {
    name: String,
    spec: Value,
    argv: Vec<String>,
    env: Vec<(String, String)>,
    workdir: PathBuf,
    mounts: Vec<Mount>,
    pid: Option<i32>,
    exited_flag: Option<Arc<AtomicBool>>,
    started_at: Option<String>,
    restart_count: u32,
    restart_at: Option<Instant>,
    last_exit: Option<(i32, String)>,
    probe_ok: bool,
    probe_running: bool,
    next_probe: Instant,
    log_path: PathBuf,
    /// `securityContext.runAsUser`/`runAsGroup` (the container's over the pod's).
    user: Option<RunAs>,
}

struct Termination {
    started: Instant,
    deadline: Instant,
    killed: bool,
}

struct PodRt {
    namespace: String,
    name: String,
    uid: String,
    sandbox_pid: Option<i32>,
    containers: Vec<ContainerRt>,
    started: Instant,
    start_time: String,
    running: bool,
    pod_ip: String,
    groups: HashSet<i32>,
    exec_groups: HashSet<i32>,
    termination: Option<Termination>,
    conditions: HashMap<&'static str, (bool, String)>,
    last_status: Value,
    /// `spec.restartPolicy`: Always (default), OnFailure or Never.
    restart_policy: String,
    /// Set once the pod has ended (phase Failed or Succeeded): its processes are gone and
    /// nothing restarts; the object stays until it is deleted, as on a real node.
    ended: Option<Ended>,
}

/// How a pod ended.
struct Ended {
    phase: &'static str,
    /// `status.reason` (`Evicted`), when the kubelet ended it.
    reason: Option<&'static str>,
    message: Option<String>,
}

#[derive(Default)]
struct State {
    pods: HashMap<String, PodRt>,
    /// Deleted pods that never ran: uid → when the deletion was first seen.
    deleting_unstarted: HashMap<String, Instant>,
    /// Start failures already logged, so the log is not flooded.
    reported: HashSet<String>,
}

/// What exec needs to run a command in a container.
pub struct ExecTarget {
    pub uid: String,
    pub pid: i32,
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
    /// Who the exec runs as: the container's user, as on a real node.
    pub user: Option<RunAs>,
}

pub struct Kubelet {
    config: Config,
    store: Arc<Store>,
    state: Mutex<State>,
    tx: mpsc::UnboundedSender<Message>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<Message>>>,
    /// Set by [`Kubelet::shutdown`]: no pod starts any more (a pod started while the
    /// others are being stopped would outlive the simulator).
    stopping: AtomicBool,
}

impl Kubelet {
    pub fn new(config: Config, store: Arc<Store>) -> Arc<Kubelet> {
        let (tx, rx) = mpsc::unbounded_channel();
        Arc::new(Kubelet {
            config,
            store,
            state: Mutex::new(State::default()),
            tx,
            rx: Mutex::new(Some(rx)),
            stopping: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn run(self: Arc<Self>) {
        let receiver = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(mut receiver) = receiver else {
            return;
        };
        let mut changes = self.store.subscribe_changes();
        loop {
            self.sync();
            tokio::select! {
                Some(message) = receiver.recv() => self.on_message(message),
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    fn on_message(&self, message: Message) {
        let mut state = self.lock();
        match message {
            Message::Exited {
                uid,
                container,
                pid,
                code,
            } => {
                let Some(pod) = state.pods.get_mut(&uid) else {
                    return;
                };
                let terminating = pod.termination.is_some();
                let Some(c) = pod
                    .containers
                    .iter_mut()
                    .find(|c| c.name == container && c.pid == Some(pid))
                else {
                    return;
                };
                c.pid = None;
                c.exited_flag = None;
                c.probe_ok = false;
                c.last_exit = Some((code, now_rfc3339()));
                let restarts = match pod.restart_policy.as_str() {
                    "Never" => false,
                    "OnFailure" => code != 0,
                    _ => true,
                };
                if !terminating && restarts {
                    tracing::warn!(
                        "{}/{} container {container} exited with {code}; restarting",
                        pod.namespace,
                        pod.name
                    );
                    c.restart_count += 1;
                    c.restart_at = Some(Instant::now() + RESTART_BACKOFF);
                } else if !terminating {
                    tracing::info!(
                        "{}/{} container {container} exited with {code} (restartPolicy {})",
                        pod.namespace,
                        pod.name,
                        pod.restart_policy
                    );
                }
            }
            Message::Probe {
                uid,
                container,
                pid,
                ok,
            } => {
                let Some(pod) = state.pods.get_mut(&uid) else {
                    return;
                };
                if let Some(c) = pod
                    .containers
                    .iter_mut()
                    .find(|c| c.name == container && c.pid == Some(pid))
                {
                    c.probe_running = false;
                    c.probe_ok = ok;
                    c.next_probe = Instant::now() + PROBE_INTERVAL;
                }
            }
        }
    }

    fn sync(&self) {
        let (pods, _) = self.store.list(PODS, None);
        let mut state = self.lock();
        let now = Instant::now();
        let by_uid: HashMap<&str, &Value> = pods.iter().map(|p| (meta_str(p, "uid"), p)).collect();

        for pod in &pods {
            let uid = meta_str(pod, "uid");
            let node = pod["spec"]["nodeName"].as_str().unwrap_or("");
            if !node.is_empty() && node != self.config.node_name {
                continue;
            }
            if state.pods.contains_key(uid) {
                continue;
            }
            if self.stopping.load(Ordering::SeqCst) {
                continue;
            }
            if is_deleting(pod) {
                let seen = *state
                    .deleting_unstarted
                    .entry(uid.to_string())
                    .or_insert(now);
                if now.duration_since(seen) >= self.config.grace {
                    self.remove_pod_object(pod);
                    state.deleting_unstarted.remove(uid);
                }
                continue;
            }
            match self.start_pod(pod) {
                Ok(Some(rt)) => {
                    state.reported.remove(uid);
                    tracing::info!("started pod {}/{}", rt.namespace, rt.name);
                    state.pods.insert(uid.to_string(), rt);
                }
                Ok(None) => {}
                Err(error) => {
                    if state.reported.insert(uid.to_string()) {
                        tracing::warn!(
                            "cannot start pod {}/{}: {error:#}",
                            meta_str(pod, "namespace"),
                            name_of(pod)
                        );
                    }
                }
            }
        }

        let mut finished = Vec::new();
        for (uid, rt) in state.pods.iter_mut() {
            let object = by_uid.get(uid.as_str()).copied();
            match object {
                Some(pod) if !is_deleting(pod) => {
                    self.end_if_done(rt);
                    if rt.ended.is_none() {
                        self.restart_and_probe(rt, now);
                    }
                    self.report_status(rt, pod);
                }
                _ => {
                    if self.terminate(rt, object, now) {
                        finished.push(uid.clone());
                    }
                }
            }
        }
        for uid in finished {
            unmount_memory_volumes(&self.pod_dir(&uid));
            if let Some(rt) = state.pods.remove(&uid) {
                if let Some(pod) = by_uid.get(uid.as_str()) {
                    self.remove_pod_object(pod);
                }
                tracing::info!("pod {}/{} is gone", rt.namespace, rt.name);
            }
        }
        let live: HashSet<&str> = by_uid.keys().copied().collect();
        state
            .deleting_unstarted
            .retain(|uid, _| live.contains(uid.as_str()));
    }

    fn remove_pod_object(&self, pod: &Value) {
        let ns = meta_str(pod, "namespace");
        let name = name_of(pod);
        if let Some(current) = self.store.get(PODS, ns, name) {
            if meta_str(&current, "uid") == meta_str(pod, "uid") {
                self.store.remove(PODS, ns, name);
            }
        }
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.config.state_dir.join("pods").join(uid)
    }

    /// Resolve the pod's volumes to node directories; None while a claim is not bound yet.
    fn resolve_volumes(
        &self,
        pod: &Value,
        dir: &Path,
    ) -> anyhow::Result<Option<HashMap<String, PathBuf>>> {
        let ns = meta_str(pod, "namespace");
        let mut volumes = HashMap::new();
        for volume in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let name = volume["name"].as_str().unwrap_or("").to_string();
            let path = if let Some(claim) = volume["persistentVolumeClaim"]["claimName"].as_str() {
                let Some(pvc) = self.store.get(PVCS, ns, claim) else {
                    return Ok(None);
                };
                let Some(pv_name) = pvc["spec"]["volumeName"].as_str() else {
                    return Ok(None);
                };
                if is_deleting(&pvc) {
                    return Ok(None);
                }
                let Some(pv) = self.store.get(PVS, "", pv_name) else {
                    return Ok(None);
                };
                let path = pv["spec"]["local"]["path"]
                    .as_str()
                    .or_else(|| pv["spec"]["hostPath"]["path"].as_str())
                    .ok_or_else(|| anyhow!("PV {pv_name} has no local path"))?;
                let path = PathBuf::from(path);
                if !path.is_dir() {
                    return Ok(None);
                }
                path
            } else if let Some(host_path) = volume["hostPath"]["path"].as_str() {
                let path = self.map_host_path(host_path);
                let kind = volume["hostPath"]["type"].as_str().unwrap_or("");
                if !path.exists() {
                    if kind == "DirectoryOrCreate" {
                        std::fs::create_dir_all(&path)
                            .with_context(|| format!("creating {}", path.display()))?;
                    } else {
                        bail!("hostPath {host_path} does not exist");
                    }
                }
                path
            } else if volume["emptyDir"].is_object() {
                let path = dir.join("volumes").join(&name);
                std::fs::create_dir_all(&path)?;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))?;
                // `medium: Memory` is a tmpfs, as the kubelet mounts it, sized by
                // `sizeLimit` (a write beyond it gets ENOSPC).
                if volume["emptyDir"]["medium"].as_str() == Some("Memory") {
                    let size = volume["emptyDir"]["sizeLimit"]
                        .as_str()
                        .map(parse_quantity)
                        .transpose()?;
                    mount_memory_volume(&path, size)
                        .with_context(|| format!("volume {name}: mounting its tmpfs"))?;
                }
                path
            } else if let Some(cm_name) = volume["configMap"]["name"].as_str() {
                let cm = self
                    .store
                    .get(CONFIGMAPS, ns, cm_name)
                    .ok_or_else(|| anyhow!("configmap {cm_name} not found"))?;
                let path = dir.join("volumes").join(&name);
                std::fs::create_dir_all(&path)?;
                for (key, value) in cm["data"].as_object().into_iter().flatten() {
                    std::fs::write(path.join(key), value.as_str().unwrap_or(""))?;
                }
                path
            } else if let Some(secret_name) = volume["secret"]["secretName"].as_str() {
                let secret = self
                    .store
                    .get(
                        crate::resources::by_key("secrets").unwrap_or(CONFIGMAPS),
                        ns,
                        secret_name,
                    )
                    .ok_or_else(|| anyhow!("secret {secret_name} not found"))?;
                let path = dir.join("volumes").join(&name);
                std::fs::create_dir_all(&path)?;
                for (key, value) in secret["data"].as_object().into_iter().flatten() {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(value.as_str().unwrap_or(""))
                        .unwrap_or_default();
                    std::fs::write(path.join(key), bytes)?;
                }
                path
            } else {
                bail!("volume {name}: only persistentVolumeClaim, hostPath, emptyDir, configMap and secret are supported");
            };
            volumes.insert(name, path);
        }
        Ok(Some(volumes))
    }

    /// `/opt/ferry-src` on the node is the repository; outside the testbed it is `--src-root`.
    fn map_host_path(&self, host_path: &str) -> PathBuf {
        match Path::new(host_path).strip_prefix("/opt/ferry-src") {
            Ok(rest) => self.config.src_root.join(rest),
            Err(_) => PathBuf::from(host_path),
        }
    }

    fn container_env(&self, pod: &Value, container: &Value, pod_ip: &str) -> Vec<(String, String)> {
        let ns = meta_str(pod, "namespace");
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), DEFAULT_PATH.into()),
            ("HOSTNAME".into(), name_of(pod).into()),
            ("HOME".into(), "/root".into()),
        ];
        for var in container["env"].as_array().into_iter().flatten() {
            let name = var["name"].as_str().unwrap_or("").to_string();
            let value = if let Some(v) = var["value"].as_str() {
                v.to_string()
            } else if let Some(field) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                match field {
                    "metadata.name" => name_of(pod).to_string(),
                    "metadata.namespace" => ns.to_string(),
                    "spec.nodeName" => self.config.node_name.clone(),
                    "status.podIP" => pod_ip.to_string(),
                    _ => String::new(),
                }
            } else if let Some(secret_ref) = var["valueFrom"]["secretKeyRef"].as_object() {
                let secret = self.store.get(
                    crate::resources::by_key("secrets").unwrap_or(CONFIGMAPS),
                    ns,
                    secret_ref
                        .get("name")
                        .and_then(|n| n.as_str())
                        .unwrap_or(""),
                );
                let key = secret_ref.get("key").and_then(|k| k.as_str()).unwrap_or("");
                secret
                    .and_then(|s| s["data"][key].as_str().map(String::from))
                    .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
                    .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                    .unwrap_or_default()
            } else if let Some(cm_ref) = var["valueFrom"]["configMapKeyRef"].as_object() {
                let cm = self.store.get(
                    CONFIGMAPS,
                    ns,
                    cm_ref.get("name").and_then(|n| n.as_str()).unwrap_or(""),
                );
                let key = cm_ref.get("key").and_then(|k| k.as_str()).unwrap_or("");
                cm.and_then(|c| c["data"][key].as_str().map(String::from))
                    .unwrap_or_default()
            } else {
                String::new()
            };
            env.retain(|(k, _)| *k != name);
            env.push((name, value));
        }
        env
    }

    fn start_pod(&self, pod: &Value) -> anyhow::Result<Option<PodRt>> {
        let uid = meta_str(pod, "uid").to_string();
        let dir = self.pod_dir(&uid);
        let Some(volumes) = self.resolve_volumes(pod, &dir)? else {
            return Ok(None);
        };
        // hostNetwork pods share the node's network (and name), as on a real node: the
        // simulator has no pod network, so workloads that must talk to each other or be
        // reached on the node's loopback (the blob store) use it.
        let host_network = pod["spec"]["hostNetwork"].as_bool().unwrap_or(false);
        let pod_ip = if host_network {
            "127.0.0.1".to_string()
        } else {
            format!("10.42.0.{}", fastrand::u8(2..250))
        };
        let mut containers = Vec::new();
        for spec in pod["spec"]["containers"].as_array().into_iter().flatten() {
            let name = spec["name"].as_str().unwrap_or("").to_string();
            let mut argv: Vec<String> = spec["command"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(String::from))
                .collect();
            argv.extend(
                spec["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str().map(String::from)),
            );
            if argv.is_empty() {
                bail!("container {name}: the simulator has no images; give command/args");
            }
            let container_dir = dir.join("containers").join(&name);
            let tmp = container_dir.join("tmp");
            std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777))?;
            let mut mounts = vec![Mount {
                source: tmp,
                target: PathBuf::from("/tmp"),
                read_only: false,
            }];
            for vm in spec["volumeMounts"].as_array().into_iter().flatten() {
                let volume = vm["name"].as_str().unwrap_or("");
                let mut source = volumes
                    .get(volume)
                    .cloned()
                    .ok_or_else(|| anyhow!("container {name}: no volume named {volume}"))?;
                if let Some(sub) = vm["subPath"].as_str().filter(|s| !s.is_empty()) {
                    source = source.join(sub);
                    std::fs::create_dir_all(&source)?;
                }
                let target = PathBuf::from(vm["mountPath"].as_str().unwrap_or(""));
                if !target.is_absolute() {
                    bail!("container {name}: mountPath must be absolute");
                }
                mounts.retain(|m| m.target != target);
                mounts.push(Mount {
                    source,
                    target,
                    read_only: vm["readOnly"].as_bool().unwrap_or(false),
                });
            }
            // Parents before children, so a nested mount is not hidden by its parent's.
            mounts.sort_by_key(|m| m.target.components().count());
            for mount in &mounts {
                if !mount.target.exists() {
                    std::fs::create_dir_all(&mount.target).with_context(|| {
                        format!("creating mount point {}", mount.target.display())
                    })?;
                }
            }
            let workdir = PathBuf::from(spec["workingDir"].as_str().unwrap_or("/"));
            containers.push(ContainerRt {
                name: name.clone(),
                env: self.container_env(pod, spec, &pod_ip),
                spec: spec.clone(),
                argv,
                workdir,
                mounts,
                pid: None,
                exited_flag: None,
                started_at: None,
                restart_count: 0,
                restart_at: None,
                last_exit: None,
                probe_ok: false,
                probe_running: false,
                next_probe: Instant::now(),
                log_path: container_dir.join("log"),
                user: run_as(&pod["spec"]["securityContext"], &spec["securityContext"]),
            });
        }
        let sandbox = nsexec::sandbox_command(name_of(pod), host_network)?
            .kill_on_drop(false)
            .spawn()
            .context("starting the pod sandbox")?;
        let sandbox_pid = sandbox.id().map(|p| p as i32);
        tokio::spawn(async move {
            let mut sandbox = sandbox;
            let _ = sandbox.wait().await;
        });
        let mut rt = PodRt {
            namespace: meta_str(pod, "namespace").to_string(),
            name: name_of(pod).to_string(),
            uid,
            sandbox_pid,
            containers,
            started: Instant::now(),
            start_time: now_rfc3339(),
            running: false,
            pod_ip,
            groups: HashSet::new(),
            exec_groups: HashSet::new(),
            termination: None,
            conditions: HashMap::new(),
            last_status: Value::Null,
            restart_policy: pod["spec"]["restartPolicy"]
                .as_str()
                .unwrap_or("Always")
                .to_string(),
            ended: None,
        };
        for index in 0..rt.containers.len() {
            self.start_container(&mut rt, index);
        }
        Ok(Some(rt))
    }

    fn start_container(&self, rt: &mut PodRt, index: usize) {
        let Some(sandbox_pid) = rt.sandbox_pid else {
            return;
        };
        let uid = rt.uid.clone();
        let c = &mut rt.containers[index];
        c.restart_at = None;
        let result = (|| -> anyhow::Result<tokio::process::Child> {
            let namespaces = NamespaceFiles::of(sandbox_pid, &["net", "uts"])?;
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&c.log_path)?;
            let mut command = nsexec::container_command(
                &c.argv,
                &c.env,
                &c.workdir,
                &namespaces,
                &c.mounts,
                c.user,
            )?;
            command
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(false);
            let child = command
                .spawn()
                .with_context(|| format!("starting {:?}", c.argv))?;
            drop(namespaces);
            Ok(child)
        })();
        match result {
            Ok(mut child) => {
                let pid = child.id().map(|p| p as i32).unwrap_or(0);
                c.pid = Some(pid);
                c.started_at = Some(now_rfc3339());
                let flag = Arc::new(AtomicBool::new(false));
                c.exited_flag = Some(flag.clone());
                rt.groups.insert(pid);
                let tx = self.tx.clone();
                let container = c.name.clone();
                tokio::spawn(async move {
                    let code = match child.wait().await {
                        Ok(status) => exit_code(status),
                        Err(_) => 128,
                    };
                    flag.store(true, Ordering::SeqCst);
                    let _ = tx.send(Message::Exited {
                        uid,
                        container,
                        pid,
                        code,
                    });
                });
            }
            Err(error) => {
                tracing::warn!(
                    "{}/{}: container {} failed to start: {error:#}",
                    rt.namespace,
                    rt.name,
                    c.name
                );
                c.last_exit = Some((128, now_rfc3339()));
                c.restart_count += 1;
                c.restart_at = Some(Instant::now() + RESTART_BACKOFF * 3);
            }
        }
    }

    /// End the pod when it is done: every container exited and none will restart (its
    /// restartPolicy says so), or the evict switch names it. An ended pod keeps its
    /// object (phase Failed or Succeeded) until someone deletes it.
    fn end_if_done(&self, rt: &mut PodRt) {
        if rt.ended.is_some() {
            return;
        }
        if self.take_evict_switch(&rt.namespace, &rt.name) {
            tracing::warn!("evicting pod {}/{}", rt.namespace, rt.name);
            for c in &mut rt.containers {
                c.restart_at = None;
                if c.pid.take().is_some() {
                    c.last_exit = Some((137, now_rfc3339()));
                }
                c.exited_flag = None;
            }
            self.kill_processes(rt);
            rt.ended = Some(Ended {
                phase: "Failed",
                reason: Some("Evicted"),
                message: Some(
                    "The node was low on resource: memory. Threshold quantity: 100Mi, \
                     available: 51200Ki. "
                        .to_string(),
                ),
            });
            return;
        }
        let all_done = !rt.containers.is_empty()
            && rt
                .containers
                .iter()
                .all(|c| c.pid.is_none() && c.restart_at.is_none() && c.last_exit.is_some());
        if !all_done {
            return;
        }
        let failed = rt
            .containers
            .iter()
            .any(|c| c.last_exit.as_ref().is_some_and(|(code, _)| *code != 0));
        tracing::info!(
            "pod {}/{} ended: {}",
            rt.namespace,
            rt.name,
            if failed { "Failed" } else { "Succeeded" }
        );
        self.kill_processes(rt);
        rt.ended = Some(Ended {
            phase: if failed { "Failed" } else { "Succeeded" },
            reason: None,
            message: None,
        });
    }

    /// Kill what is left of an ended pod: its containers' and execs' process groups and
    /// its sandbox (a real kubelet tears the sandbox down too).
    fn kill_processes(&self, rt: &mut PodRt) {
        for pgid in rt.groups.iter().chain(rt.exec_groups.iter()) {
            nsexec::kill_group(*pgid, libc::SIGKILL);
        }
        if let Some(pid) = rt.sandbox_pid.take() {
            nsexec::kill_pid(pid, libc::SIGKILL);
        }
    }

    /// Test switch: `<state-dir>/switches/evict/<namespace>/<pod>` evicts that pod once, as
    /// a node under memory pressure does (phase Failed, reason Evicted); the switch file
    /// is removed, so the pod a controller creates in its place under the same name runs.
    fn take_evict_switch(&self, namespace: &str, pod: &str) -> bool {
        let switch = self
            .config
            .state_dir
            .join("switches")
            .join("evict")
            .join(namespace)
            .join(pod);
        std::fs::remove_file(switch).is_ok()
    }

    fn restart_and_probe(&self, rt: &mut PodRt, now: Instant) {
        for index in 0..rt.containers.len() {
            if rt.containers[index].restart_at.is_some_and(|at| now >= at) {
                self.start_container(rt, index);
            }
        }
        if !rt.running {
            return;
        }
        for c in rt.containers.iter_mut() {
            let Some(pid) = c.pid else { continue };
            let probe: Vec<String> = c.spec["readinessProbe"]["exec"]["command"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str().map(String::from))
                .collect();
            if probe.is_empty() || c.probe_ok || c.probe_running || now < c.next_probe {
                continue;
            }
            c.probe_running = true;
            let tx = self.tx.clone();
            let uid = rt.uid.clone();
            let container = c.name.clone();
            let env = c.env.clone();
            let workdir = c.workdir.clone();
            let user = c.user;
            tokio::spawn(async move {
                let ok = run_probe(&probe, &env, &workdir, pid, user).await;
                let _ = tx.send(Message::Probe {
                    uid,
                    container,
                    pid,
                    ok,
                });
            });
        }
    }

    fn condition(rt: &mut PodRt, kind: &'static str, value: bool) -> Value {
        let entry = rt
            .conditions
            .entry(kind)
            .or_insert_with(|| (value, now_rfc3339()));
        if entry.0 != value {
            *entry = (value, now_rfc3339());
        }
        json!({"type": kind, "status": if value { "True" } else { "False" },
               "lastProbeTime": null, "lastTransitionTime": entry.1})
    }

    /// Test switch: while `<state-dir>/switches/unready/<namespace>/<prefix>` exists, the
    /// pods of that namespace named `<prefix>-…` (a workload's pods) stay Running but never
    /// become ready, as if their readiness probe kept failing. Removing the file lets them
    /// become ready at the next tick.
    fn held_unready(&self, namespace: &str, pod: &str) -> bool {
        let dir = self
            .config
            .state_dir
            .join("switches")
            .join("unready")
            .join(namespace);
        let Ok(entries) = std::fs::read_dir(dir) else {
            return false;
        };
        entries.flatten().any(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|prefix| pod.strip_prefix(prefix).is_some_and(|r| r.starts_with('-')))
        })
    }

    fn report_status(&self, rt: &mut PodRt, pod: &Value) {
        if rt.ended.is_some() {
            return self.report_ended(rt, pod);
        }
        let all_alive = rt.containers.iter().all(|c| c.pid.is_some());
        if !rt.running && all_alive && rt.started.elapsed() >= self.config.start_delay {
            rt.running = true;
        }
        let running = rt.running;
        let held_unready = self.held_unready(&rt.namespace, &rt.name);
        let mut statuses = Vec::new();
        for c in &rt.containers {
            let has_probe = c.spec["readinessProbe"]["exec"].is_object();
            let ready = running && c.pid.is_some() && (!has_probe || c.probe_ok) && !held_unready;
            let state = match (&c.pid, running, &c.started_at) {
                (Some(_), true, Some(started)) => json!({"running": {"startedAt": started}}),
                (None, _, _) if c.restart_at.is_some() => {
                    json!({"waiting": {"reason": "CrashLoopBackOff",
                    "message": format!("back-off restarting failed container {}", c.name)}})
                }
                _ => json!({"waiting": {"reason": "ContainerCreating"}}),
            };
            let mut status = json!({
                "name": c.name,
                "image": c.spec["image"],
                "imageID": "",
                "containerID": format!("containerd://{}", &sha_hex(&format!("{}/{}/{}", rt.uid, c.name, c.restart_count))[..64]),
                "ready": ready,
                "started": running && c.pid.is_some(),
                "restartCount": c.restart_count,
                "state": state,
            });
            if let Some((code, finished)) = &c.last_exit {
                status["lastState"] = json!({"terminated": {"exitCode": code, "reason": if *code == 0 { "Completed" } else { "Error" },
                                                           "finishedAt": finished}});
            } else {
                status["lastState"] = json!({});
            }
            statuses.push(status);
        }
        let all_ready = statuses.iter().all(|s| s["ready"] == json!(true)) && !statuses.is_empty();
        let conditions = vec![
            Self::condition(rt, "PodReadyToStartContainers", true),
            Self::condition(rt, "Initialized", true),
            Self::condition(rt, "Ready", all_ready),
            Self::condition(rt, "ContainersReady", all_ready),
            Self::condition(rt, "PodScheduled", true),
        ];
        let status = json!({
            "phase": if running { "Running" } else { "Pending" },
            "conditions": conditions,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": rt.pod_ip,
            "podIPs": [{"ip": rt.pod_ip}],
            "startTime": rt.start_time,
            "qosClass": "BestEffort",
            "containerStatuses": statuses,
        });
        self.publish_status(rt, pod, status);
    }

    /// Write `status` into the pod object unless it is what was written last (and only
    /// into this pod: a pod of the same name made since has another uid).
    fn publish_status(&self, rt: &mut PodRt, pod: &Value, status: Value) {
        if status == rt.last_status {
            return;
        }
        let uid = rt.uid.clone();
        let result = self.store.update_with(PODS, &rt.namespace, &rt.name, |o| {
            if meta_str(o, "uid") != uid {
                return Err(crate::store::ApiError::conflict(
                    PODS,
                    name_of(pod),
                    "uid changed",
                ));
            }
            o["status"] = status.clone();
            Ok(())
        });
        if result.is_ok() {
            rt.last_status = status;
        }
    }

    /// The status of an ended pod: phase Failed or Succeeded, every container terminated,
    /// not ready (reason PodCompleted or PodFailed), and for an eviction `reason` Evicted
    /// and the DisruptionTarget condition, as a real kubelet reports them.
    fn report_ended(&self, rt: &mut PodRt, pod: &Value) {
        let Some(ended) = &rt.ended else { return };
        let (phase, reason, message) = (ended.phase, ended.reason, ended.message.clone());
        let statuses: Vec<Value> = rt
            .containers
            .iter()
            .map(|c| {
                let (code, finished) = c.last_exit.clone().unwrap_or((137, now_rfc3339()));
                // An evicted pod's containers are removed before their status is read
                // back, so a real kubelet reports them as below (kubernetes#122160).
                let terminated = if reason == Some("Evicted") {
                    json!({"exitCode": 137, "reason": "ContainerStatusUnknown",
                           "message": "The container could not be located when the pod was terminated",
                           "startedAt": null, "finishedAt": null})
                } else {
                    json!({"exitCode": code,
                           "reason": if code == 0 { "Completed" } else { "Error" },
                           "startedAt": c.started_at, "finishedAt": finished})
                };
                json!({
                    "name": c.name,
                    "image": c.spec["image"],
                    "imageID": "",
                    "ready": false,
                    "started": false,
                    "restartCount": c.restart_count,
                    "state": {"terminated": terminated},
                    "lastState": {},
                })
            })
            .collect();
        let not_ready = if phase == "Succeeded" {
            "PodCompleted"
        } else {
            "PodFailed"
        };
        let mut conditions = vec![
            Self::condition(rt, "PodReadyToStartContainers", false),
            Self::condition(rt, "Initialized", true),
            Self::condition(rt, "Ready", false),
            Self::condition(rt, "ContainersReady", false),
            Self::condition(rt, "PodScheduled", true),
        ];
        for c in conditions
            .iter_mut()
            .filter(|c| c["type"] == "Ready" || c["type"] == "ContainersReady")
        {
            c["reason"] = json!(not_ready);
        }
        if reason == Some("Evicted") {
            let mut target = Self::condition(rt, "DisruptionTarget", true);
            target["reason"] = json!("TerminationByKubelet");
            target["message"] = json!(message.clone().unwrap_or_default());
            conditions.insert(0, target);
        }
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "startTime": rt.start_time,
            "qosClass": "BestEffort",
            "containerStatuses": statuses,
        });
        if let Some(reason) = reason {
            status["reason"] = json!(reason);
            status["message"] = json!(message.unwrap_or_default());
        }
        self.publish_status(rt, pod, status);
    }

    /// Drive a deleted pod's teardown; true once its processes are gone and the grace shown.
    fn terminate(&self, rt: &mut PodRt, pod: Option<&Value>, now: Instant) -> bool {
        if rt.termination.is_none() {
            let grace = pod
                .and_then(|p| p["metadata"]["deletionGracePeriodSeconds"].as_u64())
                .unwrap_or(2);
            for c in &mut rt.containers {
                c.restart_at = None;
                if let Some(pid) = c.pid {
                    nsexec::kill_pid(pid, libc::SIGTERM);
                }
            }
            tracing::info!("stopping pod {}/{} (grace {grace}s)", rt.namespace, rt.name);
            rt.termination = Some(Termination {
                started: now,
                deadline: now + Duration::from_secs(grace),
                killed: false,
            });
        }
        let Some(termination) = rt.termination.as_mut() else {
            return false;
        };
        let alive = rt.containers.iter().any(|c| c.pid.is_some());
        if alive {
            if now >= termination.deadline && !termination.killed {
                termination.killed = true;
                for pgid in &rt.groups {
                    nsexec::kill_group(*pgid, libc::SIGKILL);
                }
            }
            return false;
        }
        for pgid in rt.groups.iter().chain(rt.exec_groups.iter()) {
            nsexec::kill_group(*pgid, libc::SIGKILL);
        }
        if let Some(pid) = rt.sandbox_pid.take() {
            nsexec::kill_pid(pid, libc::SIGKILL);
        }
        now.duration_since(termination.started) >= self.config.grace
    }

    pub fn exec_target(
        &self,
        namespace: &str,
        pod_name: &str,
        container: &str,
    ) -> Result<ExecTarget, String> {
        let state = self.lock();
        let pod = state
            .pods
            .values()
            .find(|p| p.namespace == namespace && p.name == pod_name && p.termination.is_none())
            .ok_or_else(|| format!("pod {pod_name} is not running"))?;
        if let Some(ended) = &pod.ended {
            return Err(format!(
                "cannot exec into a container in a completed pod; current phase is {}",
                ended.phase
            ));
        }
        let c = pod
            .containers
            .iter()
            .find(|c| c.name == container)
            .ok_or_else(|| format!("container not found (\"{container}\")"))?;
        let pid = c
            .pid
            .ok_or_else(|| format!("container not found (\"{container}\")"))?;
        Ok(ExecTarget {
            uid: pod.uid.clone(),
            pid,
            env: c.env.clone(),
            workdir: c.workdir.clone(),
            user: c.user,
        })
    }

    pub fn register_exec(&self, uid: &str, pgid: i32, add: bool) {
        let mut state = self.lock();
        if let Some(pod) = state.pods.get_mut(uid) {
            if add {
                pod.exec_groups.insert(pgid);
            } else {
                pod.exec_groups.remove(&pgid);
            }
        }
    }

    pub fn read_log(&self, pod: &Value, container: &str) -> anyhow::Result<Vec<u8>> {
        let path = self
            .pod_dir(meta_str(pod, "uid"))
            .join("containers")
            .join(container)
            .join("log");
        std::fs::read(&path).with_context(|| format!("container {container} has no log yet"))
    }

    /// Stop every pod's processes (the simulator is shutting down); objects stay in the store.
    pub async fn shutdown(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let flags: Vec<Arc<AtomicBool>> = {
            let mut state = self.lock();
            // Under the state lock: a sync that is starting pods finishes first, and the
            // next one starts none.
            self.stopping.store(true, Ordering::SeqCst);
            let mut flags = Vec::new();
            for pod in state.pods.values_mut() {
                for c in &mut pod.containers {
                    c.restart_at = None;
                    if let Some(pid) = c.pid {
                        nsexec::kill_pid(pid, libc::SIGTERM);
                    }
                    if let Some(flag) = &c.exited_flag {
                        flags.push(flag.clone());
                    }
                }
                pod.termination = Some(Termination {
                    started: Instant::now(),
                    deadline,
                    killed: false,
                });
            }
            flags
        };
        while Instant::now() < deadline && !flags.iter().all(|f| f.load(Ordering::SeqCst)) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let state = self.lock();
        for pod in state.pods.values() {
            for pgid in pod.groups.iter().chain(pod.exec_groups.iter()) {
                nsexec::kill_group(*pgid, libc::SIGKILL);
            }
            if let Some(pid) = pod.sandbox_pid {
                nsexec::kill_pid(pid, libc::SIGKILL);
            }
        }
    }
}

/// `runAsUser`/`runAsGroup` of a container's securityContext over its pod's. A user
/// without a group gets group 0, as a runtime does for an image without a USER group.
fn run_as(pod: &Value, container: &Value) -> Option<RunAs> {
    let field = |name: &str| {
        container[name]
            .as_u64()
            .or_else(|| pod[name].as_u64())
            .map(|v| v as u32)
    };
    let uid = field("runAsUser")?;
    Some(RunAs {
        uid,
        gid: field("runAsGroup").unwrap_or(0),
    })
}

/// A Kubernetes quantity in bytes: `512Ki`, `1Mi`, `2G`, `1000`.
fn parse_quantity(q: &str) -> anyhow::Result<u64> {
    let units: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    let (number, factor) = units
        .iter()
        .find_map(|(suffix, f)| q.strip_suffix(suffix).map(|n| (n, *f)))
        .unwrap_or((q, 1));
    let n: u64 = number
        .parse()
        .map_err(|_| anyhow!("sizeLimit {q:?} is not a quantity (e.g. 512Ki, 1Mi)"))?;
    Ok(n * factor)
}

/// Mount a tmpfs at `path` (once: a restarted pod keeps it), `size` bytes at most.
fn mount_memory_volume(path: &Path, size: Option<u64>) -> anyhow::Result<()> {
    if is_mount_point(path) {
        return Ok(());
    }
    let mut options = "mode=0777".to_string();
    if let Some(size) = size {
        options.push_str(&format!(",size={size}"));
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &options, "tmpfs"])
        .arg(path)
        .status()?;
    if !status.success() {
        bail!("mount -t tmpfs {} failed: {status}", path.display());
    }
    Ok(())
}

fn mount_points_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect()
}

fn is_mount_point(path: &Path) -> bool {
    mount_points_under(path).iter().any(|p| p == path)
}

/// A gone pod's tmpfs volumes are unmounted (their memory freed), as the kubelet does.
fn unmount_memory_volumes(pod_dir: &Path) {
    for point in mount_points_under(&pod_dir.join("volumes")) {
        if let Err(e) = std::process::Command::new("umount")
            .arg("-l")
            .arg(&point)
            .status()
        {
            tracing::warn!("cannot unmount {}: {e}", point.display());
        }
    }
}

fn sha_hex(text: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(text.as_bytes()))
}

pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

async fn run_probe(
    argv: &[String],
    env: &[(String, String)],
    workdir: &Path,
    pid: i32,
    user: Option<RunAs>,
) -> bool {
    let Ok((mut command, namespaces)) = nsexec::exec_command(argv, env, workdir, pid, user) else {
        return false;
    };
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let child = command.spawn();
    drop(namespaces);
    let Ok(mut child) = child else { return false };
    match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
        Ok(Ok(status)) => status.success(),
        _ => false,
    }
}

#[cfg(test)]
mod quantity_tests {
    use super::parse_quantity;

    #[test]
    fn quantities_in_bytes() {
        assert_eq!(parse_quantity("512Ki").unwrap(), 512 << 10);
        assert_eq!(parse_quantity("2Mi").unwrap(), 2 << 20);
        assert_eq!(parse_quantity("3G").unwrap(), 3_000_000_000);
        assert_eq!(parse_quantity("1000").unwrap(), 1000);
        assert!(parse_quantity("lots").is_err());
    }
}
