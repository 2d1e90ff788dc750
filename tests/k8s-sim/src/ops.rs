//! Shared configuration and the operations both the API and the controllers use.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::resources::{ResourceType, RESOURCES};
use crate::store::{is_deleting, now_rfc3339, ApiError, Store};

pub static NAMESPACES: &ResourceType = &RESOURCES[0];
pub static PODS: &ResourceType = &RESOURCES[1];
pub static CONFIGMAPS: &ResourceType = &RESOURCES[3];
pub static PVCS: &ResourceType = &RESOURCES[5];
pub static PVS: &ResourceType = &RESOURCES[6];
pub static NODES: &ResourceType = &RESOURCES[8];
pub static DEPLOYMENTS: &ResourceType = &RESOURCES[10];
pub static REPLICASETS: &ResourceType = &RESOURCES[11];
pub static STATEFULSETS: &ResourceType = &RESOURCES[12];
pub static STORAGECLASSES: &ResourceType = &RESOURCES[13];

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: String,
    pub state_dir: PathBuf,
    pub openebs_base: PathBuf,
    pub node_name: String,
    pub start_delay: Duration,
    pub grace: Duration,
    /// How long a reclaimed volume's cleanup takes.
    pub pv_cleanup: Duration,
    /// The Kubernetes version reported (major, minor).
    pub version: (u32, u32),
    /// Where the node's `/opt/ferry-src` hostPath really is (for running outside the testbed).
    pub src_root: PathBuf,
}

pub enum Deleted {
    /// The object still exists (graceful deletion or finalizers pending), as it is now.
    Pending(Value),
    /// The object is gone; the API answers with a Success Status.
    Gone(Value),
}

/// Delete as the API server does: pods get a grace period, objects with finalizers get a
/// deletionTimestamp, the rest disappear at once.
pub fn delete_object(
    store: &Store,
    rt: &ResourceType,
    namespace: &str,
    name: &str,
    grace_seconds: Option<i64>,
    precondition_uid: Option<&str>,
) -> Result<Deleted, ApiError> {
    let current = store
        .get(rt, namespace, name)
        .ok_or_else(|| ApiError::not_found(rt, name))?;
    if let Some(uid) = precondition_uid {
        if current["metadata"]["uid"].as_str() != Some(uid) {
            return Err(ApiError::conflict(
                rt,
                name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    current["metadata"]["uid"].as_str().unwrap_or("")
                ),
            ));
        }
    }
    if rt.plural == "pods" {
        if grace_seconds == Some(0) {
            let removed = store
                .remove(rt, namespace, name)
                .ok_or_else(|| ApiError::not_found(rt, name))?;
            return Ok(Deleted::Pending(removed));
        }
        if is_deleting(&current) {
            return Ok(Deleted::Pending(current));
        }
        let grace = grace_seconds
            .or_else(|| current["spec"]["terminationGracePeriodSeconds"].as_i64())
            .unwrap_or(30);
        let updated = store.update_with(rt, namespace, name, |obj| {
            obj["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            Ok(())
        })?;
        return Ok(Deleted::Pending(updated));
    }
    let has_finalizers = current["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    if has_finalizers {
        if is_deleting(&current) {
            return Ok(Deleted::Pending(current));
        }
        let updated = store.update_with(rt, namespace, name, |obj| {
            obj["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
            obj["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            Ok(())
        })?;
        if store.get(rt, namespace, name).is_some() {
            return Ok(Deleted::Pending(updated));
        }
        return Ok(Deleted::Gone(success_status(rt, name, &current)));
    }
    store
        .remove(rt, namespace, name)
        .ok_or_else(|| ApiError::not_found(rt, name))?;
    Ok(Deleted::Gone(success_status(rt, name, &current)))
}

fn success_status(rt: &ResourceType, name: &str, obj: &Value) -> Value {
    let mut details = json!({"name": name, "kind": rt.plural, "uid": obj["metadata"]["uid"]});
    if !rt.group.is_empty() {
        details["group"] = json!(rt.group);
    }
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": details,
    })
}

pub fn owner_reference(owner: &Value) -> Value {
    json!({
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// The uid of the controlling owner, if any.
pub fn controller_uid(obj: &Value) -> Option<&str> {
    obj["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == json!(true))
        .and_then(|r| r["uid"].as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_resource_handles_point_at_the_right_types() {
        let pairs = [
            (NAMESPACES, "namespaces"),
            (PODS, "pods"),
            (CONFIGMAPS, "configmaps"),
            (PVCS, "persistentvolumeclaims"),
            (PVS, "persistentvolumes"),
            (NODES, "nodes"),
            (DEPLOYMENTS, "deployments"),
            (REPLICASETS, "replicasets"),
            (STATEFULSETS, "statefulsets"),
            (STORAGECLASSES, "storageclasses"),
        ];
        for (rt, plural) in pairs {
            assert_eq!(rt.plural, plural);
        }
    }
}
