//! The completed-migration marker: a ConfigMap on the new cluster, written by the last
//! step, that keeps every step (and `k8s_scale` with `guard`) from overwriting a system
//! that may be live. The guard itself is general: [`crate::module::kube::marker_guard`].

use std::collections::BTreeMap;

use crate::k8s::Cluster;
use crate::module::kube::marker_guard;
use crate::module::{HostReader, ModuleError};

/// Name of the ConfigMap that records, on the new cluster itself, that the migration
/// completed (so a re-run from any laptop never overwrites a live system).
pub const MARKER_CONFIGMAP: &str = "ferry-packagist-migration";

/// The "migration completed" marker, if the cluster has one.
pub async fn completed_marker(
    cluster: &Cluster,
) -> Result<Option<BTreeMap<String, String>>, ModuleError> {
    Ok(cluster.configmap(MARKER_CONFIGMAP).await?)
}

/// What the new host's preflight read from its cluster's marker, for the old side's
/// steps (memo [`crate::packagist::preflight::NEW_SIDE_COMPLETED`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CompletedOn {
    pub host: String,
    pub marker: BTreeMap<String, String>,
}

/// What an old-side backup of `store` does after a completed migration: leave the old
/// host alone, or (the operator named the store in `--overwrite`) back it up afresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldSide {
    /// The migration has not completed: back up as usual.
    AsUsual,
    /// Completed: change nothing, for this reason.
    LeaveAlone(String),
    /// Completed, and `--overwrite` names the store: back up again even if the last
    /// backup still matches (the old system may have run since).
    Redo,
}

/// The old side's policy for `store` (see [`OldSide`]). The new side's preflight of this
/// run hands the cluster's marker over (a re-run from a laptop without the journal
/// would otherwise start the stopped old containers to back them up again).
pub fn old_side_policy(ctx: &HostReader, store: &str) -> OldSide {
    match old_side_guard(ctx, store) {
        Some(reason) => OldSide::LeaveAlone(reason),
        None if completed_on_new_side(ctx).is_some() => OldSide::Redo,
        None => OldSide::AsUsual,
    }
}

/// The new side's completion, as its preflight of this run recorded it.
fn completed_on_new_side(ctx: &HostReader) -> Option<CompletedOn> {
    let data = ctx.journal.snapshot();
    data.hosts
        .iter()
        .flat_map(|(host, tasks)| tasks.iter().map(move |(task, r)| (host, task, r)))
        .find_map(|(host, task, r)| {
            crate::packagist::preflight::NEW_SIDE_COMPLETED
                .read(host, task, r)
                .ok()
                .flatten()
        })
}

/// `Some(reason)` when the old host's `store` must be left alone: the migration
/// completed and `--overwrite` does not name the store.
fn old_side_guard(ctx: &HostReader, store: &str) -> Option<String> {
    if ctx.overwrite.iter().any(|o| o == store || o == "all") {
        return None;
    }
    let done = completed_on_new_side(ctx)?;
    Some(format!(
        "the migration already completed on host {} at {} (ConfigMap {MARKER_CONFIGMAP}): \
         the old host's {store} is not backed up again and its containers stay as they \
         are. To back it up anyway, pass --overwrite {store}",
        done.host,
        done.marker
            .get("completed_at")
            .map(String::as_str)
            .unwrap_or("an unknown time")
    ))
}

/// Refuse to touch the new side once the migration completed there, unless the
/// operator named this store in `--overwrite`. Returns `Some(reason)` when the step must
/// leave the target alone.
pub fn completed_guard(
    ctx: &HostReader,
    marker: &Option<BTreeMap<String, String>>,
    store: &str,
) -> Option<String> {
    marker_guard(&ctx.overwrite, MARKER_CONFIGMAP, marker, store)
}
