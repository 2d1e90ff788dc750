//! Reading helpers of `preflight`: free disk (`df`), sizes printed by a command, vars,
//! and the journal's artifacts still on the host.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::command::Cmd;
use crate::module::artifact::file_stamp;
use crate::module::{HostReader, ModuleError};
use crate::playbook::template::Template;

/// Free space of the filesystem holding `path` (or its nearest existing parent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskFree {
    pub path: String,
    /// The nearest existing directory that `df` looked at.
    pub existing: String,
    pub mount: String,
    pub available: u64,
}

use crate::module::{VarDecl, VarKind};

/// Host vars preflight reads when its own argument is not given.
///
/// Old side: the Packagist data.
pub const DATA_DIR: VarDecl = VarDecl::new("data_dir", VarKind::Str);
/// Old side: where backups are written.
pub const BACKUP_DIR_OLD: VarDecl = VarDecl::new("backup_dir_old", VarKind::Str);
/// New side: OpenEBS volumes' base directory.
pub const OPENEBS_BASE: VarDecl = VarDecl::new("openebs_base", VarKind::Str);
/// New side: where artifacts are staged.
pub const BACKUP_DIR_NEW: VarDecl = VarDecl::new("backup_dir_new", VarKind::Str);
/// A string or a number (`2.5`).
/// Old side: the Packagist version, when the container does not say (string or number).
pub const PACKAGIST_VERSION: VarDecl = VarDecl::new("packagist_version", VarKind::Any);
pub(super) const VARS: &[&VarDecl] = &[
    &DATA_DIR,
    &BACKUP_DIR_OLD,
    &OPENEBS_BASE,
    &BACKUP_DIR_NEW,
    &PACKAGIST_VERSION,
];

pub(super) fn var_str(
    ctx: &HostReader,
    decl: &'static VarDecl,
) -> Result<Option<String>, ModuleError> {
    Ok(ctx.var_of(decl)?.and_then(|v| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }))
}

pub(super) fn render_or_var(
    ctx: &HostReader,
    t: &Option<Template>,
    var: &'static VarDecl,
) -> Result<Option<String>, ModuleError> {
    Ok(match t {
        Some(t) => Some(ctx.render_operand(t)?),
        None => var_str(ctx, var)?,
    })
}

/// Prints the nearest existing parent of `$1`, then `df -PB1` of it. A fixed script:
/// the path is a positional argument, never spliced into the text.
pub(super) const DF_SCRIPT: &str = r#"p=$1
while [ ! -e "$p" ]; do
  case "$p" in */*) p=${p%/*}; [ -n "$p" ] || p=/ ;; *) p=. ;; esac
done
printf '%s\n' "$p"
df -PB1 -- "$p""#;

/// Parse the output of [`DF_SCRIPT`].
pub fn parse_df(path: &str, out: &str) -> Result<DiskFree, String> {
    let mut lines = out.lines();
    let existing = lines.next().unwrap_or("").to_string();
    // Skip the header; the data line is `fs blocks used available capacity mount...`.
    let data = lines
        .find(|l| !l.starts_with("Filesystem"))
        .ok_or_else(|| format!("unexpected df output: {out:?}"))?;
    let fields: Vec<&str> = data.split_whitespace().collect();
    if fields.len() < 6 {
        return Err(format!("unexpected df output: {out:?}"));
    }
    let available = fields[3]
        .parse()
        .map_err(|_| format!("unexpected df output: {out:?}"))?;
    Ok(DiskFree {
        path: path.to_string(),
        existing,
        mount: fields[5..].join(" "),
        available,
    })
}

pub(super) async fn disk_free(ctx: &HostReader, path: &str) -> Result<DiskFree, ModuleError> {
    let cmd = Cmd::new("sh")
        .arg("-c")
        .arg(DF_SCRIPT)
        .arg("ferry-df")
        .arg(path);
    let out = ctx.exec(&cmd).await?;
    if !out.success() {
        return Err(ModuleError::Remote {
            what: format!("df of {path} failed"),
            detail: out.stderr_str().trim().to_string(),
        });
    }
    parse_df(path, &out.stdout_str()).map_err(|detail| ModuleError::Remote {
        what: format!("df of {path}"),
        detail,
    })
}

/// A number printed first on the command's output (`du -sb`, `stat -c %s`, psql -At).
pub(super) async fn measure(ctx: &HostReader, cmd: &Cmd) -> Result<u64, String> {
    let out = ctx.exec(cmd).await.map_err(|e| e.to_string())?;
    let text = out.stdout_str();
    if !out.success() {
        return Err(format!(
            "`{}` failed: {}",
            cmd.display(),
            out.stderr_str().trim()
        ));
    }
    text.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("`{}` printed {text:?}, not a size", cmd.display()))
}

/// `used_memory:N` from `INFO memory`.
pub(super) fn parse_used_memory(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("used_memory:"))
        .and_then(|n| n.trim().parse().ok())
}

/// Sum of the sizes of the journal's artifacts on this host under `dir` that are still
/// there with their recorded size.
pub(super) async fn artifacts_under(ctx: &HostReader, dir: &str) -> Result<u64, ModuleError> {
    let prefix = format!("{}/", dir.trim_end_matches('/'));
    let data = ctx.journal.snapshot();
    let mut paths = BTreeMap::new();
    if let Some(tasks) = data.hosts.get(&ctx.host) {
        for a in tasks.values().flat_map(|r| r.artifacts.values()) {
            if a.path.starts_with(&prefix) {
                paths.insert(a.path.clone(), a.size);
            }
        }
    }
    let mut total = 0;
    for (path, size) in paths {
        if file_stamp(ctx, &path)
            .await?
            .is_some_and(|s| s.size == size)
        {
            total += size;
        }
    }
    Ok(total)
}

/// Size of a backup file an earlier run left in `dir` on this host, if any.
pub(super) async fn backup_file_size(
    ctx: &HostReader,
    dir: Option<&str>,
    name: &str,
) -> Option<u64> {
    let path = format!("{}/{name}", dir?);
    let out = ctx
        .exec(&Cmd::new("stat").arg("-c").arg("%s").arg(path))
        .await
        .ok()?;
    out.success()
        .then(|| out.stdout_str().trim().parse().ok())
        .flatten()
}
