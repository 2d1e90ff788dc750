//! `pg_dump`: dump a PostgreSQL database running in a Docker container to a file on the
//! host (the artifact), and record the database's fingerprint.
//!
//! ```toml
//! [task.pg_dump]
//! container = "packagist-postgres"
//! database = "packagist_db"
//! user = "postgres"
//! dest = "{{ backup_dir_old }}/packagist_db.sql"
//! artifact = "packagist_db"         # the name later steps use to find it
//! ```
//!
//! Decides from real state plus the journal: the dump is current when the file still has
//! the size and time recorded when it was written and, if the database is running, its
//! fingerprint still equals the one recorded then. Otherwise it dumps again (starting
//! the container first if it was stopped).

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::command::Cmd;
use crate::fingerprint::{PgFingerprint, PG_FINGERPRINT_SQL};
use crate::module::artifact::write_artifact;
use crate::module::docker::ContainerBackup;
use crate::module::{Applied, Change, HostReader, Module, ModuleError, Prediction, Probe, TaskCtx};
use crate::packagist::completed::old_side_policy;
use crate::playbook::template::Template;

fn default_artifact() -> String {
    "packagist_db".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgDump {
    pub container: Template,
    pub database: Template,
    pub user: Option<Template>,
    pub dest: Template,
    #[serde(default = "default_artifact")]
    pub artifact: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PgDumpFacts {
    #[serde(flatten)]
    pub backup: ContainerBackup,
    pub database: String,
    pub user: String,
    pub recorded_fingerprint: Option<PgFingerprint>,
    pub current_fingerprint: Option<PgFingerprint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum PgDumpChange {
    StartContainer(Cmd),
    Dump(Cmd),
}

impl Change for PgDumpChange {
    fn describe(&self) -> String {
        match self {
            PgDumpChange::StartContainer(_) => "start the database container to dump it".into(),
            PgDumpChange::Dump(_) => "dump the database".into(),
        }
    }
    fn commands(&self) -> Vec<String> {
        match self {
            PgDumpChange::StartContainer(c) | PgDumpChange::Dump(c) => vec![c.display()],
        }
    }
}

impl PgDumpFacts {
    fn exec(&self, argv: &[&str]) -> Cmd {
        self.backup.exec().args(argv.iter().copied())
    }

    fn dump_cmd(&self) -> Cmd {
        // --clean --if-exists as the vendor documents: the restore overwrites.
        self.exec(&["pg_dump", "--clean", "--if-exists", "-U"])
            .arg(self.user.as_str())
            .arg("-d")
            .arg(self.database.as_str())
    }

    fn fingerprint_cmd(&self) -> Cmd {
        Cmd::new(self.backup.docker.as_str())
            .arg("exec")
            .arg("-i")
            .arg(self.backup.container.as_str())
            .args(["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-U"])
            .arg(self.user.as_str())
            .arg("-d")
            .arg(self.database.as_str())
            .arg("-f")
            .arg("-")
    }
}

/// Fingerprint of a database in a container.
async fn fingerprint(ctx: &HostReader, f: &PgDumpFacts) -> Result<PgFingerprint, ModuleError> {
    let out = ctx
        .exec_ok_with_input(&f.fingerprint_cmd(), PG_FINGERPRINT_SQL.as_bytes())
        .await?;
    Ok(PgFingerprint::parse(&out.stdout_str())?)
}

/// Wait (bounded) until PostgreSQL in the container accepts connections.
async fn wait_ready(ctx: &HostReader, f: &PgDumpFacts) -> Result<(), ModuleError> {
    let probe = f.exec(&["pg_isready", "-q", "-U"]).arg(f.user.as_str());
    for _ in 0..120 {
        if ctx.exec(&probe).await?.success() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    Err(ModuleError::Timeout {
        what: format!(
            "PostgreSQL in {} did not accept connections",
            f.backup.container
        ),
        secs: 60,
    })
}

#[async_trait]
impl Module for PgDump {
    const VARS: crate::module::VarLists = &[crate::module::docker::VARS];
    type Facts = PgDumpFacts;
    type Change = PgDumpChange;

    async fn facts(&self, probe: &Probe<'_>) -> Result<PgDumpFacts, ModuleError> {
        let mut backup =
            ContainerBackup::read(probe, &self.container, &self.dest, &self.artifact).await?;
        old_side_policy(probe, "postgres", &mut backup);
        let mut facts = PgDumpFacts {
            backup,
            database: probe.render_operand(&self.database)?,
            user: probe.render_or(&self.user, "postgres")?,
            recorded_fingerprint: probe.own_fingerprint("pg"),
            current_fingerprint: None,
        };
        if facts.backup.worth_comparing() {
            facts.current_fingerprint = Some(fingerprint(probe, &facts).await?);
        }
        Ok(facts)
    }

    /// The changes, applied, make the artifact (a check run's later tasks count on it).
    fn predicts(&self, changes: &[PgDumpChange]) -> Vec<Prediction> {
        Prediction::artifact_if_changed(changes, &self.artifact)
    }

    /// Why the old database is left alone (the migration completed), when it is.
    fn notes(&self, f: &PgDumpFacts) -> Vec<String> {
        f.backup.leave_alone.iter().cloned().collect()
    }

    fn decide(&self, f: &PgDumpFacts) -> Result<Vec<PgDumpChange>, ModuleError> {
        decide(f)
    }

    async fn apply(
        &self,
        ctx: &TaskCtx,
        f: &PgDumpFacts,
        changes: &[PgDumpChange],
    ) -> Result<Applied, ModuleError> {
        for c in changes {
            match c {
                PgDumpChange::StartContainer(cmd) => {
                    ctx.exec_ok(cmd).await?;
                    wait_ready(ctx, f).await?;
                }
                PgDumpChange::Dump(cmd) => {
                    // With the app stopped nothing writes, so the fingerprint taken
                    // beside the dump is the state the dump holds; the restore is
                    // checked against it. Side by side: the dump is pg_dump's
                    // work, the fingerprint the server's hashing.
                    let (written, fp) = tokio::join!(
                        write_artifact(ctx, &self.artifact, cmd.clone(), &f.backup.dest),
                        fingerprint(ctx, f)
                    );
                    let (artifact, _) = written?;
                    let fp = fp?;
                    ctx.record_fingerprint("pg", serde_json::to_value(&fp).unwrap_or_default())?;
                    tracing::info!(
                        host = %ctx.host,
                        "dumped {} tables, {} rows, {} bytes to {}",
                        fp.tables.len(),
                        fp.rows(),
                        artifact.size,
                        artifact.path
                    );
                }
            }
        }
        Ok(Applied::changed())
    }
}

/// Pure: dump unless the recorded dump is still current.
pub fn decide(f: &PgDumpFacts) -> Result<Vec<PgDumpChange>, ModuleError> {
    if f.backup.leave_alone.is_some() {
        return Ok(Vec::new());
    }
    f.backup.require_container()?;
    let current = !f.backup.redo
        && f.backup.recorded_sha256.is_some()
        && f.recorded_fingerprint.is_some()
        && (!f.backup.running || f.current_fingerprint == f.recorded_fingerprint);
    if current {
        return Ok(Vec::new());
    }
    let mut changes: Vec<_> = f
        .backup
        .start_if_stopped()
        .map(PgDumpChange::StartContainer)
        .into_iter()
        .collect();
    changes.push(PgDumpChange::Dump(f.dump_cmd()));
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> PgDumpFacts {
        PgDumpFacts {
            backup: ContainerBackup::running("packagist-postgres", "/b/packagist_db.sql"),
            database: "packagist_db".into(),
            user: "postgres".into(),
            recorded_fingerprint: None,
            current_fingerprint: None,
        }
    }

    fn fp(rows: u64) -> PgFingerprint {
        PgFingerprint::parse(&format!("public.t|{rows}|abc")).unwrap()
    }

    #[test]
    fn a_completed_migration_leaves_even_a_stopped_container_alone() {
        let mut f = facts();
        f.backup.running = false;
        assert_eq!(
            decide(&f).unwrap().len(),
            2,
            "start and dump without the guard"
        );
        f.backup.leave_alone = Some("completed".into());
        assert!(decide(&f).unwrap().is_empty());
    }

    #[test]
    fn an_overwrite_after_completion_dumps_again_though_the_dump_still_matches() {
        let mut f = facts();
        f.backup.running = false;
        f.backup.recorded_sha256 = Some("abc".into());
        f.recorded_fingerprint = Some(fp(3));
        assert!(
            decide(&f).unwrap().is_empty(),
            "stopped and recorded: current"
        );
        f.backup.redo = true;
        assert_eq!(decide(&f).unwrap().len(), 2, "start the container and dump");
    }

    #[test]
    fn first_run_dumps_with_the_vendor_flags_and_no_tty() {
        let c = decide(&facts()).unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!(
            c[0].commands()[0],
            "docker exec packagist-postgres pg_dump --clean --if-exists -U postgres -d packagist_db"
        );
    }

    #[test]
    fn recorded_dump_of_unchanged_db_is_ok() {
        let mut f = facts();
        f.backup.recorded_sha256 = Some("x".into());
        f.recorded_fingerprint = Some(fp(3));
        f.current_fingerprint = Some(fp(3));
        assert!(decide(&f).unwrap().is_empty());
        // Stopped since: nothing can have changed; still ok.
        f.backup.running = false;
        f.current_fingerprint = None;
        assert!(decide(&f).unwrap().is_empty());
    }

    #[test]
    fn changed_db_or_file_dumps_again() {
        let mut f = facts();
        f.backup.recorded_sha256 = Some("x".into());
        f.recorded_fingerprint = Some(fp(3));
        f.current_fingerprint = Some(fp(4));
        assert_eq!(decide(&f).unwrap().len(), 1);
        let mut f = facts();
        f.backup.running = false; // file changed (no recorded sha) and db stopped: start, dump
        let c = decide(&f).unwrap();
        assert_eq!(c[0].commands()[0], "docker start packagist-postgres");
        assert!(matches!(c[1], PgDumpChange::Dump(_)));
    }
}
