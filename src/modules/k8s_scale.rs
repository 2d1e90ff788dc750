//! `k8s_scale`: set workloads' replicas and wait, by watch, until their pods match: all
//! gone, or Running and ready.
//!
//! ```toml
//! [task.k8s_scale]
//! workloads = ["deployment/ui", "deployment/repo", "deployment/worker"]
//! replicas = 0
//! timeout = "5m"             # per wait: seconds (300) or "30s", "5m", "1h"
//! # namespace = "packagist"  # default: var `namespace`, else "default"
//! ```
//!
//! With `guard = { configmap = "NAME", store = "app" }`, the task leaves the workloads
//! alone (reported ok, with the reason) while that ConfigMap exists, unless
//! `--overwrite app`: the migration playbook guards its "stop the new app" step with the
//! completed-migration marker, since the new system may then be live and serving.

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::k8s::{kubectl, pod_ended, pod_ready, PodSet, PodsWanted, WorkloadKind};
use crate::k8s::{Cluster, K8sError};
use crate::module::kube::{k8s_args, marker_guard, K8sArgs, MarkerGuard};
use crate::module::units::Seconds;
use crate::module::{Applied, Change, Module, ModuleError, Prediction, Probe, TaskCtx};

k8s_args! {
    pub struct K8sScale {
        /// `deployment/NAME` or `statefulset/NAME` (also `deploy/`, `sts/`).
        #[serde(deserialize_with = "checked_workloads")]
        pub workloads: Vec<String>,
        pub replicas: u32,
        pub timeout: Option<Seconds>,
        /// Leave the workloads alone while this marker ConfigMap exists.
        pub guard: Option<MarkerGuard>,
    }
}

/// One workload's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkloadFacts {
    pub kind: WorkloadKind,
    pub name: String,
    pub replicas: u32,
    pub selector: String,
    /// The workload's own pods now (not ended ones, nor look-alikes it does not control),
    /// and how many of them are Running and ready (and not terminating).
    pub pods: u32,
    pub ready: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScaleFacts {
    pub namespace: String,
    pub workloads: Vec<WorkloadFacts>,
    /// Why the target must be left alone (migration completed), if so.
    pub guard: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum ScaleChange {
    Scale {
        kind: WorkloadKind,
        name: String,
        from: u32,
        to: u32,
        selector: String,
        kubectl: String,
    },
    /// Replicas are already right but the pods have not caught up (e.g. a run was
    /// killed while waiting): wait for them.
    Wait {
        kind: WorkloadKind,
        name: String,
        to: u32,
        selector: String,
        kubectl: String,
    },
}

impl Change for ScaleChange {
    fn diff(&self) -> Option<crate::module::Diff> {
        match self {
            ScaleChange::Scale {
                kind,
                name,
                from,
                to,
                ..
            } => Some(crate::module::Diff {
                what: format!("{}/{name}", kind.kubectl_name()),
                before: format!("spec.replicas: {from}"),
                after: format!("spec.replicas: {to}"),
            }),
            ScaleChange::Wait { .. } => None,
        }
    }
    fn describe(&self) -> String {
        match self {
            ScaleChange::Scale {
                kind,
                name,
                from,
                to,
                ..
            } => {
                format!("scale {}/{name} from {from} to {to}", kind.kubectl_name())
            }
            ScaleChange::Wait { kind, name, to, .. } => {
                format!(
                    "wait for {}/{name} to have {to} ready pod(s)",
                    kind.kubectl_name()
                )
            }
        }
    }
    fn commands(&self) -> Vec<String> {
        match self {
            ScaleChange::Scale { kubectl, .. } | ScaleChange::Wait { kubectl, .. } => {
                vec![kubectl.clone()]
            }
        }
    }
    /// Either way the workload ends with `to` pods, all ready.
    fn predicts(&self) -> Vec<Prediction> {
        let (ScaleChange::Scale { kind, name, to, .. } | ScaleChange::Wait { kind, name, to, .. }) =
            self;
        vec![Prediction::Replicas {
            workload: format!("{}/{name}", kind.kubectl_name()),
            replicas: *to,
        }]
    }
}

/// `workloads`, checked when the playbook is read.
fn checked_workloads<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    crate::module::checked(d, |workloads: &Vec<String>| {
        if workloads.is_empty() {
            return Err("workloads is empty; name at least one, e.g. [\"deployment/ui\"]".into());
        }
        workloads
            .iter()
            .try_for_each(|w| parse_workload(w).map(drop).map_err(|e| e.to_string()))
    })
}

/// Parse `deployment/ui`, `deploy/ui`, `statefulset/redis`, `sts/redis`.
pub fn parse_workload(text: &str) -> Result<(WorkloadKind, String), ModuleError> {
    let (kind, name) = text.split_once('/').ok_or_else(|| {
        ModuleError::Precondition(format!(
            "workload {text:?} must be written kind/name, e.g. deployment/ui"
        ))
    })?;
    let kind = match kind {
        "deployment" | "deploy" | "deployments" => WorkloadKind::Deployment,
        "statefulset" | "sts" | "statefulsets" => WorkloadKind::StatefulSet,
        other => {
            return Err(ModuleError::Precondition(format!(
                "workload kind {other:?} is not supported (deployment or statefulset)"
            )))
        }
    };
    if name.is_empty() {
        return Err(ModuleError::Precondition(format!(
            "workload {text:?} has no name"
        )));
    }
    Ok((kind, name.to_string()))
}

#[async_trait]
impl Module for K8sScale {
    const VARS: crate::module::VarLists = &[crate::module::kube::VARS];
    type Facts = ScaleFacts;
    type Change = ScaleChange;

    /// The completed-migration guard's reason, when it leaves the store alone.
    fn notes(&self, f: &ScaleFacts) -> Vec<String> {
        f.guard.iter().cloned().collect()
    }

    async fn facts(&self, probe: &Probe<'_>) -> Result<ScaleFacts, ModuleError> {
        let cluster = self.k8s().cluster(probe).await?;
        let mut workloads = Vec::new();
        for w in &self.workloads {
            let (kind, name) = parse_workload(w)?;
            let (replicas, set) = cluster.workload(kind, &name).await?;
            let pods = cluster.pods(&set).await?;
            let mut w = WorkloadFacts {
                kind,
                name,
                replicas,
                ready: pods.iter().filter(|p| pod_ready(p)).count() as u32,
                // An ended pod (evicted, completed) stays until deleted but is no
                // replica: counting it would wait forever for it to go.
                pods: pods.iter().filter(|p| !pod_ended(p)).count() as u32,
                selector: set.selector,
            };
            // What an earlier task of this check run would have set.
            let key = format!("{}/{}", kind.kubectl_name(), w.name);
            if let Some(planned) = probe.predicted_replicas(&key) {
                w.replicas = planned;
                w.pods = planned;
                w.ready = planned;
            }
            workloads.push(w);
        }
        let marker = match &self.guard {
            Some(g) => cluster.configmap(&g.configmap).await?,
            None => None,
        };
        Ok(ScaleFacts {
            namespace: cluster.namespace().to_string(),
            workloads,
            guard: self
                .guard
                .as_ref()
                .and_then(|g| marker_guard(&probe.overwrite, &g.configmap, &marker, &g.store)),
        })
    }

    fn decide(&self, f: &ScaleFacts) -> Result<Vec<ScaleChange>, ModuleError> {
        Ok(decide(self.replicas, f))
    }

    async fn apply(
        &self,
        ctx: &TaskCtx,
        _: &ScaleFacts,
        changes: &[ScaleChange],
    ) -> Result<Applied, ModuleError> {
        let cluster = self.k8s().cluster(ctx).await?;
        let timeout = self
            .timeout
            .map_or(Duration::from_secs(300), Seconds::duration);
        // Scale everything first, then wait: the workloads stop (or start) together.
        for c in changes {
            if let ScaleChange::Scale {
                kind,
                name,
                to,
                kubectl,
                ..
            } = c
            {
                tracing::info!(host = %ctx.host, "{kubectl}");
                cluster.scale(*kind, name, *to).await?;
            }
        }
        for c in changes {
            let (ScaleChange::Scale {
                kind,
                name,
                to,
                selector,
                ..
            }
            | ScaleChange::Wait {
                kind,
                name,
                to,
                selector,
                ..
            }) = c;
            let wanted = if *to == 0 {
                PodsWanted::Gone
            } else {
                PodsWanted::Ready(*to)
            };
            let set = PodSet {
                kind: *kind,
                name: name.clone(),
                selector: selector.clone(),
            };
            match cluster.wait_pods(&set, wanted, timeout).await {
                Ok(()) => {}
                Err(K8sError::Timeout { what, secs }) => {
                    let workload = format!("{}/{name}", kind.kubectl_name());
                    let pods = pods_now(&cluster, &set).await;
                    return Err(ModuleError::Failed(timeout_message(
                        &workload,
                        cluster.namespace(),
                        selector,
                        *to,
                        secs,
                        &what,
                        &pods,
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Applied::changed())
    }
}

/// The pods of a workload as one line each (`name phase ready|not ready (...)`), for the
/// timeout message; what cannot be read is said so.
async fn pods_now(cluster: &Cluster, set: &PodSet) -> Vec<String> {
    match cluster.pods(set).await {
        Ok(pods) => pods
            .iter()
            .map(|p| {
                let name = p.metadata.name.clone().unwrap_or_default();
                let status = p.status.clone().unwrap_or_default();
                let phase = status.phase.unwrap_or_else(|| "Unknown".into());
                if pod_ended(p) {
                    let reason = status.reason.map(|r| format!(" ({r})")).unwrap_or_default();
                    return format!("{name} {phase}{reason}, ended (not counted)");
                }
                let unready: Vec<String> = status
                    .container_statuses
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|c| !c.ready)
                    .map(|c| c.name)
                    .collect();
                let terminating = if p.metadata.deletion_timestamp.is_some() {
                    ", terminating"
                } else {
                    ""
                };
                if pod_ready(p) {
                    format!("{name} {phase}, ready{terminating}")
                } else if unready.is_empty() {
                    format!("{name} {phase}, not ready{terminating}")
                } else {
                    format!(
                        "{name} {phase}, not ready (containers not ready: {}){terminating}",
                        unready.join(", ")
                    )
                }
            })
            .collect(),
        Err(e) => vec![format!("(could not list them: {e})")],
    }
}

/// Pure: the operator's message when a workload's pods did not settle in time.
pub fn timeout_message(
    workload: &str,
    namespace: &str,
    selector: &str,
    replicas: u32,
    secs: u64,
    what: &str,
    pods: &[String],
) -> String {
    let goal = if replicas == 0 {
        "all its pods gone".to_string()
    } else {
        format!("{replicas} pod(s) running and ready")
    };
    let now = if pods.is_empty() {
        "no pods".to_string()
    } else {
        pods.join("; ")
    };
    let look = [
        kubectl(namespace, &["get", "pods", "-l", selector, "-o", "wide"]),
        kubectl(namespace, &["describe", "pods", "-l", selector]),
        kubectl(namespace, &["rollout", "status", workload]),
    ];
    format!(
        "{workload} in namespace {namespace} did not reach {goal} within the timeout of \
         {secs}s (waited until {what}); pods now: {now}. Look with: {}. \
         Raise the task's `timeout` if the pods are just slow; a re-run waits again.",
        look.join(" ; ")
    )
}

/// Pure: which workloads to scale, and which to wait for.
pub fn decide(replicas: u32, f: &ScaleFacts) -> Vec<ScaleChange> {
    if f.guard.is_some() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for w in &f.workloads {
        let settled = if replicas == 0 {
            w.pods == 0
        } else {
            w.pods == replicas && w.ready == replicas
        };
        let name = format!("{}/{}", w.kind.kubectl_name(), w.name);
        if w.replicas != replicas {
            out.push(ScaleChange::Scale {
                kind: w.kind,
                name: w.name.clone(),
                from: w.replicas,
                to: replicas,
                selector: w.selector.clone(),
                kubectl: kubectl(
                    &f.namespace,
                    &["scale", &name, &format!("--replicas={replicas}")],
                ),
            });
        } else if !settled {
            let wait_for = if replicas == 0 {
                "--for=delete".to_string()
            } else {
                "--for=condition=Ready".to_string()
            };
            out.push(ScaleChange::Wait {
                kind: w.kind,
                name: w.name.clone(),
                to: replicas,
                selector: w.selector.clone(),
                kubectl: kubectl(&f.namespace, &["wait", "pod", "-l", &w.selector, &wait_for]),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(name: &str, replicas: u32, pods: u32, ready: u32) -> WorkloadFacts {
        WorkloadFacts {
            kind: WorkloadKind::Deployment,
            name: name.into(),
            replicas,
            selector: format!("app={name}"),
            pods,
            ready,
        }
    }

    fn facts(ws: Vec<WorkloadFacts>) -> ScaleFacts {
        ScaleFacts {
            namespace: "default".into(),
            workloads: ws,
            guard: None,
        }
    }

    #[test]
    fn scales_what_differs_with_the_kubectl_hint() {
        let c = decide(0, &facts(vec![w("ui", 1, 1, 1), w("repo", 0, 0, 0)]));
        assert_eq!(c.len(), 1);
        assert_eq!(
            c[0].commands(),
            vec!["kubectl -n default scale deployment/ui --replicas=0"]
        );
        assert_eq!(c[0].describe(), "scale deployment/ui from 1 to 0");
    }

    #[test]
    fn settled_is_ok_unsettled_waits() {
        assert!(decide(0, &facts(vec![w("ui", 0, 0, 0)])).is_empty());
        assert!(decide(1, &facts(vec![w("ui", 1, 1, 1)])).is_empty());
        let c = decide(1, &facts(vec![w("ui", 1, 1, 0)]));
        assert!(matches!(c[0], ScaleChange::Wait { .. }), "{c:?}");
        let c = decide(0, &facts(vec![w("ui", 0, 1, 0)]));
        assert!(matches!(c[0], ScaleChange::Wait { .. }), "{c:?}");
    }

    #[test]
    fn completed_migration_is_left_alone() {
        let mut f = facts(vec![w("ui", 1, 1, 1)]);
        f.guard = Some("completed".into());
        assert!(decide(0, &f).is_empty());
    }

    #[test]
    fn timeout_names_workload_namespace_timeout_and_kubectl() {
        let m = timeout_message(
            "deployment/ui",
            "packagist",
            "app=ui",
            1,
            30,
            "1 pod(s) app=ui are running and ready",
            &["ui-1 Running, not ready (containers not ready: ui)".into()],
        );
        for want in [
            "deployment/ui in namespace packagist",
            "timeout of 30s",
            "ui-1 Running, not ready (containers not ready: ui)",
            "kubectl -n packagist describe pods -l app=ui",
            "kubectl -n packagist get pods -l app=ui -o wide",
        ] {
            assert!(m.contains(want), "{want:?} not in {m}");
        }
    }

    #[test]
    fn timeout_parses_text_or_seconds() {
        let t: K8sScale =
            toml::from_str("workloads = [\"deployment/ui\"]\nreplicas = 1\ntimeout = \"30s\"")
                .unwrap();
        assert_eq!(t.timeout, Some(Seconds(30)));
        let t: K8sScale =
            toml::from_str("workloads = [\"deployment/ui\"]\nreplicas = 1\ntimeout = 45").unwrap();
        assert_eq!(t.timeout, Some(Seconds(45)));
    }

    #[test]
    fn workload_names_parse() {
        assert_eq!(
            parse_workload("sts/redis").unwrap(),
            (WorkloadKind::StatefulSet, "redis".into())
        );
        assert!(parse_workload("pod/x").is_err());
        assert!(parse_workload("ui").is_err());
    }
}
