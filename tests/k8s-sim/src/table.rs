//! Server-side printing: `meta.k8s.io/v1` Table responses, which `kubectl get` asks for.

use serde_json::{json, Value};

use crate::resources::ResourceType;
use crate::store::{is_deleting, parse_rfc3339};

fn column(name: &str, kind: &str, format: &str) -> Value {
    json!({"name": name, "type": kind, "format": format, "description": name, "priority": 0})
}

/// Human age as kubectl prints it (`45s`, `3m2s`, `5h`, `2d`).
pub fn age(timestamp: &Value) -> String {
    let Some(created) = timestamp.as_str().and_then(parse_rfc3339) else {
        return "<unknown>".to_string();
    };
    let secs = (time::OffsetDateTime::now_utc() - created)
        .whole_seconds()
        .max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 8 * 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "<none>".to_string()
    } else {
        s
    }
}

/// The STATUS column as kubectl's pod printer makes it: the pod's reason (`Evicted`)
/// over its phase, a container's waiting or terminated reason over both, Terminating over
/// everything but an ended pod.
pub fn pod_status_text(pod: &Value) -> String {
    // An ended pod being deleted keeps its ended status (kubectl's printer).
    if is_deleting(pod) && !crate::api::is_ended(pod) {
        return "Terminating".to_string();
    }
    let mut status = match pod["status"]["reason"].as_str() {
        Some(reason) if !reason.is_empty() => reason.to_string(),
        _ => text(&pod["status"]["phase"]),
    };
    for c in pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let state = &c["state"];
        if let Some(reason) = state["waiting"]["reason"].as_str() {
            status = reason.to_string();
        } else if let Some(reason) = state["terminated"]["reason"].as_str() {
            status = reason.to_string();
        }
    }
    or_none(status)
}

/// Cells of one row after the name (the age cell is appended by the caller).
type Cells = fn(&Value) -> Vec<Value>;

fn columns_and_cells(rt: &ResourceType) -> (Vec<Value>, Cells) {
    let name = column("Name", "string", "name");
    let age_col = column("Age", "string", "");
    match rt.plural {
        "pods" => (
            vec![
                name,
                column("Ready", "string", ""),
                column("Status", "string", ""),
                column("Restarts", "string", ""),
                age_col,
            ],
            |o| {
                let statuses = o["status"]["containerStatuses"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let total = o["spec"]["containers"]
                    .as_array()
                    .map(|c| c.len())
                    .unwrap_or(0);
                let ready = statuses
                    .iter()
                    .filter(|s| s["ready"] == json!(true))
                    .count();
                let restarts: i64 = statuses.iter().map(|s| int(&s["restartCount"])).sum();
                vec![
                    json!(format!("{ready}/{total}")),
                    json!(pod_status_text(o)),
                    json!(restarts.to_string()),
                ]
            },
        ),
        "deployments" => (
            vec![
                name,
                column("Ready", "string", ""),
                column("Up-to-date", "integer", ""),
                column("Available", "integer", ""),
                age_col,
            ],
            |o| {
                vec![
                    json!(format!(
                        "{}/{}",
                        int(&o["status"]["readyReplicas"]),
                        int(&o["spec"]["replicas"])
                    )),
                    json!(int(&o["status"]["updatedReplicas"])),
                    json!(int(&o["status"]["availableReplicas"])),
                ]
            },
        ),
        "replicasets" => (
            vec![
                name,
                column("Desired", "integer", ""),
                column("Current", "integer", ""),
                column("Ready", "integer", ""),
                age_col,
            ],
            |o| {
                vec![
                    json!(int(&o["spec"]["replicas"])),
                    json!(int(&o["status"]["replicas"])),
                    json!(int(&o["status"]["readyReplicas"])),
                ]
            },
        ),
        "statefulsets" => (vec![name, column("Ready", "string", ""), age_col], |o| {
            vec![json!(format!(
                "{}/{}",
                int(&o["status"]["readyReplicas"]),
                int(&o["spec"]["replicas"])
            ))]
        }),
        "persistentvolumeclaims" => (
            vec![
                name,
                column("Status", "string", ""),
                column("Volume", "string", ""),
                column("Capacity", "string", ""),
                column("Access Modes", "string", ""),
                column("StorageClass", "string", ""),
                column("VolumeAttributesClass", "string", ""),
                age_col,
            ],
            |o| {
                let status = if is_deleting(o) {
                    "Terminating".to_string()
                } else {
                    text(&o["status"]["phase"])
                };
                vec![
                    json!(status),
                    json!(text(&o["spec"]["volumeName"])),
                    json!(text(&o["status"]["capacity"]["storage"])),
                    json!(access_modes(&o["status"]["accessModes"])),
                    json!(text(&o["spec"]["storageClassName"])),
                    json!("<unset>"),
                ]
            },
        ),
        "persistentvolumes" => (
            vec![
                name,
                column("Capacity", "string", ""),
                column("Access Modes", "string", ""),
                column("Reclaim Policy", "string", ""),
                column("Status", "string", ""),
                column("Claim", "string", ""),
                column("StorageClass", "string", ""),
                column("VolumeAttributesClass", "string", ""),
                column("Reason", "string", ""),
                age_col,
            ],
            |o| {
                let claim = &o["spec"]["claimRef"];
                let claim = if claim.is_object() {
                    format!("{}/{}", text(&claim["namespace"]), text(&claim["name"]))
                } else {
                    String::new()
                };
                vec![
                    json!(text(&o["spec"]["capacity"]["storage"])),
                    json!(access_modes(&o["spec"]["accessModes"])),
                    json!(text(&o["spec"]["persistentVolumeReclaimPolicy"])),
                    json!(text(&o["status"]["phase"])),
                    json!(claim),
                    json!(text(&o["spec"]["storageClassName"])),
                    json!("<unset>"),
                    json!(text(&o["status"]["reason"])),
                ]
            },
        ),
        "configmaps" => (vec![name, column("Data", "integer", ""), age_col], |o| {
            let count = o["data"].as_object().map(|d| d.len()).unwrap_or(0)
                + o["binaryData"].as_object().map(|d| d.len()).unwrap_or(0);
            vec![json!(count)]
        }),
        "namespaces" => (vec![name, column("Status", "string", ""), age_col], |o| {
            vec![json!(text(&o["status"]["phase"]))]
        }),
        "storageclasses" => (
            vec![
                name,
                column("Provisioner", "string", ""),
                column("ReclaimPolicy", "string", ""),
                column("VolumeBindingMode", "string", ""),
                column("AllowVolumeExpansion", "string", ""),
                age_col,
            ],
            |o| {
                vec![
                    json!(text(&o["provisioner"])),
                    json!(text(&o["reclaimPolicy"])),
                    json!(text(&o["volumeBindingMode"])),
                    json!(o["allowVolumeExpansion"]
                        .as_bool()
                        .unwrap_or(false)
                        .to_string()),
                ]
            },
        ),
        "services" => (
            vec![
                name,
                column("Type", "string", ""),
                column("Cluster-IP", "string", ""),
                column("Ports", "string", ""),
                age_col,
            ],
            |o| {
                let ports: Vec<String> = o["spec"]["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        format!(
                            "{}/{}",
                            int(&p["port"]),
                            p["protocol"].as_str().unwrap_or("TCP")
                        )
                    })
                    .collect();
                vec![
                    json!(text(&o["spec"]["type"])),
                    json!(text(&o["spec"]["clusterIP"])),
                    json!(or_none(ports.join(","))),
                ]
            },
        ),
        "nodes" => (vec![name, column("Status", "string", ""), age_col], |_| {
            vec![json!("Ready")]
        }),
        _ => (vec![name, age_col], |_| vec![]),
    }
}

fn access_modes(modes: &Value) -> String {
    modes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_str())
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

pub fn table(rt: &ResourceType, items: &[Value], resource_version: u64) -> Value {
    let (columns, cells_of) = columns_and_cells(rt);
    let rows: Vec<Value> = items
        .iter()
        .map(|item| {
            let mut cells = vec![json!(item["metadata"]["name"])];
            cells.extend(cells_of(item));
            cells.push(json!(age(&item["metadata"]["creationTimestamp"])));
            json!({
                "cells": cells,
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": item["metadata"],
                },
            })
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version.to_string()},
        "columnDefinitions": columns,
        "rows": rows,
    })
}
