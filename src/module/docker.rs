//! Docker facts on a host: `docker inspect` of named containers, and the docker binary.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::command::Cmd;
use crate::module::artifact::{file_stamp, recorded_artifact, FileStamp};
use crate::module::{HostReader, ModuleError, VarDecl, VarKind};
use crate::playbook::template::Template;

// ---------------------------------------------------------------------------------------
// Docker

/// The part of `docker inspect` the migration reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    pub name: String,
    pub running: bool,
    pub image: String,
    pub labels: BTreeMap<String, String>,
}

/// `docker inspect` of `names`; containers that do not exist are absent from the map.
/// Never a TTY; one round trip for all names.
pub async fn docker_inspect(
    ctx: &HostReader,
    names: &[String],
) -> Result<BTreeMap<String, ContainerState>, ModuleError> {
    if names.is_empty() {
        return Ok(BTreeMap::new());
    }
    let docker = docker_bin(ctx);
    let cmd = Cmd::new(docker).arg("inspect").args(names.iter().cloned());
    // Exit 1 with "No such object" for missing ones, but the JSON for the others.
    let out = ctx.exec(&cmd).await?;
    let text = out.stdout_str();
    if !out.success() && !out.stderr_str().contains("No such") {
        return Err(ModuleError::CommandFailed {
            cmd: cmd.display(),
            status: format!("{:?}", out.status),
            stderr: out.stderr_str().trim().to_string(),
        });
    }
    parse_docker_inspect(&text)
}

/// Parse `docker inspect` JSON (an array of containers).
pub fn parse_docker_inspect(text: &str) -> Result<BTreeMap<String, ContainerState>, ModuleError> {
    if text.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    let v: Vec<Value> = serde_json::from_str(text).map_err(|e| ModuleError::Remote {
        what: "cannot read docker inspect output".into(),
        detail: e.to_string(),
    })?;
    let mut map = BTreeMap::new();
    for c in v {
        let name = c["Name"]
            .as_str()
            .unwrap_or("")
            .trim_start_matches('/')
            .to_string();
        let labels = c["Config"]["Labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default();
        map.insert(
            name.clone(),
            ContainerState {
                name,
                running: c["State"]["Running"].as_bool().unwrap_or(false),
                image: c["Config"]["Image"].as_str().unwrap_or("").to_string(),
                labels,
            },
        );
    }
    Ok(map)
}

/// Host var: the docker client to call on the host (default `docker`).
pub const DOCKER_BIN: VarDecl = VarDecl::new("docker_bin", VarKind::Str);

/// The host vars [`docker_bin`] reads, for [`crate::module::Module::vars`].
pub const VARS: &[&VarDecl] = &[&DOCKER_BIN];

/// The docker client to call on the host (var `docker_bin`, default `docker`). `prepare`
/// has checked the var's kind; a module that did not declare it fails its debug tests.
pub fn docker_bin(ctx: &HostReader) -> String {
    match ctx.var_str_of(&DOCKER_BIN) {
        Ok(bin) => bin.unwrap_or("docker").to_string(),
        Err(e) => {
            debug_assert!(false, "{e}");
            tracing::error!("{e}");
            "docker".to_string()
        }
    }
}

// ---------------------------------------------------------------------------------------
// A backup out of a container

/// What a step that backs a container up to an artifact file on this host reads first
/// (`pg_dump`, `redis_backup`, `storage_export`): whether the container exists and runs,
/// and whether the file at `dest` is still the artifact an earlier run recorded. A
/// module's facts hold it `#[serde(flatten)]`, so its fields show as the facts' own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContainerBackup {
    pub container: String,
    pub docker: String,
    pub dest: String,
    pub exists: bool,
    pub running: bool,
    pub stamp: Option<FileStamp>,
    /// The artifact recorded by an earlier run, if the file still matches it.
    pub recorded_sha256: Option<String>,
    /// Why the backup must leave the container alone, set by the caller (e.g. the
    /// migration completed): no change then, and the reason is the task's note.
    pub leave_alone: Option<String>,
    /// Back up again even when the last backup still matches, set by the caller (the
    /// operator asked to migrate this store again): a stopped container may have run
    /// and changed since.
    pub redo: bool,
}

impl ContainerBackup {
    /// A backup is on record and the container runs: reading its live state (to see
    /// whether it still matches the backup) is possible and worth the query.
    pub fn worth_comparing(&self) -> bool {
        self.running && self.recorded_sha256.is_some()
    }

    /// `docker inspect` of `container`, and the stamp of `dest` against the record of
    /// artifact `artifact`.
    pub async fn read(
        ctx: &HostReader,
        container: &Template,
        dest: &Template,
        artifact: &str,
    ) -> Result<Self, ModuleError> {
        let container = ctx.render_operand(container)?;
        let states = docker_inspect(ctx, std::slice::from_ref(&container)).await?;
        let dest = ctx.render_operand(dest)?;
        let stamp = file_stamp(ctx, &dest).await?;
        let recorded = recorded_artifact(ctx, artifact, &stamp);
        Ok(ContainerBackup {
            exists: states.contains_key(&container),
            running: states.get(&container).is_some_and(|c| c.running),
            container,
            docker: docker_bin(ctx),
            dest,
            stamp,
            recorded_sha256: recorded.map(|a| a.sha256),
            leave_alone: None,
            redo: false,
        })
    }

    /// `docker exec <container>`, without a TTY.
    pub fn exec(&self) -> Cmd {
        Cmd::new(self.docker.as_str())
            .arg("exec")
            .arg(self.container.as_str())
    }

    /// A missing container is the operator's to fix: nothing to back up.
    pub fn require_container(&self) -> Result<(), ModuleError> {
        if self.exists {
            return Ok(());
        }
        Err(ModuleError::Precondition(format!(
            "no such container: {}",
            self.container
        )))
    }

    /// `docker start <container>` when it is stopped (the backup needs it running).
    pub fn start_if_stopped(&self) -> Option<Cmd> {
        (!self.running).then(|| {
            Cmd::new(self.docker.as_str())
                .arg("start")
                .arg(self.container.as_str())
        })
    }

    /// Test facts: `container` exists and runs, nothing recorded, `docker` the client.
    #[cfg(test)]
    pub fn running(container: &str, dest: &str) -> Self {
        ContainerBackup {
            container: container.into(),
            docker: "docker".into(),
            dest: dest.into(),
            exists: true,
            running: true,
            stamp: None,
            recorded_sha256: None,
            leave_alone: None,
            redo: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_inspect_parses_running_image_and_labels() {
        let json = r#"[{"Name":"/packagist-ui","State":{"Running":true},
            "Config":{"Image":"packagist/ui:1.12.10","Labels":{"com.packagist.version":"1.12.10"}}},
            {"Name":"/packagist-web","State":{"Running":false},"Config":{"Image":"busybox","Labels":null}}]"#;
        let m = parse_docker_inspect(json).unwrap();
        assert!(m["packagist-ui"].running);
        assert_eq!(m["packagist-ui"].image, "packagist/ui:1.12.10");
        assert_eq!(m["packagist-ui"].labels["com.packagist.version"], "1.12.10");
        assert!(!m["packagist-web"].running);
        assert!(parse_docker_inspect("").unwrap().is_empty());
        assert!(parse_docker_inspect("not json").is_err());
    }
}
