//! Check mode's memory: in `--check` nothing is applied, so a later task would read the
//! state from before the earlier tasks' changes and could report `ok` where a real run
//! changes something (scaling `ui` back to 1 after an earlier task would scale it to 0),
//! or fail for want of an artifact an earlier task would have made.
//!
//! A module states, per planned change, what that change [`Prediction`]s; the engine,
//! and only the engine, folds the predictions of changes it did not apply (check mode)
//! into [`Predicted`], which later tasks read through their `Probe` next to the real
//! state. In a real run nothing is folded (the changes happened), so a module never
//! needs to know which mode it runs in.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// A store of the migration a step restores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Store {
    Postgres,
    Redis,
    Storage,
}

/// What one change leaves behind, for the tasks after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// Workload `kind/name` on this host's cluster ends with `replicas` running and ready.
    Replicas { workload: String, replicas: u32 },
    /// This host's store is restored from its backup.
    Restored(Store),
    /// Artifact `name` exists (on this host), made by this change.
    Artifact(String),
}

impl Prediction {
    /// For a module whose every change makes its artifact: `name`, unless there is no
    /// change (the artifact is already there).
    pub fn artifact_if_changed<C>(changes: &[C], name: &str) -> Vec<Prediction> {
        if changes.is_empty() {
            Vec::new()
        } else {
            vec![Prediction::Artifact(name.to_string())]
        }
    }
}

/// The predictions of every change an earlier task of this run planned but (check mode)
/// did not apply. Empty in a real run.
#[derive(Debug, Clone, Default)]
pub struct Predicted {
    replicas: BTreeMap<(String, String), u32>,
    restored: BTreeSet<(String, Store)>,
    artifacts: BTreeSet<String>,
}

impl Predicted {
    /// Fold in what a change planned on `host` predicts (the engine, in check mode).
    pub(crate) fn fold(&mut self, host: &str, prediction: &Prediction) {
        match prediction {
            Prediction::Replicas { workload, replicas } => {
                self.replicas
                    .insert((host.to_string(), workload.clone()), *replicas);
            }
            Prediction::Restored(store) => {
                self.restored.insert((host.to_string(), *store));
            }
            Prediction::Artifact(name) => {
                self.artifacts.insert(name.clone());
            }
        }
    }

    /// Replicas an earlier task would have set on workload `kind/name` of `host`.
    pub fn replicas(&self, host: &str, workload: &str) -> Option<u32> {
        self.replicas
            .get(&(host.to_string(), workload.to_string()))
            .copied()
    }

    /// Whether an earlier task would have restored `store` on `host`.
    pub fn restored(&self, host: &str, store: Store) -> bool {
        self.restored.contains(&(host.to_string(), store))
    }

    /// Whether an earlier task (on any host) would have made artifact `name`.
    pub fn artifact(&self, name: &str) -> bool {
        self.artifacts.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predictions_are_kept_per_host_and_artifacts_for_all() {
        let mut p = Predicted::default();
        p.fold(
            "new",
            &Prediction::Replicas {
                workload: "deployment/ui".into(),
                replicas: 0,
            },
        );
        p.fold("new", &Prediction::Restored(Store::Redis));
        p.fold("old", &Prediction::Artifact("packagist_pg".into()));
        assert_eq!(p.replicas("new", "deployment/ui"), Some(0));
        assert_eq!(p.replicas("other", "deployment/ui"), None);
        assert!(p.restored("new", Store::Redis));
        assert!(!p.restored("new", Store::Postgres));
        assert!(
            p.artifact("packagist_pg"),
            "an artifact is seen from every host"
        );
    }
}
