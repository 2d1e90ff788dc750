//! The controllers: Deployment → ReplicaSet → Pods, StatefulSet → Pods + PVCs, the
//! OpenEBS-hostpath-like provisioner, PVC protection, PV reclaim, garbage collection.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::api::{add_finalizer, default_storage_class, is_active, is_ended};
use crate::ops::{
    self, controller_uid, owner_reference, Config, DEPLOYMENTS, PODS, PVCS, PVS, REPLICASETS,
    STATEFULSETS,
};
use crate::store::{is_deleting, meta_str, name_of, random_suffix, ApiError, Store};

pub const PROVISIONER: &str = "openebs.io/local";

/// Fill in what the API server's defaulting and the scheduler would.
pub fn default_pod(pod: &mut Value, node_name: &str) {
    let spec = &mut pod["spec"];
    if spec["restartPolicy"].is_null() {
        spec["restartPolicy"] = json!("Always");
    }
    if spec["terminationGracePeriodSeconds"].is_null() {
        spec["terminationGracePeriodSeconds"] = json!(30);
    }
    if spec["dnsPolicy"].is_null() {
        spec["dnsPolicy"] = json!("ClusterFirst");
    }
    if spec["schedulerName"].is_null() {
        spec["schedulerName"] = json!("default-scheduler");
    }
    if spec["nodeName"].is_null() {
        spec["nodeName"] = json!(node_name);
    }
    if let Some(containers) = spec["containers"].as_array_mut() {
        for container in containers {
            if container["imagePullPolicy"].is_null() {
                container["imagePullPolicy"] = json!("IfNotPresent");
            }
            if container["terminationMessagePath"].is_null() {
                container["terminationMessagePath"] = json!("/dev/termination-log");
            }
        }
    }
    pod["status"] = json!({
        "phase": "Pending",
        "qosClass": "BestEffort",
        "conditions": [{"type": "PodScheduled", "status": "True", "lastProbeTime": null,
                        "lastTransitionTime": crate::store::now_rfc3339()}],
    });
}

/// Kubernetes-like short hash of a pod template (`pod-template-hash`).
fn template_hash(template: &Value) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let digest = Sha256::digest(serde_json::to_vec(template).unwrap_or_default());
    let mut n = u64::from_be_bytes([
        digest[0], digest[1], digest[2], digest[3], digest[4], digest[5], digest[6], digest[7],
    ]);
    let mut out = String::new();
    for _ in 0..10 {
        out.push(ALPHABET[(n % ALPHABET.len() as u64) as usize] as char);
        n /= ALPHABET.len() as u64;
    }
    out
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

pub fn pod_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn pod_running_ready(pod: &Value) -> bool {
    !is_deleting(pod) && pod["status"]["phase"] == "Running" && pod_ready(pod)
}

/// Set status fields, omitting zero counts as the real controllers do.
fn set_counts(status: &mut Value, counts: &[(&str, i64)]) {
    for (field, value) in counts {
        if *value == 0 {
            if let Some(map) = status.as_object_mut() {
                map.remove(*field);
            }
        } else {
            status[*field] = json!(value);
        }
    }
}

type Step = fn(&Controllers) -> Result<(), ApiError>;

pub struct Controllers {
    pub store: Arc<Store>,
    pub config: Config,
    /// Reclaimed volumes whose cleanup is running: PV name → when it started.
    pub cleanups: std::sync::Mutex<HashMap<String, std::time::Instant>>,
}

impl Controllers {
    pub async fn run(self) {
        let mut changes = self.store.subscribe_changes();
        loop {
            self.reconcile();
            tokio::select! {
                _ = changes.changed() => {
                    // Let a burst of changes settle before reconciling again.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    fn reconcile(&self) {
        let steps: [(&str, Step); 6] = [
            ("deployments", Self::deployments),
            ("replicasets", Self::replicasets),
            ("statefulsets", Self::statefulsets),
            ("provisioner", Self::provision),
            ("pvc-protection", Self::pvc_protection),
            ("garbage-collector", Self::garbage_collect),
        ];
        for (name, step) in steps {
            if let Err(error) = step(self) {
                // Conflicts with concurrent API writes are retried on the next pass.
                tracing::debug!("controller {name}: {}", error.message);
            }
        }
    }

    fn pods_owned_by(&self, owner_uid: &str, namespace: &str) -> Vec<Value> {
        let (pods, _) = self.store.list(PODS, Some(namespace));
        pods.into_iter()
            .filter(|p| controller_uid(p) == Some(owner_uid))
            .collect()
    }

    fn deployments(&self) -> Result<(), ApiError> {
        let (deployments, _) = self.store.list(DEPLOYMENTS, None);
        let (replicasets, _) = self.store.list(REPLICASETS, None);
        for deploy in deployments.iter().filter(|d| !is_deleting(d)) {
            let ns = meta_str(deploy, "namespace");
            let name = name_of(deploy);
            let uid = meta_str(deploy, "uid");
            let replicas = int(&deploy["spec"]["replicas"]);
            let hash = template_hash(&deploy["spec"]["template"]);
            let rs_name = format!("{name}-{hash}");
            let owned: Vec<&Value> = replicasets
                .iter()
                .filter(|rs| controller_uid(rs) == Some(uid))
                .collect();
            if !owned.iter().any(|rs| name_of(rs) == rs_name) {
                let mut template = deploy["spec"]["template"].clone();
                template["metadata"]["labels"]["pod-template-hash"] = json!(hash);
                let mut selector = deploy["spec"]["selector"].clone();
                selector["matchLabels"]["pod-template-hash"] = json!(hash);
                let rs = json!({
                    "metadata": {
                        "name": rs_name,
                        "labels": template["metadata"]["labels"],
                        "annotations": {"deployment.kubernetes.io/desired-replicas": replicas.to_string(),
                                        "deployment.kubernetes.io/revision": "1"},
                        "ownerReferences": [owner_reference(deploy)],
                    },
                    "spec": {"replicas": replicas, "selector": selector, "template": template},
                    "status": {"replicas": 0},
                });
                self.store.create(REPLICASETS, ns, rs)?;
            }
            let mut total = 0;
            let mut ready = 0;
            let mut updated = 0;
            for rs in &owned {
                let want = if name_of(rs) == rs_name { replicas } else { 0 };
                if int(&rs["spec"]["replicas"]) != want {
                    self.store.update_with(REPLICASETS, ns, name_of(rs), |o| {
                        o["spec"]["replicas"] = json!(want);
                        o["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"] =
                            json!(replicas.to_string());
                        Ok(())
                    })?;
                }
                let pods = self.pods_owned_by(meta_str(rs, "uid"), ns);
                let active: Vec<&Value> = pods.iter().filter(|p| is_active(p)).collect();
                total += active.len() as i64;
                ready += active.iter().filter(|p| pod_ready(p)).count() as i64;
                if name_of(rs) == rs_name {
                    updated += active.len() as i64;
                }
            }
            let generation = deploy["metadata"]["generation"].clone();
            self.store.update_with(DEPLOYMENTS, ns, name, |o| {
                let status = &mut o["status"];
                if !status.is_object() {
                    *status = json!({});
                }
                status["observedGeneration"] = generation;
                set_counts(
                    status,
                    &[
                        ("replicas", total),
                        ("readyReplicas", ready),
                        ("availableReplicas", ready),
                        ("updatedReplicas", updated),
                        ("unavailableReplicas", (replicas - ready).max(0)),
                    ],
                );
                let available = if ready >= replicas { "True" } else { "False" };
                let previous = status["conditions"].clone();
                let transition = |kind: &str, value: &str| {
                    previous
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|c| c["type"] == kind && c["status"] == value)
                        .map(|c| c["lastTransitionTime"].clone())
                        .unwrap_or_else(|| json!(crate::store::now_rfc3339()))
                };
                status["conditions"] = json!([
                    {"type": "Available", "status": available,
                     "reason": if available == "True" { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
                     "message": if available == "True" { "Deployment has minimum availability." } else { "Deployment does not have minimum availability." },
                     "lastTransitionTime": transition("Available", available),
                     "lastUpdateTime": transition("Available", available)},
                    {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                     "message": format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
                     "lastTransitionTime": transition("Progressing", "True"),
                     "lastUpdateTime": transition("Progressing", "True")},
                ]);
                Ok(())
            })?;
        }
        Ok(())
    }

    fn new_pod(&self, owner: &Value, name: &str) -> Value {
        let template = &owner["spec"]["template"];
        let mut pod = json!({
            "metadata": {
                "name": name,
                "labels": template["metadata"]["labels"],
                "annotations": template["metadata"]["annotations"],
                "ownerReferences": [owner_reference(owner)],
            },
            "spec": template["spec"],
        });
        if let Some(meta) = pod["metadata"].as_object_mut() {
            meta.retain(|_, v| !v.is_null());
        }
        default_pod(&mut pod, &self.config.node_name);
        pod
    }

    /// Pick the pods a scale-down removes: not ready first, then the newest.
    fn doomed(mut pods: Vec<Value>, count: usize) -> Vec<Value> {
        pods.sort_by(|a, b| {
            pod_ready(a).cmp(&pod_ready(b)).then_with(|| {
                meta_str(b, "creationTimestamp").cmp(meta_str(a, "creationTimestamp"))
            })
        });
        pods.into_iter().take(count).collect()
    }

    fn replicasets(&self) -> Result<(), ApiError> {
        let (replicasets, _) = self.store.list(REPLICASETS, None);
        for rs in replicasets.iter().filter(|r| !is_deleting(r)) {
            let ns = meta_str(rs, "namespace");
            let want = int(&rs["spec"]["replicas"]).max(0) as usize;
            self.adopt_orphans(rs)?;
            let pods = self.pods_owned_by(meta_str(rs, "uid"), ns);
            let active: Vec<Value> = pods.iter().filter(|p| is_active(p)).cloned().collect();
            if active.len() < want {
                for _ in active.len()..want {
                    let name = format!("{}-{}", name_of(rs), random_suffix(5));
                    self.store.create(PODS, ns, self.new_pod(rs, &name))?;
                }
            } else if active.len() > want {
                for pod in Self::doomed(active.clone(), active.len() - want) {
                    ops::delete_object(&self.store, PODS, ns, name_of(&pod), None, None)?;
                }
            }
            let ready = active.iter().filter(|p| pod_ready(p)).count() as i64;
            let generation = rs["metadata"]["generation"].clone();
            let count = active.len().min(want.max(active.len())) as i64;
            self.store.update_with(REPLICASETS, ns, name_of(rs), |o| {
                let status = &mut o["status"];
                status["replicas"] = json!(count);
                status["observedGeneration"] = generation;
                set_counts(
                    status,
                    &[
                        ("readyReplicas", ready),
                        ("availableReplicas", ready),
                        ("fullyLabeledReplicas", count),
                    ],
                );
                Ok(())
            })?;
        }
        Ok(())
    }

    /// A ReplicaSet adopts the active pods of its namespace that match its selector and
    /// have no controller (Kubernetes' `ClaimPods`): a pod made by hand with a
    /// ReplicaSet's labels, `pod-template-hash` included, becomes one of its replicas.
    fn adopt_orphans(&self, rs: &Value) -> Result<(), ApiError> {
        let ns = meta_str(rs, "namespace");
        let Some(selector) = rs["spec"]["selector"]["matchLabels"].as_object() else {
            return Ok(());
        };
        if selector.is_empty() {
            return Ok(());
        }
        let (pods, _) = self.store.list(PODS, Some(ns));
        for pod in pods.iter().filter(|p| {
            controller_uid(p).is_none()
                && is_active(p)
                && selector
                    .iter()
                    .all(|(k, v)| p["metadata"]["labels"][k] == *v)
        }) {
            let reference = owner_reference(rs);
            self.store.update_with(PODS, ns, name_of(pod), |o| {
                let refs = &mut o["metadata"]["ownerReferences"];
                if !refs.is_array() {
                    *refs = json!([]);
                }
                if let Some(list) = refs.as_array_mut() {
                    list.push(reference.clone());
                }
                Ok(())
            })?;
            tracing::info!("replicaset {} adopted pod {}", name_of(rs), name_of(pod));
        }
        Ok(())
    }

    fn statefulsets(&self) -> Result<(), ApiError> {
        let (statefulsets, _) = self.store.list(STATEFULSETS, None);
        for sts in statefulsets.iter().filter(|s| !is_deleting(s)) {
            let ns = meta_str(sts, "namespace");
            let name = name_of(sts);
            let want = int(&sts["spec"]["replicas"]).max(0) as usize;
            let parallel = sts["spec"]["podManagementPolicy"] == "Parallel";
            let revision = format!("{name}-{}", template_hash(&sts["spec"]["template"]));
            let pods = self.pods_owned_by(meta_str(sts, "uid"), ns);
            // A pod of the set that ended (Failed, Evicted, Succeeded) is deleted, and made
            // again on a later pass, as the StatefulSet controller does.
            for pod in pods.iter().filter(|p| is_ended(p) && !is_deleting(p)) {
                tracing::info!(
                    "statefulset {name}: pod {} ended ({}); deleting it",
                    name_of(pod),
                    pod["status"]["phase"]
                );
                ops::delete_object(&self.store, PODS, ns, name_of(pod), None, None)?;
            }
            let by_name: HashMap<&str, &Value> = pods.iter().map(|p| (name_of(p), p)).collect();

            // Scale down from the highest ordinal, one pod at a time unless Parallel.
            let mut extra: Vec<(usize, &Value)> = pods
                .iter()
                .filter_map(|p| {
                    let ordinal = name_of(p).rsplit_once('-')?.1.parse::<usize>().ok()?;
                    (ordinal >= want).then_some((ordinal, p))
                })
                .collect();
            extra.sort_by_key(|(ordinal, _)| std::cmp::Reverse(*ordinal));
            let terminating_extra = extra.iter().any(|(_, p)| is_deleting(p));
            if !extra.is_empty() && (parallel || !terminating_extra) {
                let victims: Vec<&Value> = if parallel {
                    extra
                        .iter()
                        .map(|(_, p)| *p)
                        .filter(|p| !is_deleting(p))
                        .collect()
                } else {
                    extra.first().map(|(_, p)| *p).into_iter().collect()
                };
                for pod in victims {
                    if !is_deleting(pod) {
                        ops::delete_object(&self.store, PODS, ns, name_of(pod), None, None)?;
                    }
                }
            }

            // Scale up in ordinal order; OrderedReady waits for each pod to be Running and Ready.
            if extra.is_empty() || parallel {
                for ordinal in 0..want {
                    let pod_name = format!("{name}-{ordinal}");
                    match by_name.get(pod_name.as_str()) {
                        Some(pod) if pod_running_ready(pod) => continue,
                        Some(_) if parallel => continue,
                        Some(_) => break,
                        None => {
                            if self.ensure_claims(sts, ordinal)? {
                                self.store.create(
                                    PODS,
                                    ns,
                                    self.sts_pod(sts, ordinal, &revision),
                                )?;
                            }
                            if !parallel {
                                break;
                            }
                        }
                    }
                }
            }

            let active: Vec<&Value> = pods.iter().filter(|p| is_active(p)).collect();
            let ready = active.iter().filter(|p| pod_ready(p)).count() as i64;
            let count = active.len() as i64;
            let generation = sts["metadata"]["generation"].clone();
            self.store.update_with(STATEFULSETS, ns, name, |o| {
                let status = &mut o["status"];
                status["observedGeneration"] = generation;
                status["replicas"] = json!(count);
                status["currentRevision"] = json!(revision);
                status["updateRevision"] = json!(revision);
                status["collisionCount"] = json!(0);
                set_counts(
                    status,
                    &[
                        ("readyReplicas", ready),
                        ("availableReplicas", ready),
                        ("currentReplicas", count),
                        ("updatedReplicas", count),
                    ],
                );
                Ok(())
            })?;
        }
        Ok(())
    }

    /// Create the ordinal's PVCs from the volumeClaimTemplates; true once all exist and none
    /// is being deleted (a pod must not start on a claim that is going away).
    fn ensure_claims(&self, sts: &Value, ordinal: usize) -> Result<bool, ApiError> {
        let ns = meta_str(sts, "namespace");
        let mut all_usable = true;
        for template in sts["spec"]["volumeClaimTemplates"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let claim_name = format!("{}-{}-{ordinal}", name_of(template), name_of(sts));
            match self.store.get(PVCS, ns, &claim_name) {
                Some(existing) => {
                    if is_deleting(&existing) {
                        all_usable = false;
                    }
                }
                None => {
                    let mut labels = template["metadata"]["labels"].clone();
                    if let Some(selector) = sts["spec"]["selector"]["matchLabels"].as_object() {
                        for (k, v) in selector {
                            labels[k] = v.clone();
                        }
                    }
                    let mut spec = template["spec"].clone();
                    if spec["storageClassName"].is_null() {
                        if let Some(class) = default_storage_class(&self.store) {
                            spec["storageClassName"] = json!(class);
                        }
                    }
                    if spec["volumeMode"].is_null() {
                        spec["volumeMode"] = json!("Filesystem");
                    }
                    let mut claim = json!({
                        "metadata": {"name": claim_name, "labels": labels},
                        "spec": spec,
                        "status": {"phase": "Pending"},
                    });
                    add_finalizer(&mut claim, "kubernetes.io/pvc-protection");
                    self.store.create(PVCS, ns, claim)?;
                }
            }
        }
        Ok(all_usable)
    }

    fn sts_pod(&self, sts: &Value, ordinal: usize, revision: &str) -> Value {
        let pod_name = format!("{}-{ordinal}", name_of(sts));
        let mut pod = self.new_pod(sts, &pod_name);
        let labels = &mut pod["metadata"]["labels"];
        labels["statefulset.kubernetes.io/pod-name"] = json!(pod_name);
        labels["apps.kubernetes.io/pod-index"] = json!(ordinal.to_string());
        labels["controller-revision-hash"] = json!(revision);
        pod["spec"]["hostname"] = json!(pod_name);
        if let Some(service) = sts["spec"]["serviceName"].as_str() {
            pod["spec"]["subdomain"] = json!(service);
        }
        let volumes = &mut pod["spec"]["volumes"];
        if !volumes.is_array() {
            *volumes = json!([]);
        }
        if let Some(list) = volumes.as_array_mut() {
            for template in sts["spec"]["volumeClaimTemplates"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let volume = name_of(template);
                list.retain(|v| v["name"] != volume);
                list.push(json!({
                    "name": volume,
                    "persistentVolumeClaim": {"claimName": format!("{volume}-{}-{ordinal}", name_of(sts))},
                }));
            }
        }
        pod
    }

    /// Bind PVCs: WaitForFirstConsumer classes once a scheduled pod uses the claim.
    fn provision(&self) -> Result<(), ApiError> {
        let (claims, _) = self.store.list(PVCS, None);
        let (pods, _) = self.store.list(PODS, None);
        let (classes, _) = self.store.list(ops::STORAGECLASSES, None);
        for claim in claims
            .iter()
            .filter(|c| !is_deleting(c) && c["spec"]["volumeName"].is_null())
        {
            let ns = meta_str(claim, "namespace");
            let class_name = claim["spec"]["storageClassName"].as_str().unwrap_or("");
            let Some(class) = classes.iter().find(|c| name_of(c) == class_name) else {
                continue;
            };
            if class["provisioner"] != PROVISIONER {
                continue;
            }
            let immediate = class["volumeBindingMode"] == "Immediate";
            let consumer = pods.iter().any(|p| {
                meta_str(p, "namespace") == ns
                    && !is_deleting(p)
                    && volume_claims(p).contains(name_of(claim))
            });
            if !immediate && !consumer {
                continue;
            }
            self.provision_claim(claim, class)?;
        }
        Ok(())
    }

    fn provision_claim(&self, claim: &Value, class: &Value) -> Result<(), ApiError> {
        let ns = meta_str(claim, "namespace");
        let pv_name = format!("pvc-{}", meta_str(claim, "uid"));
        let path = self.config.openebs_base.join(&pv_name);
        std::fs::create_dir_all(&path)
            .and_then(|_| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
            })
            .map_err(|e| ApiError::internal(format!("creating {}: {e}", path.display())))?;
        let storage = claim["spec"]["resources"]["requests"]["storage"].clone();
        let modes = claim["spec"]["accessModes"].clone();
        let node = &self.config.node_name;
        if self.store.get(PVS, "", &pv_name).is_none() {
            let pv = json!({
                "metadata": {
                    "name": pv_name,
                    "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER},
                    "labels": {"openebs.io/cas-type": "local-hostpath"},
                    "finalizers": ["kubernetes.io/pv-protection"],
                },
                "spec": {
                    "capacity": {"storage": storage},
                    "accessModes": modes,
                    "persistentVolumeReclaimPolicy": class["reclaimPolicy"].as_str().unwrap_or("Delete"),
                    "storageClassName": name_of(class),
                    "volumeMode": "Filesystem",
                    "local": {"path": path.to_string_lossy(), "fsType": ""},
                    "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}]}]}},
                    "claimRef": {
                        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "name": name_of(claim), "namespace": ns,
                        "uid": claim["metadata"]["uid"], "resourceVersion": claim["metadata"]["resourceVersion"],
                    },
                },
                "status": {"phase": "Bound"},
            });
            self.store.create(PVS, "", pv)?;
            tracing::info!(
                "provisioned {pv_name} at {} for {ns}/{}",
                path.display(),
                name_of(claim)
            );
        }
        self.store.update_with(PVCS, ns, name_of(claim), |o| {
            o["spec"]["volumeName"] = json!(pv_name);
            let annotations = &mut o["metadata"]["annotations"];
            annotations["pv.kubernetes.io/bind-completed"] = json!("yes");
            annotations["pv.kubernetes.io/bound-by-controller"] = json!("yes");
            annotations["volume.beta.kubernetes.io/storage-provisioner"] = json!(PROVISIONER);
            annotations["volume.kubernetes.io/storage-provisioner"] = json!(PROVISIONER);
            annotations["volume.kubernetes.io/selected-node"] = json!(node);
            o["status"] =
                json!({"phase": "Bound", "accessModes": modes, "capacity": {"storage": storage}});
            Ok(())
        })?;
        Ok(())
    }

    /// `kubernetes.io/pvc-protection`: release a deleted claim once no pod uses it; then
    /// reclaim PVs whose claim is gone (Delete: remove the directory and the PV).
    fn pvc_protection(&self) -> Result<(), ApiError> {
        let (claims, _) = self.store.list(PVCS, None);
        let (pods, _) = self.store.list(PODS, None);
        for claim in claims.iter().filter(|c| is_deleting(c)) {
            let ns = meta_str(claim, "namespace");
            let in_use = pods.iter().any(|p| {
                meta_str(p, "namespace") == ns && volume_claims(p).contains(name_of(claim))
            });
            if !in_use {
                self.store.update_with(PVCS, ns, name_of(claim), |o| {
                    if let Some(finalizers) = o["metadata"]["finalizers"].as_array_mut() {
                        finalizers.retain(|f| f != "kubernetes.io/pvc-protection");
                    }
                    Ok(())
                })?;
            }
        }
        let (claims, _) = self.store.list(PVCS, None);
        let claim_uids: HashSet<&str> = claims.iter().map(|c| meta_str(c, "uid")).collect();
        let (volumes, _) = self.store.list(PVS, None);
        for pv in &volumes {
            let claim_uid = pv["spec"]["claimRef"]["uid"].as_str().unwrap_or("");
            if claim_uid.is_empty() || claim_uids.contains(claim_uid) {
                continue;
            }
            if pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete" {
                self.reclaim(pv)?;
            } else if pv["status"]["phase"] != "Released" {
                self.store.update_with(PVS, "", name_of(pv), |o| {
                    o["status"]["phase"] = json!("Released");
                    Ok(())
                })?;
            }
        }
        Ok(())
    }

    /// Reclaim policy Delete, as OpenEBS's provisioner does it: the PV is Released while
    /// a cleanup helper removes the directory (`--pv-cleanup-ms`), then it is deleted.
    /// While the switch `<state>/switches/pv-cleanup-fail` exists the cleanup fails: the
    /// PV ends in phase Failed with the provisioner's message and stays (an operator
    /// removes the directory and deletes the PV by hand).
    fn reclaim(&self, pv: &Value) -> Result<(), ApiError> {
        let name = name_of(pv);
        if pv["status"]["phase"] == "Failed" {
            return Ok(());
        }
        let started = {
            let mut cleanups = self.cleanups.lock().unwrap_or_else(|p| p.into_inner());
            *cleanups
                .entry(name.to_string())
                .or_insert_with(std::time::Instant::now)
        };
        if pv["status"]["phase"] != "Released" {
            self.store.update_with(PVS, "", name, |o| {
                o["status"] = json!({"phase": "Released"});
                Ok(())
            })?;
        }
        if started.elapsed() < self.config.pv_cleanup {
            return Ok(());
        }
        let fail = self
            .config
            .state_dir
            .join("switches")
            .join("pv-cleanup-fail");
        if fail.exists() {
            tracing::warn!("cleanup of {name} failed (switch {})", fail.display());
            self.store.update_with(PVS, "", name, |o| {
                o["status"] = json!({"phase": "Failed", "message": format!(
                    "failed to delete volume {name}: clean up volume {name} failed: \
                     create process timeout after 120 seconds")});
                Ok(())
            })?;
        } else {
            if let Some(path) = pv["spec"]["local"]["path"].as_str() {
                self.remove_volume_dir(Path::new(path))?;
            }
            self.store.remove(PVS, "", name);
            tracing::info!("deleted {name} and its directory");
        }
        self.cleanups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
        Ok(())
    }

    fn remove_volume_dir(&self, path: &Path) -> Result<(), ApiError> {
        // Only ever delete below the provisioner's base directory.
        if !path.starts_with(&self.config.openebs_base) || path == self.config.openebs_base {
            return Err(ApiError::internal(format!(
                "refusing to delete {}",
                path.display()
            )));
        }
        match std::fs::remove_dir_all(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ApiError::internal(format!(
                "deleting {}: {e}",
                path.display()
            ))),
        }
    }

    /// Delete dependents whose controlling owner is gone (background propagation).
    fn garbage_collect(&self) -> Result<(), ApiError> {
        let mut owners: HashSet<String> = HashSet::new();
        for rt in [DEPLOYMENTS, REPLICASETS, STATEFULSETS] {
            let (items, _) = self.store.list(rt, None);
            owners.extend(items.iter().map(|o| meta_str(o, "uid").to_string()));
        }
        let (replicasets, _) = self.store.list(REPLICASETS, None);
        for rs in &replicasets {
            if controller_uid(rs).is_some_and(|uid| !owners.contains(uid)) {
                self.store
                    .remove(REPLICASETS, meta_str(rs, "namespace"), name_of(rs));
            }
        }
        let (pods, _) = self.store.list(PODS, None);
        for pod in pods.iter().filter(|p| !is_deleting(p)) {
            if controller_uid(pod).is_some_and(|uid| !owners.contains(uid)) {
                ops::delete_object(
                    &self.store,
                    PODS,
                    meta_str(pod, "namespace"),
                    name_of(pod),
                    None,
                    None,
                )?;
            }
        }
        Ok(())
    }
}

/// Names of the PVCs a pod's volumes use.
pub fn volume_claims(pod: &Value) -> HashSet<&str> {
    pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["persistentVolumeClaim"]["claimName"].as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_hash_is_stable_and_kubernetes_shaped() {
        let a = template_hash(&json!({"spec": {"containers": [{"name": "ui"}]}}));
        let b = template_hash(&json!({"spec": {"containers": [{"name": "ui"}]}}));
        let c = template_hash(&json!({"spec": {"containers": [{"name": "other"}]}}));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 10);
    }
}
