//! `storage_export`: the blob storage (dist files and artifacts) as one archive on the
//! old host, with top-level `dist/` and `artifact/`, plus the content fingerprint the
//! import is verified against.
//!
//! ```toml
//! [task.storage_export]
//! container = "packagist-ui"
//! data_dir = "/data/packagist"            # on the host
//! dest = "{{ backup_dir_old }}/packagist_storage.tar.gz"
//! export_timeout = 600                     # seconds (or "10m"), then the tar fallback
//! method = "auto"                          # auto | console | tar
//! gzip_level = 1                           # tar method only: 1 (fast) … 9 (small)
//! ```
//!
//! `auto` runs the vendor's console export when the container runs, and falls back to
//! the vendor's tar method (with the `dist`/`artifact` renames) when the export fails or
//! times out, or when the container is stopped.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::command::Cmd;
use crate::fingerprint::StorageFingerprint;
use crate::module::artifact::write_artifact;
use crate::module::docker::ContainerBackup;
use crate::module::units::Seconds;
use crate::module::{Applied, Change, Module, ModuleError, Prediction, Probe, TaskCtx};
use crate::packagist::completed::old_side_policy;
use crate::packagist::storage::{content_hash_cmd, storage_find_cmd};
use crate::playbook::template::Template;

fn default_artifact() -> String {
    "packagist_storage".into()
}

/// `gzip_level`, checked when the playbook is read.
fn gzip_level<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    crate::module::checked(d, |level: &Option<u8>| match level {
        Some(l) if !(1..=9).contains(l) => Err(format!(
            "gzip_level = {l}: gzip takes 1 (fast) to 9 (small)"
        )),
        _ => Ok(()),
    })
}

/// Inside the container, where the console leaves the archive.
const CONSOLE_ARCHIVE: &str = "/tmp/storage.tar.gz";
const CONSOLE: &str = "/srv/manager/bin/console";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportMethod {
    #[default]
    Auto,
    Console,
    Tar,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageExport {
    pub container: Template,
    pub data_dir: Template,
    pub dest: Template,
    pub export_timeout: Option<Seconds>,
    #[serde(default)]
    pub method: ExportMethod,
    #[serde(default = "default_artifact")]
    pub artifact: String,
    /// gzip level of the tar method; unset, gzip's default (the vendor's `tar -czf`).
    /// Packages are zip files already: level 1 is several times faster for about the
    /// same size, which is downtime saved.
    #[serde(default, deserialize_with = "gzip_level")]
    pub gzip_level: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StorageExportFacts {
    #[serde(flatten)]
    pub backup: ContainerBackup,
    pub data_dir: String,
    /// Cheap digest of the source tree (paths, sizes, times) now and when exported.
    pub tree_stamp: String,
    pub recorded_tree_stamp: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum StorageExportChange {
    /// Console export with a timeout, falling back to `tar` on failure.
    Console {
        export: Cmd,
        copy_out: Cmd,
        cleanup: Cmd,
        fallback: Option<Cmd>,
    },
    Tar(Cmd),
}

impl Change for StorageExportChange {
    fn describe(&self) -> String {
        match self {
            StorageExportChange::Console {
                fallback: Some(_), ..
            } => "export storage with the console (tar fallback on timeout)".into(),
            StorageExportChange::Console { .. } => "export storage with the console".into(),
            StorageExportChange::Tar(_) => "archive storage with tar".into(),
        }
    }
    fn commands(&self) -> Vec<String> {
        match self {
            StorageExportChange::Console {
                export,
                copy_out,
                cleanup,
                ..
            } => {
                vec![export.display(), copy_out.display(), cleanup.display()]
            }
            StorageExportChange::Tar(c) => vec![c.display()],
        }
    }
}

/// The vendor's fallback, streaming to stdout: `tar -cz` of `composer` and `artifacts`
/// renamed `dist` and `artifact`; with `gzip_level`, tar's output goes through
/// `gzip -N` instead (the same `.tar.gz`).
pub fn tar_cmd(data_dir: &str, gzip_level: Option<u8>) -> Cmd {
    let tar = |mode: &str| {
        Cmd::new("tar")
            .arg("-C")
            .arg(data_dir)
            .arg(mode)
            .arg("-")
            .args(crate::packagist::storage_stream::VENDOR_TRANSFORM)
            .args(["composer", "artifacts"])
    };
    match gzip_level {
        None => tar("-czf"),
        Some(level) => tar("-cf").pipe(Cmd::new("gzip").arg(format!("-{level}")).arg("-n")),
    }
}

/// `find` the two storage dirs, one line per file: `path<TAB>size<TAB>mtime`, hashed.
fn tree_stamp_cmd(data_dir: &str) -> Cmd {
    storage_find_cmd(data_dir, "%P\\t%s\\t%T@\\n", true)
        .pipe(Cmd::new("env").arg("LC_ALL=C").arg("sort"))
        .pipe(Cmd::new("sha256sum"))
}

#[async_trait]
impl Module for StorageExport {
    const VARS: crate::module::VarLists = &[crate::module::docker::VARS];
    type Facts = StorageExportFacts;
    type Change = StorageExportChange;

    async fn facts(&self, probe: &Probe<'_>) -> Result<StorageExportFacts, ModuleError> {
        let mut backup =
            ContainerBackup::read(probe, &self.container, &self.dest, &self.artifact).await?;
        old_side_policy(probe, "storage", &mut backup);
        let data_dir = probe.render_operand(&self.data_dir)?;
        let tree = probe.exec_ok(&tree_stamp_cmd(&data_dir)).await?;
        let recorded_tree_stamp = probe.own_fingerprint("tree_stamp");
        Ok(StorageExportFacts {
            backup,
            data_dir,
            tree_stamp: tree
                .stdout_str()
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string(),
            recorded_tree_stamp,
        })
    }

    /// The changes, applied, make the artifact (a check run's later tasks count on it).
    fn predicts(&self, changes: &[StorageExportChange]) -> Vec<Prediction> {
        Prediction::artifact_if_changed(changes, &self.artifact)
    }

    /// Why the old storage is left alone (the migration completed), when it is.
    fn notes(&self, f: &StorageExportFacts) -> Vec<String> {
        f.backup.leave_alone.iter().cloned().collect()
    }

    fn decide(&self, f: &StorageExportFacts) -> Result<Vec<StorageExportChange>, ModuleError> {
        decide(self, f)
    }

    async fn apply(
        &self,
        ctx: &TaskCtx,
        f: &StorageExportFacts,
        changes: &[StorageExportChange],
    ) -> Result<Applied, ModuleError> {
        // What the archive holds, file by file: the import is verified against it. The
        // source does not change while the app is stopped, so the files are hashed at
        // the same time as the archive is written (the export is gzip-bound, one core).
        let hash_cmd = content_hash_cmd(&f.data_dir);
        let (exported, hashes) = tokio::join!(self.export(ctx, f, changes), ctx.exec_ok(&hash_cmd));
        let applied = exported?;
        let hashes = hashes?;
        let fp = StorageFingerprint::parse_sha256sum(&hashes.stdout_str())?;
        ctx.record_fingerprint("storage", serde_json::to_value(&fp).unwrap_or_default())?;
        ctx.record_fingerprint(
            "tree_stamp",
            serde_json::Value::String(f.tree_stamp.clone()),
        )?;
        Ok(applied)
    }
}

impl StorageExport {
    /// Write the archive: the console export (with the tar fallback) or tar.
    async fn export(
        &self,
        ctx: &TaskCtx,
        f: &StorageExportFacts,
        changes: &[StorageExportChange],
    ) -> Result<Applied, ModuleError> {
        let mut applied = Applied::changed();
        for c in changes {
            match c {
                StorageExportChange::Console {
                    export,
                    copy_out,
                    cleanup,
                    fallback,
                } => {
                    let out = ctx.exec(export).await?;
                    if out.success() {
                        write_artifact(ctx, &self.artifact, copy_out.clone(), &f.backup.dest)
                            .await?;
                        ctx.exec_ok(cleanup).await?;
                    } else {
                        let why = match out.status {
                            Some(124) => "timed out".to_string(),
                            _ => format!("failed: {}", out.stderr_str().trim()),
                        };
                        let Some(tar) = fallback else {
                            return Err(ModuleError::Failed(format!("console export {why}")));
                        };
                        let msg = format!("console export {why}; used the tar fallback");
                        tracing::warn!(host = %ctx.host, "{msg}");
                        applied.warnings.push(msg);
                        // Whatever a late export leaves in the container is not ours to keep.
                        let _ = ctx.exec(cleanup).await;
                        write_artifact(ctx, &self.artifact, tar.clone(), &f.backup.dest).await?;
                    }
                }
                StorageExportChange::Tar(tar) => {
                    write_artifact(ctx, &self.artifact, tar.clone(), &f.backup.dest).await?;
                }
            }
        }
        Ok(applied)
    }
}

/// Pure: export unless the recorded archive still matches an unchanged source tree.
pub fn decide(
    args: &StorageExport,
    f: &StorageExportFacts,
) -> Result<Vec<StorageExportChange>, ModuleError> {
    if f.backup.leave_alone.is_some() {
        return Ok(Vec::new());
    }
    if !f.backup.redo
        && f.backup.recorded_sha256.is_some()
        && f.recorded_tree_stamp.as_deref() == Some(&f.tree_stamp)
    {
        return Ok(Vec::new());
    }
    if let Some(level) = args.gzip_level.filter(|l| !(1..=9).contains(l)) {
        return Err(ModuleError::Precondition(format!(
            "gzip_level = {level}: gzip takes 1 (fast) to 9 (small)"
        )));
    }
    let tar = tar_cmd(&f.data_dir, args.gzip_level);
    let use_console = match args.method {
        ExportMethod::Tar => false,
        ExportMethod::Console if !f.backup.running => {
            return Err(ModuleError::Precondition(format!(
                "method = \"console\" needs container {} running, and it is not",
                f.backup.container
            )))
        }
        ExportMethod::Console => true,
        ExportMethod::Auto => f.backup.exists && f.backup.running,
    };
    if !use_console {
        return Ok(vec![StorageExportChange::Tar(tar)]);
    }
    let exec = || f.backup.exec();
    Ok(vec![StorageExportChange::Console {
        export: Cmd::new("timeout")
            .arg(args.export_timeout.map_or(600, |s| s.0).to_string())
            .arg(f.backup.docker.as_str())
            .arg("exec")
            .arg(f.backup.container.as_str())
            .args([CONSOLE, "packagist:self-hosted:migrate-storage", "export"]),
        copy_out: exec().arg("cat").arg(CONSOLE_ARCHIVE),
        cleanup: exec().args(["rm", "-f", CONSOLE_ARCHIVE]),
        fallback: (args.method == ExportMethod::Auto).then_some(tar),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(method: ExportMethod) -> StorageExport {
        StorageExport {
            container: Template::new("packagist-ui"),
            data_dir: Template::new("/data/packagist"),
            dest: Template::new("/b/s.tgz"),
            export_timeout: Some(Seconds(5)),
            method,
            artifact: default_artifact(),
            gzip_level: None,
        }
    }

    fn facts(running: bool) -> StorageExportFacts {
        StorageExportFacts {
            backup: ContainerBackup {
                running,
                ..ContainerBackup::running("packagist-ui", "/b/s.tgz")
            },
            data_dir: "/data/packagist".into(),
            tree_stamp: "t1".into(),
            recorded_tree_stamp: None,
        }
    }

    #[test]
    fn running_ui_uses_console_with_timeout_and_tar_fallback() {
        let c = decide(&args(ExportMethod::Auto), &facts(true)).unwrap();
        let StorageExportChange::Console {
            export, fallback, ..
        } = &c[0]
        else {
            panic!("{c:?}")
        };
        assert_eq!(
            export.display(),
            "timeout 5 docker exec packagist-ui /srv/manager/bin/console packagist:self-hosted:migrate-storage export"
        );
        let words = shlex::split(&fallback.as_ref().unwrap().to_shell()).unwrap();
        assert_eq!(
            words.join(" "),
            "tar -C /data/packagist -czf - --transform s/^composer/dist/ --transform s/^artifacts/artifact/ composer artifacts"
        );
    }

    #[test]
    fn stopped_ui_goes_straight_to_tar() {
        let c = decide(&args(ExportMethod::Auto), &facts(false)).unwrap();
        assert!(matches!(c[0], StorageExportChange::Tar(_)));
        assert!(decide(&args(ExportMethod::Console), &facts(false)).is_err());
    }

    #[test]
    fn unchanged_tree_with_recorded_archive_is_ok() {
        let mut f = facts(true);
        f.backup.recorded_sha256 = Some("x".into());
        f.recorded_tree_stamp = Some("t1".into());
        assert!(decide(&args(ExportMethod::Auto), &f).unwrap().is_empty());
        f.recorded_tree_stamp = Some("t0".into());
        assert_eq!(decide(&args(ExportMethod::Auto), &f).unwrap().len(), 1);
    }

    #[test]
    fn gzip_level_pipes_tar_through_gzip_and_is_checked() {
        let mut a = args(ExportMethod::Tar);
        a.gzip_level = Some(1);
        let c = decide(&a, &facts(false)).unwrap();
        let StorageExportChange::Tar(tar) = &c[0] else {
            panic!("{c:?}")
        };
        let words = shlex::split(&tar.to_shell()).unwrap();
        assert_eq!(
            words.join(" "),
            "tar -C /data/packagist -cf - --transform s/^composer/dist/ --transform s/^artifacts/artifact/ composer artifacts | gzip -1 -n"
        );
        a.gzip_level = Some(0);
        let err = decide(&a, &facts(false)).unwrap_err().to_string();
        assert!(err.contains("gzip_level = 0"), "{err}");
    }
}
