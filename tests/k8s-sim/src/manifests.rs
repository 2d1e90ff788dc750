//! The starting state: built-in cluster objects plus the YAML manifests of a directory.

use std::path::PathBuf;

use anyhow::{anyhow, Context};
use serde_json::{json, Value};

use crate::ops::{Config, DEPLOYMENTS, NAMESPACES, NODES, PODS, STATEFULSETS};
use crate::resources;
use crate::store::Store;

/// Namespaces and the node every cluster has.
pub fn bootstrap(store: &Store, config: &Config) -> anyhow::Result<()> {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        if store.get(NAMESPACES, "", ns).is_none() {
            store
                .create(
                    NAMESPACES,
                    "",
                    json!({"metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}},
                           "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}}),
                )
                .map_err(|e| anyhow!(e.message))?;
        }
    }
    if store.get(NODES, "", &config.node_name).is_none() {
        let node = &config.node_name;
        store
            .create(
                NODES,
                "",
                json!({
                    "metadata": {"name": node, "labels": {
                        "kubernetes.io/hostname": node, "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64", "node-role.kubernetes.io/control-plane": "true"}},
                    "spec": {},
                    "status": {
                        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                        "message": "kubelet is posting ready status"}],
                        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                                      {"type": "Hostname", "address": node}],
                        "nodeInfo": {"kubeletVersion": "v1.33.0+k8s-sim", "operatingSystem": "linux",
                                     "architecture": "amd64", "containerRuntimeVersion": "k8s-sim://1"},
                    },
                }),
            )
            .map_err(|e| anyhow!(e.message))?;
    }
    Ok(())
}

fn kind_order(kind: &str) -> u8 {
    match kind {
        "Namespace" => 0,
        "StorageClass" => 1,
        "ConfigMap" | "Secret" | "ServiceAccount" => 2,
        "Service" => 3,
        _ => 4,
    }
}

/// Create every object of the `*.yaml`/`*.yml` files in `dirs` (each sorted by file
/// name). A later directory is an overlay: an object of the same kind, namespace and name
/// replaces the earlier one (the testbed's blob-store variants replace the ui workloads).
pub fn load_dirs(
    store: &Store,
    dirs: &[PathBuf],
    admit: impl Fn(&resources::ResourceType, &mut Value),
) -> anyhow::Result<usize> {
    let mut files = Vec::new();
    for dir in dirs {
        let mut in_dir: Vec<_> = std::fs::read_dir(dir)
            .with_context(|| format!("reading manifests directory {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        in_dir.sort();
        files.extend(in_dir);
    }
    let mut documents: Vec<(PathBuf, Value)> = Vec::new();
    for file in &files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value: Value = serde::Deserialize::deserialize(document)
                .with_context(|| format!("parsing {}", file.display()))?;
            if value.is_null() {
                continue;
            }
            let identity = |v: &Value| {
                (
                    v["kind"].clone(),
                    v["metadata"]["namespace"].clone(),
                    v["metadata"]["name"].clone(),
                )
            };
            documents.retain(|(_, earlier)| identity(earlier) != identity(&value));
            documents.push((file.clone(), value));
        }
    }
    documents.sort_by_key(|(_, v)| kind_order(v["kind"].as_str().unwrap_or("")));
    let mut count = 0;
    for (file, mut doc) in documents {
        let api_version = doc["apiVersion"].as_str().unwrap_or("").to_string();
        let kind = doc["kind"].as_str().unwrap_or("").to_string();
        let rt = resources::by_kind(&api_version, &kind).ok_or_else(|| {
            anyhow!(
                "{}: {api_version} {kind} is not served by the simulator",
                file.display()
            )
        })?;
        let namespace = doc["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        admit(rt, &mut doc);
        match store.create(rt, &namespace, doc) {
            Ok(_) => count += 1,
            Err(e) if e.reason == "AlreadyExists" => {}
            Err(e) => return Err(anyhow!("{}: {kind}: {}", file.display(), e.message)),
        }
    }
    Ok(count)
}

/// `--redis-appendonly`: the value of `REDIS_APPENDONLY` in every workload and pod that sets it.
pub fn override_redis_appendonly(store: &Store, value: &str) -> anyhow::Result<()> {
    let set = |containers: &mut Value| {
        for container in containers.as_array_mut().into_iter().flatten() {
            for var in container["env"].as_array_mut().into_iter().flatten() {
                if var["name"] == "REDIS_APPENDONLY" {
                    var["value"] = json!(value);
                }
            }
        }
    };
    for rt in [STATEFULSETS, DEPLOYMENTS] {
        let (items, _) = store.list(rt, None);
        for item in items {
            let ns = item["metadata"]["namespace"].as_str().unwrap_or("");
            let name = item["metadata"]["name"].as_str().unwrap_or("");
            store
                .update_with(rt, ns, name, |o| {
                    set(&mut o["spec"]["template"]["spec"]["containers"]);
                    Ok(())
                })
                .map_err(|e| anyhow!(e.message))?;
        }
    }
    let (pods, _) = store.list(PODS, None);
    for pod in pods {
        let ns = pod["metadata"]["namespace"].as_str().unwrap_or("");
        let name = pod["metadata"]["name"].as_str().unwrap_or("");
        store
            .update_with(PODS, ns, name, |o| {
                set(&mut o["spec"]["containers"]);
                Ok(())
            })
            .map_err(|e| anyhow!(e.message))?;
    }
    Ok(())
}
