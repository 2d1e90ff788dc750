//! Interrupted restores: the journal memo of a restore's last destructive attempt.

use serde_json::Value;

use crate::module::{HostReader, ModuleError, TaskCtx};

// ---------------------------------------------------------------------------------------
// Interrupted restores

/// Journal fingerprint (of the restoring task itself) holding the state of its last
/// destructive attempt: [`ATTEMPT_STARTED`] from just before it touched the target until
/// its result was proven, then [`ATTEMPT_PROVEN`].
pub const ATTEMPT: &str = "attempt";
pub const ATTEMPT_STARTED: &str = "started";
pub const ATTEMPT_PROVEN: &str = "proven";

/// Whether this task's last restore started and never proved its result: ferry was
/// killed or failed in the middle of it. The target may then hold a half-applied
/// restore that still looks like the source (a dump cut after its COPYs has every row
/// but no keys or indexes, and a psql left behind in the pod may still be writing), so
/// it must be restored again whatever its fingerprint says.
pub fn interrupted_attempt(ctx: &HostReader) -> bool {
    ctx.record(&ctx.host, &ctx.task)
        .and_then(|r| r.fingerprints.get(ATTEMPT).cloned())
        .is_some_and(|v| v == ATTEMPT_STARTED)
}

/// Record, on disk before the target is touched, that a restore attempt begins.
pub fn attempt_started(ctx: &TaskCtx) -> Result<(), ModuleError> {
    ctx.record_fingerprint(ATTEMPT, Value::from(ATTEMPT_STARTED))
}

/// Record that the attempt's result was proven equal to the source.
pub fn attempt_proven(ctx: &TaskCtx) -> Result<(), ModuleError> {
    ctx.record_fingerprint(ATTEMPT, Value::from(ATTEMPT_PROVEN))
}
