//! `fetch`: a file of the host copied to the laptop, into a folder per host.
//!
//! ```toml
//! [task.fetch]
//! src = "/etc/nginx/nginx.conf"    # a file on the host (a symlink is followed)
//! dest = "fetched"                 # laptop folder, relative to the playbook (or task file)
//! flat = false                     # true: dest is the file itself (or a folder ending in /)
//! ```
//!
//! As Ansible's `fetch`, the copy lands in `<dest>/<host>/<src without its leading />`
//! (`fetched/web1/etc/nginx/nginx.conf`), so the same file from fifty hosts never
//! collides. Facts: the host file's size and sha256 (one remote command) and the laptop
//! copy's sha256; the same sha256 is ok. A fetch streams the file into
//! `<name>.part` beside the copy (created new, mode 0600, hashed on the way), checks
//! size and sha256 against the facts, fsyncs and renames it over the copy: a partial
//! file never takes the final name, and a file that changed on the host between facts
//! and fetch fails the task instead of landing half old, half new.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::command::Cmd;
use crate::module::artifact_stream::{local_sha256, LocalCopy};
use crate::module::{Applied, ArgCheck, ArgError, Change, Module, ModuleError, Probe, TaskCtx};
use crate::modules::copy::{dest_facts, Dest};
use crate::playbook::template::Template;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fetch {
    pub src: Template,
    pub dest: Template,
    #[serde(default)]
    pub flat: bool,
}

/// The laptop copy as it is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Local {
    Missing,
    File {
        sha256: String,
    },
    /// A directory or something else in the way.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FetchFacts {
    pub host: String,
    /// The host file (its link resolved).
    pub src: String,
    /// What the host has there.
    pub remote: Dest,
    pub local_path: PathBuf,
    pub local: Local,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FetchChange {
    pub src: String,
    pub local_path: PathBuf,
    pub size: u64,
    pub sha256: String,
    pub existed: bool,
}

impl Change for FetchChange {
    fn describe(&self) -> String {
        format!(
            "{} {} from {} ({} bytes, sha256 {})",
            if self.existed { "replace" } else { "create" },
            self.local_path.display(),
            self.src,
            self.size,
            &self.sha256[..12.min(self.sha256.len())]
        )
    }
}

/// Pure: where the copy of `src` from `host` goes.
pub fn local_path(base: &Path, dest: &str, host: &str, src: &str, flat: bool) -> PathBuf {
    let dest = base.join(dest);
    let name = src.rsplit('/').next().unwrap_or(src);
    if flat {
        if dest.as_os_str().to_string_lossy().ends_with('/') {
            dest.join(name)
        } else {
            dest
        }
    } else {
        dest.join(host).join(src.trim_start_matches('/'))
    }
}

/// Pure: fetch when the laptop does not have the host's bytes.
pub fn decide(facts: &FetchFacts) -> Result<Vec<FetchChange>, ModuleError> {
    let (size, sha256) = match &facts.remote {
        Dest::File { size, sha256, .. } => (*size, sha256.clone()),
        Dest::Absent => {
            return Err(ModuleError::Precondition(format!(
                "{} has no file {}",
                facts.host, facts.src
            )))
        }
        Dest::Link(t) => {
            return Err(ModuleError::Precondition(format!(
                "{} on {} is a link to {t} that does not resolve",
                facts.src, facts.host
            )))
        }
        Dest::Other(kind) => {
            return Err(ModuleError::Precondition(format!(
                "{} on {} is a {kind}, not a file: fetch takes one file",
                facts.src, facts.host
            )))
        }
    };
    match &facts.local {
        Local::File { sha256: have } if *have == sha256 => Ok(Vec::new()),
        Local::Other => Err(ModuleError::Precondition(format!(
            "{} is in the way on this machine: not a file",
            facts.local_path.display()
        ))),
        local => Ok(vec![FetchChange {
            src: facts.src.clone(),
            local_path: facts.local_path.clone(),
            size,
            sha256,
            existed: matches!(local, Local::File { .. }),
        }]),
    }
}

/// The laptop copy's state (hashing a file that is there).
async fn local_state(path: &Path) -> Result<Local, ModuleError> {
    let io = |source| ModuleError::Io {
        what: format!("reading {}", path.display()),
        source,
    };
    match tokio::fs::symlink_metadata(path).await {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Local::Missing),
        Err(e) => return Err(io(e)),
        Ok(m) if !m.is_file() => return Ok(Local::Other),
        Ok(_) => {}
    }
    Ok(Local::File {
        sha256: local_sha256(path).await.map_err(io)?,
    })
}

#[async_trait]
impl Module for Fetch {
    type Facts = FetchFacts;
    type Change = FetchChange;

    fn check_args(&self, at: &ArgCheck<'_>) -> Result<(), ArgError> {
        let src = at.render(&self.src)?;
        if !src.starts_with('/') || src.ends_with('/') {
            return Err(ArgError::template(
                &self.src,
                format!("src {src:?}: the absolute path of a file on the host"),
            ));
        }
        if src.split('/').any(|part| part == "..") {
            return Err(ArgError::template(
                &self.src,
                format!("src {src:?}: no '..' (the copy's place on the laptop comes from it)"),
            ));
        }
        Ok(())
    }

    async fn facts(&self, probe: &Probe<'_>) -> Result<FetchFacts, ModuleError> {
        let given = probe.render_operand(&self.src)?;
        // The link's target, so the copy holds the file's bytes (and its path, the name
        // the operator gave).
        let resolved = probe
            .exec(&Cmd::new("readlink").arg("-f").arg("--").arg(&given))
            .await?;
        let src = match resolved.status {
            Some(0) if !resolved.stdout_str().trim().is_empty() => {
                resolved.stdout_str().trim().to_string()
            }
            _ => given.clone(),
        };
        let remote = dest_facts(probe, &src).await?;
        let dest = probe.render(&self.dest)?;
        let local_path = local_path(&probe.base_dir, &dest, &probe.host, &given, self.flat);
        let local = local_state(&local_path).await?;
        Ok(FetchFacts {
            host: probe.host.clone(),
            src,
            remote,
            local_path,
            local,
        })
    }

    fn decide(&self, facts: &FetchFacts) -> Result<Vec<FetchChange>, ModuleError> {
        decide(facts)
    }

    async fn apply(
        &self,
        ctx: &TaskCtx,
        _: &FetchFacts,
        changes: &[FetchChange],
    ) -> Result<Applied, ModuleError> {
        for change in changes {
            fetch(ctx, change).await?;
        }
        Ok(Applied::changed())
    }
}

async fn fetch(ctx: &TaskCtx, change: &FetchChange) -> Result<(), ModuleError> {
    let path = &change.local_path;
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) => (dir, name),
        _ => {
            return Err(ModuleError::Internal(format!(
                "fetch to {}: no file name",
                path.display()
            )))
        }
    };
    let mut copy = LocalCopy::create(dir, name).await?;
    let mut stream = ctx
        .transport
        .exec_stream(&Cmd::new("cat").arg("--").arg(&change.src))
        .await?;
    drop(stream.stdin);
    let copied = tokio::io::copy(&mut stream.stdout, &mut copy).await;
    let exit = stream.exit.await?;
    if exit.status != Some(0) {
        return Err(ModuleError::Remote {
            what: format!("reading {} on {}", change.src, ctx.host),
            detail: ctx
                .secrets
                .mask(String::from_utf8_lossy(&exit.stderr).trim()),
        });
    }
    copied.map_err(|source| ModuleError::Io {
        what: format!(
            "fetching {} from {} into {}",
            change.src,
            ctx.host,
            path.display()
        ),
        source,
    })?;
    copy.commit(change.size, &change.sha256).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(sha: &str) -> Dest {
        Dest::File {
            mode: 0o644,
            owner: "root".into(),
            group: "root".into(),
            sha256: sha.into(),
            size: 3,
            text: None,
        }
    }

    fn facts(remote: Dest, local: Local) -> FetchFacts {
        FetchFacts {
            host: "web1".into(),
            src: "/etc/app.conf".into(),
            remote,
            local_path: "/tmp/f/web1/etc/app.conf".into(),
            local,
        }
    }

    #[test]
    fn the_copy_goes_into_a_folder_per_host_unless_flat() {
        let base = Path::new("/play");
        assert_eq!(
            local_path(base, "fetched", "web1", "/etc/nginx/nginx.conf", false),
            Path::new("/play/fetched/web1/etc/nginx/nginx.conf")
        );
        assert_eq!(
            local_path(base, "out/", "web1", "/etc/hosts", true),
            Path::new("/play/out/hosts")
        );
        assert_eq!(
            local_path(base, "/abs/hosts-web1", "web1", "/etc/hosts", true),
            Path::new("/abs/hosts-web1")
        );
    }

    #[test]
    fn the_same_bytes_are_ok_other_bytes_are_fetched() {
        assert!(decide(&facts(
            file("aa"),
            Local::File {
                sha256: "aa".into()
            }
        ))
        .unwrap()
        .is_empty());
        let c = decide(&facts(
            file("aa"),
            Local::File {
                sha256: "bb".into(),
            },
        ))
        .unwrap();
        assert!(c[0].existed);
        let c = decide(&facts(file("aa"), Local::Missing)).unwrap();
        assert!(!c[0].existed);
        assert_eq!(c[0].size, 3);
    }

    #[test]
    fn what_is_not_a_file_is_refused() {
        let e = decide(&facts(Dest::Absent, Local::Missing))
            .unwrap_err()
            .to_string();
        assert!(e.contains("web1 has no file /etc/app.conf"), "{e}");
        assert!(decide(&facts(Dest::Other("directory".into()), Local::Missing)).is_err());
        assert!(decide(&facts(file("aa"), Local::Other)).is_err());
    }
}
