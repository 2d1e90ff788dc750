//! `transfer`: move an artifact (found by name in the journal) from the host holding it
//! to a path on this task's host, streaming through the controller.
//!
//! ```toml
//! [[task]]
//! name = "Send the database dump"
//! hosts = "new"
//! after = ["Dump the database"]
//! [task.transfer]
//! artifact = "packagist_db"
//! dest = "{{ backup_dir_new }}/packagist_db.sql"
//! # mode = "0600"                 # the default
//! # record_as = "packagist_db_new" # record the delivered copy as an artifact
//! ```
//!
//! - One pass over the bytes: the source host `cat`s the file, the controller hashes
//!   what passes (and, with var `backup_dir`, keeps a copy on the laptop), and the far end
//!   writes `DIR/.ferry/NAME.part` while computing the sha256 of the whole file in the
//!   same pass. `DIR/.ferry` is ferry's own directory (mode 0700); the part is created
//!   new there (O_EXCL), so nothing another user prepared is ever written through.
//! - Checked at the far end: the part becomes `DEST` (mode 0600 unless `mode` says
//!   otherwise; a rename, which replaces and never follows a symlink) only when its
//!   sha256 equals the artifact's recorded one.
//! - Resumable: an interrupted transfer leaves its part. If its N bytes hash like the
//!   source's first N bytes, only the rest is sent; otherwise it starts over.
//! - `route = "auto" | "direct" | "controller"` (default `auto`): `direct` has the
//!   artifact's host send the file straight to this host, trusted for this transfer
//!   only (see `module::direct_route` and `direct.rs`); `auto` takes it when the probe
//!   finds this host's sshd from there, and falls back with the reason otherwise.
//! - Ok when `DEST` already has the artifact's size and sha256 (and the mode) and is a
//!   regular file of the login/become user. A `DEST`, part or work directory that ferry
//!   did not create (a symlink, another user's file, a file with other hard links) fails
//!   the task, naming it: ferry neither reuses nor replaces it.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::io::AsyncReadExt;

use crate::command::Cmd;
use crate::journal::Artifact;
use crate::module::artifact::{disk_free_text, find_artifact, is_disk_full};
use crate::module::artifact_stream::{copy_to_laptop, laptop_copy, stream_artifact, LaptopCopy};
use crate::module::direct_route::{
    self, choose, DirectFacts, Route, RouteSetting, TrustRecord, DIRECT_ADDRESS,
};
use crate::module::staged::{PathState, StagedPath, StagedStates};
use crate::module::{
    Applied, ArgCheck, ArgError, Change, HostReader, Module, ModuleError, Probe, TaskCtx,
};
use crate::playbook::template::Template;
use crate::transport::ExecOutput;

mod direct;
mod receive;
use receive::chmod_cmd;
pub use receive::{receive_cmd, RECEIVE_SCRIPT};

const DEFAULT_MODE: u32 = 0o600;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    /// Name of the artifact, as recorded by the task that produced it.
    pub artifact: String,
    /// Path on this task's host.
    pub dest: Template,
    /// Octal file mode of `dest`, e.g. "0600" (the default).
    #[serde(default, deserialize_with = "checked_mode")]
    pub mode: Option<String>,
    /// Record the delivered copy in the journal under this artifact name.
    pub record_as: Option<String>,
    /// `auto` (default), `direct` (the artifact's host → this host) or `controller`
    /// (through the laptop).
    pub route: Option<Template>,
    /// The store this transfer feeds (e.g. "postgres"): once the migration completed
    /// (the marker the new host's preflight read), it is left alone unless
    /// `--overwrite` names the store.
    pub guard: Option<crate::module::kube::MarkerGuard>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TransferFacts {
    pub host: String,
    pub artifact_name: String,
    /// `None`: not produced yet (fine when an earlier task of a check run would make it).
    pub artifact: Option<Artifact>,
    /// An earlier task of this check run would make the artifact.
    pub artifact_pending: bool,
    pub dest: String,
    pub mode: u32,
    /// Size and sha256 of `dest`, if it exists.
    pub dest_file: Option<(u64, String)>,
    pub dest_mode: Option<u32>,
    /// Size of `dest.part`, if it exists.
    pub part_size: Option<u64>,
    /// sha256 of `dest.part` and of the source's first `part_size` bytes, when a resume
    /// is possible (the part is not longer than the artifact).
    pub part_sha256: Option<String>,
    pub source_prefix_sha256: Option<String>,
    /// Names ferry would write (its work directory, the part, `dest`) that something
    /// ferry did not create holds: the operator's message for each.
    pub taken: Vec<String>,
    /// The laptop's copy (var `backup_dir`), checked against the artifact's record.
    pub laptop_copy: Option<LaptopCopy>,
    /// The route asked for, what the probe found (only when a send is due), and what
    /// an earlier direct transfer left installed (removed first).
    pub direct: DirectFacts,
    /// Why the completed migration leaves this transfer alone (see `guard`).
    pub guard: Option<String>,
}

impl TransferFacts {
    pub fn part(&self) -> String {
        part_path(&self.dest)
    }
}

/// Where the far end stages `dest`: `<dir>/.ferry/<name>.part`.
pub fn part_path(dest: &str) -> String {
    StagedPath::of(dest)
        .map(|s| s.part)
        .unwrap_or_else(|_| format!("{dest}.part"))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum TransferChange {
    /// Remove the temporary key (and its files) an earlier direct transfer left.
    RemoveTrust(TrustRecord),
    /// Stream the artifact from byte `offset` (0: from the start, replacing any part).
    Send {
        artifact: String,
        from_host: String,
        source: String,
        dest: String,
        size: u64,
        offset: u64,
        /// A `.part` was there but could not be resumed from.
        discard_part: bool,
        hint: String,
        route: Route,
        /// `auto` asked: a direct send the node refuses before a byte arrives falls back.
        may_fall_back: bool,
    },
    /// Check mode, before the artifact exists: it will be sent once produced.
    SendWhenProduced { artifact: String, dest: String },
    /// The far end is fine but the laptop's copy is missing, partial or different:
    /// make it again from the source (the far end is not touched).
    CopyToLaptop {
        artifact: String,
        from_host: String,
        path: String,
        why: String,
    },
    Chmod {
        dest: String,
        /// Checks that `dest` is still ferry's regular file (chmod follows symlinks).
        cmd: Cmd,
        /// What the operator would have typed.
        hint: String,
    },
}

impl Change for TransferChange {
    fn describe(&self) -> String {
        match self {
            TransferChange::Send {
                artifact,
                from_host,
                source,
                dest,
                size,
                offset,
                discard_part,
                route,
                ..
            } => {
                let how = if *offset > 0 {
                    format!(
                        ", resuming after {} already there ({offset} bytes; {} to send)",
                        crate::module::units::human(*offset),
                        crate::module::units::human(size - offset)
                    )
                } else if *discard_part {
                    " (the partial copy there does not match the source: starting over)".into()
                } else {
                    String::new()
                };
                let by = match route {
                    Route::Controller { reason: None } => String::new(),
                    other => format!("; {}", other.describe(from_host)),
                };
                format!(
                    "send {artifact} ({}) from {from_host}:{source} to {dest}{how}{by}",
                    crate::module::units::human(*size)
                )
            }
            TransferChange::RemoveTrust(r) => format!(
                "remove the temporary key {} an earlier direct transfer left ({} on this \
                 host, {} on {})",
                r.tag, r.authorized_keys, r.source_dir, r.source_host
            ),
            TransferChange::SendWhenProduced { artifact, dest } => {
                format!("send {artifact} to {dest} (once an earlier task has produced it)")
            }
            TransferChange::Chmod { dest, hint, .. } => {
                format!("set the mode of {dest}: {hint}")
            }
            TransferChange::CopyToLaptop {
                artifact,
                from_host,
                path,
                why,
            } => format!(
                "make the laptop copy {path} of {artifact} again from {from_host} (it is {why})"
            ),
        }
    }

    fn commands(&self) -> Vec<String> {
        match self {
            TransferChange::Send { hint, .. } => vec![hint.clone()],
            TransferChange::SendWhenProduced { .. }
            | TransferChange::CopyToLaptop { .. }
            | TransferChange::RemoveTrust(_) => Vec::new(),
            TransferChange::Chmod { hint, .. } => vec![hint.clone()],
        }
    }
}

/// `mode`, checked when the playbook is read.
fn checked_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    crate::module::checked(d, |mode: &Option<String>| match mode {
        Some(m) => parse_mode(m).map(drop).map_err(|e| e.to_string()),
        None => Ok(()),
    })
}

/// Parse an octal mode such as "0600" or "640".
pub fn parse_mode(text: &str) -> Result<u32, ModuleError> {
    let t = text.trim();
    if (3..=4).contains(&t.len()) && t.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        if let Ok(m) = u32::from_str_radix(t, 8) {
            return Ok(m);
        }
    }
    Err(ModuleError::Precondition(format!(
        "mode {text:?} is not an octal file mode such as \"0600\""
    )))
}

/// The digest `sha256sum` printed, if it succeeded.
fn sha256sum_digest(out: &ExecOutput) -> Option<String> {
    out.success()
        .then(|| {
            out.stdout_str()
                .split_whitespace()
                .next()
                .map(str::to_string)
        })
        .flatten()
}

async fn sha256_of_file(ctx: &HostReader, path: &str) -> Result<Option<String>, ModuleError> {
    let out = ctx.exec(&Cmd::new("sha256sum").arg(path)).await?;
    Ok(sha256sum_digest(&out))
}

async fn source_prefix_sha256(
    ctx: &HostReader,
    artifact: &Artifact,
    len: u64,
) -> Result<Option<String>, ModuleError> {
    let source = ctx.peer(&artifact.host).await?;
    let cmd = Cmd::new("head")
        .arg("-c")
        .arg(len.to_string())
        .arg(artifact.path.as_str())
        .pipe(Cmd::new("sha256sum"));
    let out = source.exec(&cmd, None).await?;
    Ok(sha256sum_digest(&out))
}

#[async_trait]
impl Module for Transfer {
    const VARS: crate::module::VarLists =
        &[crate::module::artifact_stream::VARS, &[&DIRECT_ADDRESS]];
    type Facts = TransferFacts;
    type Change = TransferChange;

    fn check_args(&self, at: &ArgCheck<'_>) -> Result<(), ArgError> {
        direct_route::check_route_arg(self.route.as_ref(), at)
    }

    /// The completed-migration guard's reason, when it leaves the transfer alone.
    fn notes(&self, f: &TransferFacts) -> Vec<String> {
        f.guard.iter().cloned().collect()
    }

    async fn facts(&self, probe: &Probe<'_>) -> Result<TransferFacts, ModuleError> {
        let mode = match &self.mode {
            Some(m) => parse_mode(m)?,
            None => DEFAULT_MODE,
        };
        let dest = probe.render_operand(&self.dest)?;
        let artifact = find_artifact(probe, &self.artifact).ok();
        let staged = StagedPath::of(&dest)?;
        // What holds each name, read without following symlinks; only what ferry
        // created is hashed, resumed or kept.
        let states = probe.exec_ok(&staged.state_cmd()).await?.stdout_str();
        let states = StagedStates::parse(&states)?;
        let taken = states.taken(&staged);
        let (dest_file, dest_mode) = match &states.dest {
            PathState::Ours { size, mode } => (
                sha256_of_file(probe, &dest).await?.map(|sha| (*size, sha)),
                Some(*mode),
            ),
            _ => (None, None),
        };
        let part_size = states.kept_part();
        let part = staged.part;
        let mut f = TransferFacts {
            host: probe.host.clone(),
            artifact_name: self.artifact.clone(),
            artifact_pending: artifact.is_none() && probe.predicted_artifact(&self.artifact),
            artifact,
            dest,
            mode,
            dest_file,
            dest_mode,
            part_size,
            part_sha256: None,
            source_prefix_sha256: None,
            taken,
            laptop_copy: None,
            direct: DirectFacts::new(direct_route::route_setting(probe, self.route.as_ref())?),
            guard: self.guard.as_ref().and_then(|g| {
                crate::module::kube::handed_over_guard(probe, &g.configmap, &g.store)
            }),
        };
        f.direct.trust_left = direct_route::trust_left(probe).await?;
        if let Some(a) = &f.artifact {
            f.laptop_copy = laptop_copy(probe, a).await?;
        }
        // Only worth hashing when a resume is possible and needed.
        let done = f
            .artifact
            .as_ref()
            .is_some_and(|a| f.dest_file == Some((a.size, a.sha256.clone())));
        if let (Some(a), Some(n), false) = (&f.artifact, f.part_size, done) {
            if n > 0 && n <= a.size {
                let (part_sha, src_sha) = tokio::join!(
                    sha256_of_file(probe, &part),
                    source_prefix_sha256(probe, a, n)
                );
                f.part_sha256 = part_sha?;
                f.source_prefix_sha256 = src_sha?;
            }
        }
        // The probe costs a few commands on both hosts: only when a send is due.
        if let (Some(a), false) = (&f.artifact, done) {
            let unavailable = if a.host == probe.host {
                Some(format!("the artifact is already on host {}", a.host))
            } else {
                direct_route::unavailable_for(probe, &staged.work)
            };
            let source = probe.peer(&a.host).await?;
            direct_route::look(probe, &a.host, &source, unavailable, &mut f.direct).await?;
        }
        Ok(f)
    }

    fn decide(&self, f: &TransferFacts) -> Result<Vec<TransferChange>, ModuleError> {
        decide(f)
    }

    async fn apply(
        &self,
        ctx: &TaskCtx,
        f: &TransferFacts,
        changes: &[TransferChange],
    ) -> Result<Applied, ModuleError> {
        let mut applied = Applied::changed();
        for c in changes {
            match c {
                TransferChange::RemoveTrust(record) => {
                    direct_route::remove_left(ctx, record, &mut applied).await?;
                }
                TransferChange::Chmod { cmd, .. } => {
                    ctx.exec_ok(cmd).await?;
                }
                TransferChange::CopyToLaptop { .. } => {
                    let artifact = f.artifact.as_ref().ok_or_else(|| {
                        ModuleError::Internal("transfer planned without its artifact".into())
                    })?;
                    copy_to_laptop(ctx, artifact).await?;
                }
                TransferChange::SendWhenProduced { .. } => {
                    // Only planned when an earlier task of a check run would make the
                    // artifact: check mode, where apply never runs.
                    return Err(ModuleError::Internal(
                        "transfer planned without its artifact".into(),
                    ));
                }
                TransferChange::Send {
                    offset,
                    route,
                    may_fall_back,
                    ..
                } => {
                    let artifact = f.artifact.as_ref().ok_or_else(|| {
                        ModuleError::Internal("transfer planned without its artifact".into())
                    })?;
                    direct::send_by_route(
                        ctx,
                        f,
                        artifact,
                        *offset,
                        route,
                        *may_fall_back,
                        &mut applied,
                    )
                    .await?;
                }
            }
        }
        if let (Some(name), Some(a)) = (&self.record_as, &f.artifact) {
            ctx.record_artifact(Artifact {
                name: name.clone(),
                host: ctx.host.clone(),
                path: f.dest.clone(),
                sha256: a.sha256.clone(),
                size: a.size,
            })?;
        }
        Ok(applied)
    }
}

/// Stream `artifact` from byte `offset` into `dest` on this task's host and check it
/// there. On any failure, what arrived stays in `dest.part` for a resume.
pub async fn send(
    ctx: &TaskCtx,
    artifact: &Artifact,
    dest: &str,
    mode: u32,
    offset: u64,
) -> Result<(), ModuleError> {
    let receive = receive_cmd(dest, artifact, mode, offset > 0);
    let mut far = ctx.transport.exec_stream(&receive).await?;
    let sent = stream_artifact(ctx, artifact, offset, sha2::Sha256::new(), &mut far.stdin).await;
    // EOF to the far end in every case (on success the pump already shut it down), then
    // its verdict.
    drop(far.stdin);
    let mut printed = Vec::new();
    let read = far.stdout.read_to_end(&mut printed).await;
    let exit = far.exit.await?;
    let far_err = || {
        ctx.secrets
            .mask(String::from_utf8_lossy(&exit.stderr).trim())
    };
    if is_disk_full(&String::from_utf8_lossy(&exit.stderr)) {
        return Err(ModuleError::DiskFull(
            receive_disk_full(ctx, artifact, dest, &far_err()).await,
        ));
    }
    let pumped = match sent {
        Ok(p) => p,
        Err(e) if exit.status != Some(0) && !exit.stderr.is_empty() => {
            return Err(ModuleError::Remote {
                what: format!("{e}; on {}", ctx.host),
                detail: far_err(),
            })
        }
        Err(e) => return Err(e),
    };
    if offset == 0 && pumped.sha256 != artifact.sha256 {
        return Err(ModuleError::Precondition(format!(
            "artifact {} on {} changed since it was made (read sha256 {}, recorded {}); \
             re-run the backup tasks",
            artifact.path, artifact.host, pumped.sha256, artifact.sha256
        )));
    }
    if offset + pumped.bytes != artifact.size {
        return Err(ModuleError::Precondition(format!(
            "artifact {} on {} has {} bytes, recorded {}; re-run the backup tasks",
            artifact.path,
            artifact.host,
            offset + pumped.bytes,
            artifact.size
        )));
    }
    if exit.status != Some(0) {
        return Err(ModuleError::Remote {
            what: format!(
                "receiving {} into {dest} on {} failed ({})",
                artifact.name,
                ctx.host,
                match exit.status {
                    Some(c) => format!("exit {c}"),
                    None => "killed by a signal".into(),
                }
            ),
            detail: far_err(),
        });
    }
    read.map_err(|source| ModuleError::Io {
        what: "reading the far end's answer".into(),
        source,
    })?;
    let far_sha = String::from_utf8_lossy(&printed).trim().to_string();
    if far_sha != artifact.sha256 {
        return Err(ModuleError::ProofMismatch {
            what: format!("{dest} on {}", ctx.host),
            detail: format!("it has sha256 {far_sha:?}, expected {}", artifact.sha256),
        });
    }
    tracing::info!(
        host = %ctx.host,
        "received {} ({} bytes, {} sent) as {dest}, sha256 {}",
        artifact.name,
        artifact.size,
        pumped.bytes,
        artifact.sha256
    );
    Ok(())
}

/// The message for a receive that filled the far end's filesystem: where, how much
/// arrived and is still needed, the free space now, and that the part is kept.
pub(crate) async fn receive_disk_full(
    ctx: &TaskCtx,
    artifact: &Artifact,
    dest: &str,
    stderr: &str,
) -> String {
    let part = part_path(dest);
    let kept = ctx
        .exec(&Cmd::new("stat").arg("-c").arg("%s").arg(part.as_str()))
        .await
        .ok()
        .and_then(|o| o.stdout_str().trim().parse::<u64>().ok());
    let free = disk_free_text(ctx, &crate::module::kube::parent_dir(&part)).await;
    let arrived = match kept {
        Some(n) => format!(
            "{n} of {} bytes arrived, {} more needed",
            artifact.size,
            artifact.size.saturating_sub(n)
        ),
        None => format!("{} bytes are needed", artifact.size),
    };
    format!(
        "No space left on device on host {host} writing {part}: {arrived}; now {free}. The \
         partial upload is kept (a re-run resumes after it) and nothing else was deleted. \
         Free space there (or send {name} to a larger disk) and re-run. ({stderr})",
        host = ctx.host,
        name = artifact.name,
    )
}

/// Pure: what to do to have the artifact at `dest` with its recorded content and mode.
pub fn decide(f: &TransferFacts) -> Result<Vec<TransferChange>, ModuleError> {
    if !f.taken.is_empty() {
        return Err(ModuleError::Precondition(format!(
            "on host {}: {}",
            f.host,
            f.taken.join("; ")
        )));
    }
    if f.guard.is_some() && f.artifact.is_none() {
        return Ok(Vec::new());
    }
    let Some(a) = &f.artifact else {
        if f.artifact_pending {
            return Ok(vec![TransferChange::SendWhenProduced {
                artifact: f.artifact_name.clone(),
                dest: f.dest.clone(),
            }]);
        }
        return Err(ModuleError::Precondition(format!(
            "artifact `{}` has not been produced yet: the task that makes it (on the old \
             host) must run first",
            f.artifact_name
        )));
    };
    let mut changes: Vec<TransferChange> = f
        .direct
        .trust_left
        .iter()
        .cloned()
        .map(TransferChange::RemoveTrust)
        .collect();
    if f.guard.is_some() {
        return Ok(changes);
    }
    changes.extend(far_end_changes(f, a)?);
    // A send from the start makes the laptop's copy on the way; otherwise (nothing to
    // send, or a resume, which sends only the rest) a copy that is not whole is made
    // again on its own.
    let sends_all = changes
        .iter()
        .any(|c| matches!(c, TransferChange::Send { offset: 0, .. }));
    if let (Some(copy), false) = (&f.laptop_copy, sends_all) {
        if let Some(why) = copy.why() {
            changes.push(TransferChange::CopyToLaptop {
                artifact: a.name.clone(),
                from_host: a.host.clone(),
                path: copy.path.clone(),
                why,
            });
        }
    }
    Ok(changes)
}

/// Pure: what the far end needs to hold the artifact at `dest` with its mode.
fn far_end_changes(f: &TransferFacts, a: &Artifact) -> Result<Vec<TransferChange>, ModuleError> {
    if f.dest_file.as_ref() == Some(&(a.size, a.sha256.clone())) {
        if f.dest_mode == Some(f.mode) {
            return Ok(Vec::new());
        }
        return Ok(vec![TransferChange::Chmod {
            dest: f.dest.clone(),
            cmd: chmod_cmd(&f.dest, f.mode),
            hint: Cmd::new("chmod")
                .arg(format!("{:04o}", f.mode))
                .arg(f.dest.as_str())
                .display(),
        }]);
    }
    let resumable = matches!(
        (f.part_size, &f.part_sha256, &f.source_prefix_sha256),
        (Some(n), Some(p), Some(s)) if n > 0 && n <= a.size && p == s
    );
    let offset = if resumable {
        f.part_size.unwrap_or(0)
    } else {
        0
    };
    let receive = if offset > 0 {
        Cmd::new("cat")
            .arg(f.part())
            .and(Cmd::new("tee").arg("-a").arg(f.part()))
    } else {
        Cmd::new("tee").arg(f.part())
    };
    let source = if offset > 0 {
        Cmd::new("tail")
            .arg("-c")
            .arg(format!("+{}", offset + 1))
            .arg(a.path.as_str())
    } else {
        Cmd::new("cat").arg(a.path.as_str())
    };
    let route = choose(f.direct.route, &f.direct.probe)?;
    let receive = if offset > 0 {
        format!("{{ {}; }}", receive.display())
    } else {
        receive.display()
    };
    // For reading only (never run), so plain formatting is fine here.
    let hint = match &route {
        Route::Controller { .. } => format!(
            "ssh {} {} | ssh {} '{receive}' | sha256sum, then mv {} {}",
            a.host,
            source.display(),
            f.host,
            f.part(),
            f.dest
        ),
        Route::Direct(t) => format!(
            "on {}: {} | ssh -i <temporary key> -p {} {}@{} '{receive}' | sha256sum, then mv \
             {} {}",
            a.host,
            source.display(),
            t.port,
            t.user,
            t.addr,
            f.part(),
            f.dest
        ),
    };
    Ok(vec![TransferChange::Send {
        artifact: a.name.clone(),
        from_host: a.host.clone(),
        source: a.path.clone(),
        dest: f.dest.clone(),
        size: a.size,
        offset,
        discard_part: f.part_size.is_some_and(|n| n > 0) && !resumable,
        hint,
        may_fall_back: f.direct.route == RouteSetting::Auto,
        route,
    }])
}
