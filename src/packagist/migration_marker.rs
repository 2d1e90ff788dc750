//! `migration_marker`: record on the new cluster itself that the migration completed,
//! with the source fingerprints and the time, in a ConfigMap. From then on every
//! new-side step leaves the target alone (unless `--overwrite`), whichever laptop runs
//! ferry: the new system may be live.
//!
//! ```toml
//! [task.migration_marker]
//! # namespace = "packagist"
//! ```

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::Value;

use crate::k8s::kubectl;
use crate::module::kube::{k8s_args, K8sArgs};
use crate::module::{Applied, Change, HostReader, Module, ModuleError, Probe, TaskCtx};
use crate::packagist::completed::{completed_marker, MARKER_CONFIGMAP};

k8s_args! {
    pub struct MigrationMarker {
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MarkerFacts {
    pub namespace: String,
    pub marker: Option<BTreeMap<String, String>>,
    /// What goes into the marker: the source fingerprints from the journal.
    pub data: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriteMarker {
    pub kubectl: String,
    /// What the marker will hold (bar the time and host, set when it is written).
    pub data: BTreeMap<String, String>,
}

impl Change for WriteMarker {
    fn diff(&self) -> Option<crate::module::Diff> {
        let mut after: Vec<String> = self.data.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        after.push("completed_at: (the time it is written)".into());
        after.push("completed_by: (this host)".into());
        Some(crate::module::Diff {
            what: format!("ConfigMap {MARKER_CONFIGMAP}"),
            before: String::new(),
            after: after.join("\n"),
        })
    }
    fn describe(&self) -> String {
        format!("record the completed migration (ConfigMap {MARKER_CONFIGMAP})")
    }
    fn commands(&self) -> Vec<String> {
        vec![self.kubectl.clone()]
    }
}

/// The source fingerprints of every artifact in the journal, flattened for a ConfigMap.
fn marker_data(ctx: &HostReader) -> BTreeMap<String, String> {
    let mut data = BTreeMap::new();
    let journal = ctx.journal.snapshot();
    for (host, tasks) in &journal.hosts {
        for rec in tasks.values() {
            for (name, a) in &rec.artifacts {
                data.insert(format!("{name}.sha256"), a.sha256.clone());
                data.insert(format!("{name}.size"), a.size.to_string());
                data.insert(format!("{name}.source"), format!("{host}:{}", a.path));
            }
            for key in ["pg", "redis_keys"] {
                if let (Some(v), false) = (rec.fingerprints.get(key), rec.artifacts.is_empty()) {
                    data.insert(format!("source.{key}"), v.to_string());
                }
            }
            if let (Some(Value::Object(o)), false) =
                (rec.fingerprints.get("storage"), rec.artifacts.is_empty())
            {
                for k in ["files", "digest"] {
                    if let Some(v) = o.get(k) {
                        data.insert(format!("source.storage.{k}"), v.to_string());
                    }
                }
            }
        }
    }
    data.insert("ferry.version".into(), env!("CARGO_PKG_VERSION").into());
    data
}

#[async_trait]
impl Module for MigrationMarker {
    const VARS: crate::module::VarLists = &[crate::module::kube::VARS];
    type Facts = MarkerFacts;
    type Change = WriteMarker;

    async fn facts(&self, probe: &Probe<'_>) -> Result<MarkerFacts, ModuleError> {
        let cluster = self.k8s().cluster(probe).await?;
        Ok(MarkerFacts {
            namespace: cluster.namespace().to_string(),
            marker: completed_marker(&cluster).await?,
            data: marker_data(probe),
        })
    }

    fn decide(&self, f: &MarkerFacts) -> Result<Vec<WriteMarker>, ModuleError> {
        Ok(decide(f))
    }

    async fn apply(
        &self,
        ctx: &TaskCtx,
        f: &MarkerFacts,
        _: &[WriteMarker],
    ) -> Result<Applied, ModuleError> {
        let cluster = self.k8s().cluster(ctx).await?;
        let mut data = f.data.clone();
        data.insert("completed_at".into(), crate::journal::now_rfc3339());
        data.insert("completed_by".into(), ctx.host.clone());
        cluster.put_configmap(MARKER_CONFIGMAP, data).await?;
        Ok(Applied::changed())
    }
}

/// Pure: write the marker once.
pub fn decide(f: &MarkerFacts) -> Vec<WriteMarker> {
    if f.marker.is_some() {
        return Vec::new();
    }
    vec![WriteMarker {
        kubectl: kubectl(
            &f.namespace,
            &[
                "create",
                "configmap",
                MARKER_CONFIGMAP,
                "--from-literal=completed_at=...",
            ],
        ),
        data: f.data.clone(),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_once() {
        let mut f = MarkerFacts {
            namespace: "default".into(),
            marker: None,
            data: BTreeMap::new(),
        };
        assert_eq!(decide(&f).len(), 1);
        f.marker = Some(BTreeMap::from([("completed_at".into(), "t".into())]));
        assert!(decide(&f).is_empty());
    }
}
