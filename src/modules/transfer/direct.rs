//! `transfer` by the direct route: the artifact's host sends the file straight to this
//! host over its own SSH connection, trusted for this one transfer (see
//! `module::direct_route`); the laptop carries only the commands and the verdicts.
//!
//! The old host runs the sender (`direct_send.py send-file`): it reads the whole file
//! (hashing all of it, so a changed source is caught even on a resume) and writes what
//! comes after the kept part to its `ssh`, whose forced command on this host is
//! [`super::receive_cmd`], the same receiver as on the controller route: it appends to
//! the same part, hashes the whole part and renames it only when the hash is the
//! recorded one. A part cut on either route resumes on either.

use super::{part_path, receive_cmd, receive_disk_full, TransferFacts};
use crate::command::Cmd;
use crate::journal::Artifact;
use crate::module::artifact::is_disk_full;
use crate::module::direct_route::{self, DirectTarget, Route, SenderResult, Trust, SENDER};
use crate::module::staged::StagedPath;
use crate::module::{Applied, ModuleError, TaskCtx};

/// Why a direct send did not finish.
enum Refusal {
    /// The node refused the old host's ssh before a byte arrived: the part is as it
    /// was, and `auto` may take the controller route instead.
    Refused(String),
    Failed(ModuleError),
}

impl From<ModuleError> for Refusal {
    fn from(e: ModuleError) -> Self {
        Refusal::Failed(e)
    }
}

impl From<crate::transport::TransportError> for Refusal {
    fn from(e: crate::transport::TransportError) -> Self {
        Refusal::Failed(e.into())
    }
}

/// Send `artifact` from byte `offset` by `route`; a direct send refused before a byte
/// arrived falls back to the controller route when `may_fall_back` (`auto`).
pub(super) async fn send_by_route(
    ctx: &TaskCtx,
    f: &TransferFacts,
    artifact: &Artifact,
    offset: u64,
    route: &Route,
    may_fall_back: bool,
    applied: &mut Applied,
) -> Result<(), ModuleError> {
    let target = match route {
        Route::Controller { .. } => {
            applied.notes.push(route.describe(&artifact.host));
            return super::send(ctx, artifact, &f.dest, f.mode, offset).await;
        }
        Route::Direct(target) => target,
    };
    match send_direct(ctx, f, artifact, offset, target, applied).await {
        Ok(()) => Ok(()),
        Err(Refusal::Failed(e)) => Err(e),
        Err(Refusal::Refused(why)) if may_fall_back => {
            applied.notes.push(format!(
                "the direct transfer was refused before a byte arrived ({why}); fell back \
                 to the controller route"
            ));
            super::send(ctx, artifact, &f.dest, f.mode, offset).await
        }
        Err(Refusal::Refused(why)) => Err(ModuleError::Precondition(format!(
            "route = \"direct\": {why}; nothing was sent (set route = \"auto\" or \
             \"controller\")"
        ))),
    }
}

/// Install the trust, send, remove the trust (whatever happened).
async fn send_direct(
    ctx: &TaskCtx,
    f: &TransferFacts,
    artifact: &Artifact,
    offset: u64,
    target: &DirectTarget,
    applied: &mut Applied,
) -> Result<(), Refusal> {
    let source = ctx.peer(&artifact.host).await?;
    let staged = StagedPath::of(&f.dest)?;
    let script = receive_cmd(&f.dest, artifact, f.mode, offset > 0).to_shell();
    let (record, trust) = direct_route::open(
        ctx,
        &source,
        &artifact.host,
        &f.direct,
        target,
        &staged,
        &script,
        &mut applied.notes,
    )
    .await;
    let result = match trust {
        Ok(trust) => send(ctx, f, artifact, offset, &source, &trust).await,
        Err(e) => Err(e.into()),
    };
    direct_route::close(ctx, &source, record, applied).await?;
    result
}

async fn send(
    ctx: &TaskCtx,
    f: &TransferFacts,
    artifact: &Artifact,
    offset: u64,
    source: &std::sync::Arc<dyn crate::transport::Transport>,
    trust: &Trust,
) -> Result<(), Refusal> {
    let sender = format!("{}/send.py", trust.record.source_dir);
    direct_route::write_file(source, &artifact.host, &sender, SENDER.as_bytes()).await?;
    let r = direct_route::run_sender(
        ctx,
        source,
        &artifact.host,
        &Cmd::new("python3")
            .arg(sender.as_str())
            .arg("send-file")
            .arg(offset.to_string())
            .arg(artifact.path.as_str())
            .arg("--")
            .args(trust.ssh_argv.iter().map(String::as_str)),
        &artifact.name,
        artifact.size,
    )
    .await?;
    verify(ctx, f, artifact, offset, r).await
}

/// Both ends agree with the artifact's record.
async fn verify(
    ctx: &TaskCtx,
    f: &TransferFacts,
    artifact: &Artifact,
    offset: u64,
    r: SenderResult,
) -> Result<(), Refusal> {
    let far_sha = r
        .far_stdout
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    let far_err = ctx.secrets.mask(r.far_stderr.trim());
    if is_disk_full(&far_err) {
        return Err(ModuleError::DiskFull(
            receive_disk_full(ctx, artifact, &f.dest, &far_err).await,
        )
        .into());
    }
    let grew = r.ssh_rc == Some(255) && part_grew(ctx, &f.dest, offset).await;
    if let Some(why) =
        direct_route::refused_before_a_byte(&r, &far_sha, grew, &artifact.host, &ctx.host, &far_err)
    {
        return Err(Refusal::Refused(why));
    }
    if let Some(e) = &r.error {
        return Err(ModuleError::Remote {
            what: format!(
                "the direct transfer of {} from {} to {}: {e}",
                artifact.name, artifact.host, ctx.host
            ),
            detail: far_err,
        }
        .into());
    }
    if r.sha256 != artifact.sha256 || r.bytes != artifact.size {
        return Err(ModuleError::Precondition(format!(
            "artifact {} on {} changed since it was made (read {} bytes with sha256 {}, \
             recorded {} / {}); re-run the backup tasks",
            artifact.path, artifact.host, r.bytes, r.sha256, artifact.size, artifact.sha256
        ))
        .into());
    }
    if r.ssh_rc != Some(0) {
        return Err(ModuleError::Remote {
            what: format!(
                "receiving {} into {} on {} failed (exit {})",
                artifact.name,
                f.dest,
                ctx.host,
                r.ssh_rc.map_or("unknown".into(), |c| c.to_string())
            ),
            detail: far_err,
        }
        .into());
    }
    if far_sha != artifact.sha256 {
        return Err(ModuleError::ProofMismatch {
            what: format!("{} on {}", f.dest, ctx.host),
            detail: format!("it has sha256 {far_sha:?}, expected {}", artifact.sha256),
        }
        .into());
    }
    tracing::info!(
        host = %ctx.host,
        "received {} ({} bytes) directly from {} as {}, sha256 {}",
        artifact.name,
        artifact.size,
        artifact.host,
        f.dest,
        artifact.sha256
    );
    Ok(())
}

/// Whether the part holds more than the `offset` bytes it had before the send.
async fn part_grew(ctx: &TaskCtx, dest: &str, offset: u64) -> bool {
    let part = part_path(dest);
    ctx.exec(&Cmd::new("stat").arg("-c").arg("%s").arg(part.as_str()))
        .await
        .ok()
        .and_then(|o| o.stdout_str().trim().parse::<u64>().ok())
        .is_some_and(|n| n > offset)
}
