//! `file`: a path's kind (file, directory, symlink, absent) and its mode and owner.
//!
//! ```toml
//! [task.file]
//! path = "/srv/app/releases"
//! state = "directory"      # file (default) | directory | absent | link | touch
//! mode = "0750"            # octal, as a string
//! owner = "app"            # a name or a uid
//! group = "app"
//! recurse = true           # directories: mode/owner/group on the whole tree
//! # src = "/srv/app/releases/42"   # state = "link": the link's target
//! ```
//!
//! As Ansible's `file`: `state = "file"` never creates (a missing path fails: use
//! `touch`); `absent` removes a directory with everything in it (and refuses `/`);
//! `link` replaces a link that points elsewhere but never a file or directory in its
//! way. Unlike Ansible's, `touch` leaves the times of an existing path alone (its
//! `access_time`/`modification_time = "preserve"`): a re-run changes nothing.
//! `file`, `directory` and `touch` follow a symlink at `path` (they act on its target),
//! `link` and `absent` act on the link itself.

use async_trait::async_trait;
use serde::{Deserialize, Deserializer, Serialize};

use crate::command::Cmd;
use crate::module::{
    Applied, ArgCheck, ArgError, Change, Diff, Module, ModuleError, Probe, TaskCtx,
};
use crate::playbook::template::Template;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileState {
    #[default]
    File,
    Directory,
    Absent,
    Link,
    Touch,
}

/// A permission mode, written in playbooks as an octal string (`"0755"`, `"755"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct Mode(pub u32);

impl From<Mode> for String {
    fn from(m: Mode) -> String {
        format!("{:04o}", m.0)
    }
}

impl Mode {
    pub fn parse(text: &str) -> Result<Mode, String> {
        let digits = text.strip_prefix("0o").unwrap_or(text);
        if !(3..=4).contains(&digits.len()) || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err(format!(
                "mode {text:?}: give 3 or 4 octal digits as a string, e.g. \"0755\""
            ));
        }
        u32::from_str_radix(digits, 8)
            .map(Mode)
            .map_err(|e| format!("mode {text:?}: {e}"))
    }
}

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Mode, D::Error> {
        // A bare TOML integer (`mode = 755`) would be decimal: only a string is clear.
        let text = String::deserialize(d).map_err(|_| {
            serde::de::Error::custom("mode: write it as an octal string, e.g. mode = \"0755\"")
        })?;
        Mode::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub path: Template,
    #[serde(default)]
    pub state: FileState,
    pub src: Option<Template>,
    pub mode: Option<Mode>,
    pub owner: Option<Template>,
    pub group: Option<Template>,
    #[serde(default)]
    pub recurse: bool,
}

/// What is at `path` (after following a symlink, for the states that follow).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stat {
    /// `regular file`, `directory`, `symbolic link`, ... (stat's `%F`).
    pub kind: String,
    pub mode: u32,
    pub uid: String,
    pub user: String,
    pub gid: String,
    pub group: String,
    /// The target, for a symbolic link.
    pub target: Option<String>,
}

impl Stat {
    fn is_dir(&self) -> bool {
        self.kind == "directory"
    }
    fn is_link(&self) -> bool {
        self.kind == "symbolic link"
    }
    fn is_file(&self) -> bool {
        self.kind.starts_with("regular")
    }
}

/// Whether something under a directory (recurse) differs from the wanted attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TreeDiffers {
    pub mode: bool,
    pub owner: bool,
    pub group: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileFacts {
    pub path: String,
    pub src: Option<String>,
    pub owner: Option<String>,
    pub group: Option<String>,
    /// `None`: nothing there.
    pub stat: Option<Stat>,
    /// For a directory with `recurse`: what differs below it.
    pub tree: Option<TreeDiffers>,
}

/// One typed step; `cmd` is what runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FileChange {
    Mkdir {
        path: String,
        cmd: Cmd,
    },
    Touch {
        path: String,
        cmd: Cmd,
    },
    Remove {
        path: String,
        was: String,
        cmd: Cmd,
    },
    Link {
        path: String,
        before: Option<String>,
        target: String,
        cmd: Cmd,
    },
    Chmod {
        path: String,
        before: Option<String>,
        after: String,
        recurse: bool,
        cmd: Cmd,
    },
    Chown {
        path: String,
        before: Option<String>,
        after: String,
        recurse: bool,
        cmd: Cmd,
    },
}

impl FileChange {
    fn cmd(&self) -> &Cmd {
        match self {
            FileChange::Mkdir { cmd, .. }
            | FileChange::Touch { cmd, .. }
            | FileChange::Remove { cmd, .. }
            | FileChange::Link { cmd, .. }
            | FileChange::Chmod { cmd, .. }
            | FileChange::Chown { cmd, .. } => cmd,
        }
    }
}

fn tree(recurse: bool) -> &'static str {
    if recurse {
        " (recursively)"
    } else {
        ""
    }
}

impl Change for FileChange {
    fn describe(&self) -> String {
        match self {
            FileChange::Mkdir { path, .. } => format!("create directory {path}"),
            FileChange::Touch { path, .. } => format!("create file {path}"),
            FileChange::Remove { path, was, .. } => format!("remove {was} {path}"),
            FileChange::Link { path, target, .. } => format!("link {path} -> {target}"),
            FileChange::Chmod {
                path,
                after,
                recurse,
                ..
            } => {
                format!("mode of {path} to {after}{}", tree(*recurse))
            }
            FileChange::Chown {
                path,
                after,
                recurse,
                ..
            } => {
                format!("owner of {path} to {after}{}", tree(*recurse))
            }
        }
    }

    fn commands(&self) -> Vec<String> {
        vec![self.cmd().display()]
    }

    fn diff(&self) -> Option<Diff> {
        let (path, before, after) = match self {
            FileChange::Mkdir { path, .. } => {
                (path, "state: absent".into(), "state: directory".into())
            }
            FileChange::Touch { path, .. } => (path, "state: absent".into(), "state: file".into()),
            FileChange::Remove { path, was, .. } => {
                (path, format!("state: {was}"), "state: absent".into())
            }
            FileChange::Link {
                path,
                before,
                target,
                ..
            } => (
                path,
                before
                    .as_ref()
                    .map_or("state: absent".into(), |b| format!("link: {b}")),
                format!("link: {target}"),
            ),
            FileChange::Chmod {
                path,
                before,
                after,
                ..
            } => (path, attr_line("mode", before), format!("mode: {after}")),
            FileChange::Chown {
                path,
                before,
                after,
                ..
            } => (path, attr_line("owner", before), format!("owner: {after}")),
        };
        Some(Diff {
            what: path.clone(),
            before,
            after,
        })
    }
}

/// `KEY: VALUE` of an attribute's value before a change (empty when there was none).
fn attr_line(key: &str, before: &Option<String>) -> String {
    before
        .as_ref()
        .map_or(String::new(), |b| format!("{key}: {b}"))
}

/// `$1` path, `$2` follow (1 or empty), `$3` mode, `$4` owner, `$5` group, `$6` recurse.
/// Prints `absent`, or `stat UID USER GID GROUP MODE KIND`, then for a directory with
/// recurse `tree MODE OWNER GROUP` (1 where something below differs), then for a
/// link `target ` and its target. An unknown owner or group exits 3.
const FACTS_SCRIPT: &str = r#"for n in "$4"; do case "$n" in ''|*[!0-9]*) [ -z "$n" ] || getent passwd "$n" >/dev/null || { echo "no user $n on this host" >&2; exit 3; };; esac; done
for n in "$5"; do case "$n" in ''|*[!0-9]*) [ -z "$n" ] || getent group "$n" >/dev/null || { echo "no group $n on this host" >&2; exit 3; };; esac; done
if [ -n "$2" ]; then L=-L; [ -e "$1" ] || { echo absent; exit 0; }
else L=; [ -e "$1" ] || [ -L "$1" ] || { echo absent; exit 0; }; fi
printf 'stat '; stat $L -c '%u %U %g %G %a %F' -- "$1" || exit 1
if [ -n "$6" ] && [ -d "$1" ]; then
  m=0; o=0; g=0
  [ -z "$3" ] || [ -z "$(find "$1" ! -type l ! -perm "$3" -print -quit)" ] || m=1
  [ -z "$4" ] || [ -z "$(find "$1" ! -user "$4" -print -quit)" ] || o=1
  [ -z "$5" ] || [ -z "$(find "$1" ! -group "$5" -print -quit)" ] || g=1
  echo "tree $m $o $g"
fi
if [ -z "$2" ] && [ -L "$1" ]; then printf 'target '; readlink -- "$1"; fi
"#;

/// Pure: the facts script's output.
pub fn parse_facts(text: &str) -> Result<(Option<Stat>, Option<TreeDiffers>), String> {
    if text.trim() == "absent" {
        return Ok((None, None));
    }
    // The target is the rest of the output: it may hold newlines; readlink adds one.
    let (head, target) = match text.find("\ntarget ") {
        Some(i) => (&text[..i], text.get(i + "\ntarget ".len()..)),
        None => (text, None),
    };
    let mut stat = None;
    let mut tree = None;
    for line in head.lines() {
        if let Some(s) = line.strip_prefix("stat ") {
            let f: Vec<&str> = s.splitn(6, ' ').collect();
            let [uid, user, gid, group, mode, kind] = f[..] else {
                return Err(format!("unreadable stat line {line:?}"));
            };
            stat = Some(Stat {
                kind: kind.to_string(),
                mode: u32::from_str_radix(mode, 8)
                    .map_err(|_| format!("unreadable mode {mode:?}"))?,
                uid: uid.into(),
                user: user.into(),
                gid: gid.into(),
                group: group.into(),
                target: target.map(|t| t.strip_suffix('\n').unwrap_or(t).to_string()),
            });
        } else if let Some(t) = line.strip_prefix("tree ") {
            let bits: Vec<&str> = t.split(' ').collect();
            tree = Some(TreeDiffers {
                mode: bits.first() == Some(&"1"),
                owner: bits.get(1) == Some(&"1"),
                group: bits.get(2) == Some(&"1"),
            });
        }
    }
    match stat {
        Some(s) => Ok((Some(s), tree)),
        None => Err(format!("unreadable output {text:?}")),
    }
}

/// A path `absent` must never remove: the root, or nothing at all.
fn is_root_or_empty(path: &str) -> bool {
    // `/srv/..` is the root too; rm refuses a last `.` or `..` anyway: say so before it.
    let last = path.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    last == "."
        || last == ".."
        || path
            .split('/')
            .all(|c| c.is_empty() || c == "." || c == "..")
}

/// Whether the wanted owner (a name or a uid) is the one stat saw.
fn same_id(want: &str, id: &str, name: &str) -> bool {
    want == name || want == id
}

/// chown's `OWNER`, `:GROUP` or `OWNER:GROUP` (also `copy`'s).
pub fn owner_spec(owner: &Option<String>, group: &Option<String>) -> Option<String> {
    match (owner, group) {
        (None, None) => None,
        (Some(o), None) => Some(o.clone()),
        (None, Some(g)) => Some(format!(":{g}")),
        (Some(o), Some(g)) => Some(format!("{o}:{g}")),
    }
}

/// Pure: the changes that bring `f.path` to `args`.
pub fn decide(args: &File, f: &FileFacts) -> Result<Vec<FileChange>, ModuleError> {
    let path = f.path.clone();
    let stat = f.stat.as_ref();
    let mut out = Vec::new();
    let mut created = false;
    match args.state {
        FileState::Absent => {
            if is_root_or_empty(&path) {
                return Err(ModuleError::Precondition(format!(
                    "file: refusing state = \"absent\" on {path:?}: it names the root (or nothing)"
                )));
            }
            if let Some(s) = stat {
                let flag = if s.is_dir() { "-rf" } else { "-f" };
                out.push(FileChange::Remove {
                    cmd: Cmd::new("rm").arg(flag).arg("--").arg(path.as_str()),
                    was: s.kind.clone(),
                    path,
                });
            }
            return Ok(out);
        }
        FileState::File => match stat {
            None => {
                return Err(ModuleError::Precondition(format!(
                    "file {path} does not exist (state = \"file\" does not create it: use \
                     state = \"touch\")"
                )))
            }
            Some(s) if !s.is_file() => {
                return Err(ModuleError::Precondition(format!(
                    "{path} is a {}, not a regular file",
                    s.kind
                )))
            }
            Some(_) => {}
        },
        FileState::Directory => match stat {
            None => {
                created = true;
                out.push(FileChange::Mkdir {
                    cmd: Cmd::new("mkdir").arg("-p").arg("--").arg(path.as_str()),
                    path: path.clone(),
                });
            }
            Some(s) if !s.is_dir() => {
                return Err(ModuleError::Precondition(format!(
                    "{path} is a {}, not a directory: ferry does not replace it",
                    s.kind
                )))
            }
            Some(_) => {}
        },
        FileState::Touch => {
            if stat.is_none() {
                created = true;
                out.push(FileChange::Touch {
                    cmd: Cmd::new("touch").arg("--").arg(path.as_str()),
                    path: path.clone(),
                });
            }
        }
        FileState::Link => {
            let target = f.src.clone().ok_or_else(|| {
                ModuleError::Internal("file: state = \"link\" without src".into())
            })?;
            match stat {
                Some(s) if !s.is_link() => {
                    return Err(ModuleError::Precondition(format!(
                        "{path} is a {}, not a symlink: ferry does not replace it with a link",
                        s.kind
                    )))
                }
                Some(s) if s.target.as_deref() == Some(target.as_str()) => {}
                _ => {
                    created = stat.is_none();
                    // -n: a link to a directory is replaced, not followed into.
                    out.push(FileChange::Link {
                        cmd: Cmd::new("ln")
                            .arg("-sfn")
                            .arg("--")
                            .arg(target.as_str())
                            .arg(path.as_str()),
                        before: stat.and_then(|s| s.target.clone()),
                        target,
                        path: path.clone(),
                    });
                }
            }
        }
    }
    let recurse = args.recurse && args.state == FileState::Directory;
    let tree = f.tree.clone().unwrap_or_default();
    if let Some(mode) = args.mode.filter(|_| args.state != FileState::Link) {
        let differs = created || stat.is_some_and(|s| s.mode != mode.0) || (recurse && tree.mode);
        if differs {
            let after = String::from(mode);
            let mut cmd = Cmd::new("chmod");
            if recurse {
                cmd = cmd.arg("-R");
            }
            out.push(FileChange::Chmod {
                cmd: cmd.arg(after.as_str()).arg("--").arg(path.as_str()),
                before: stat.filter(|_| !created).map(|s| format!("{:04o}", s.mode)),
                after,
                recurse,
                path: path.clone(),
            });
        }
    }
    let owner_differs = f.owner.as_ref().is_some_and(|o| {
        created || stat.is_some_and(|s| !same_id(o, &s.uid, &s.user)) || (recurse && tree.owner)
    });
    let group_differs = f.group.as_ref().is_some_and(|g| {
        created || stat.is_some_and(|s| !same_id(g, &s.gid, &s.group)) || (recurse && tree.group)
    });
    if owner_differs || group_differs {
        if let Some(spec) = owner_spec(&f.owner, &f.group) {
            let mut cmd = Cmd::new("chown");
            if recurse {
                cmd = cmd.arg("-R");
            }
            if args.state == FileState::Link || recurse {
                // The link itself (and, below a directory, links themselves), never
                // what they point at.
                cmd = cmd.arg("-h");
            }
            out.push(FileChange::Chown {
                cmd: cmd.arg(spec.as_str()).arg("--").arg(path.as_str()),
                before: stat
                    .filter(|_| !created)
                    .map(|s| format!("{}:{}", s.user, s.group)),
                after: spec,
                recurse,
                path,
            });
        }
    }
    Ok(out)
}

#[async_trait]
impl Module for File {
    type Facts = FileFacts;
    type Change = FileChange;

    fn check_args(&self, _: &ArgCheck<'_>) -> Result<(), ArgError> {
        match (self.state, &self.src) {
            (FileState::Link, None) => {
                return Err(ArgError::field(
                    "state",
                    "state = \"link\" needs src (the link's target)",
                ))
            }
            (FileState::Link, Some(_)) => {}
            (_, Some(_)) => return Err(ArgError::field("src", "src is only for state = \"link\"")),
            _ => {}
        }
        if self.recurse && self.state != FileState::Directory {
            return Err(ArgError::field(
                "recurse",
                "recurse is only for state = \"directory\"",
            ));
        }
        if self.mode.is_some() && matches!(self.state, FileState::Link | FileState::Absent) {
            return Err(ArgError::field(
                "mode",
                "mode is not for state = \"link\" or \"absent\" (a symlink has no mode of its own)",
            ));
        }
        Ok(())
    }

    async fn facts(&self, probe: &Probe<'_>) -> Result<FileFacts, ModuleError> {
        let path = probe.render_operand(&self.path)?;
        let src = self
            .src
            .as_ref()
            .map(|s| probe.render_operand(s))
            .transpose()?;
        let owner = self
            .owner
            .as_ref()
            .map(|s| probe.render_operand(s))
            .transpose()?;
        let group = self
            .group
            .as_ref()
            .map(|s| probe.render_operand(s))
            .transpose()?;
        let follow = !matches!(self.state, FileState::Link | FileState::Absent);
        let mode = self.mode.map(String::from).unwrap_or_default();
        let cmd = Cmd::new("sh")
            .arg("-c")
            .arg(FACTS_SCRIPT)
            .arg("ferry-file")
            .args([
                path.as_str(),
                if follow { "1" } else { "" },
                mode.as_str(),
                owner.as_deref().unwrap_or(""),
                group.as_deref().unwrap_or(""),
                if self.recurse { "1" } else { "" },
            ]);
        let out = probe.exec(&cmd).await?;
        let stderr = probe.secrets.mask(out.stderr_str().trim());
        if out.status == Some(3) {
            return Err(ModuleError::Precondition(format!("file {path}: {stderr}")));
        }
        if !out.success() {
            return Err(ModuleError::Remote {
                what: format!("stat of {path} on {}", probe.host),
                detail: stderr,
            });
        }
        let (stat, tree) =
            parse_facts(&out.stdout_str()).map_err(|detail| ModuleError::Remote {
                what: format!("stat of {path} on {}", probe.host),
                detail,
            })?;
        Ok(FileFacts {
            path,
            src,
            owner,
            group,
            stat,
            tree,
        })
    }

    fn decide(&self, facts: &FileFacts) -> Result<Vec<FileChange>, ModuleError> {
        decide(self, facts)
    }

    async fn apply(
        &self,
        ctx: &TaskCtx,
        _: &FileFacts,
        changes: &[FileChange],
    ) -> Result<Applied, ModuleError> {
        for c in changes {
            ctx.exec_ok(c.cmd()).await?;
        }
        Ok(Applied::changed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(state: FileState) -> File {
        File {
            path: Template::new("/srv/x"),
            state,
            src: None,
            mode: None,
            owner: None,
            group: None,
            recurse: false,
        }
    }

    fn stat(kind: &str, mode: u32) -> Stat {
        Stat {
            kind: kind.into(),
            mode,
            uid: "0".into(),
            user: "root".into(),
            gid: "0".into(),
            group: "root".into(),
            target: None,
        }
    }

    fn facts(stat: Option<Stat>) -> FileFacts {
        FileFacts {
            path: "/srv/x".into(),
            src: None,
            owner: None,
            group: None,
            stat,
            tree: None,
        }
    }

    fn cmds(c: &[FileChange]) -> Vec<String> {
        c.iter().flat_map(Change::commands).collect()
    }

    #[test]
    fn a_missing_directory_is_made_with_its_mode_and_owner() {
        let a = File {
            mode: Some(Mode(0o750)),
            ..args(FileState::Directory)
        };
        let f = FileFacts {
            owner: Some("app".into()),
            ..facts(None)
        };
        let c = decide(&a, &f).unwrap();
        assert_eq!(
            cmds(&c),
            [
                "mkdir -p -- /srv/x",
                "chmod 0750 -- /srv/x",
                "chown app -- /srv/x"
            ]
        );
        assert!(c[1].diff().unwrap().unified().contains("+mode: 0750"));
    }

    #[test]
    fn a_directory_as_wanted_is_ok() {
        let a = File {
            mode: Some(Mode(0o750)),
            ..args(FileState::Directory)
        };
        let f = FileFacts {
            owner: Some("0".into()),
            group: Some("root".into()),
            ..facts(Some(stat("directory", 0o750)))
        };
        assert!(decide(&a, &f).unwrap().is_empty());
    }

    #[test]
    fn only_the_attributes_that_differ_change() {
        let a = File {
            mode: Some(Mode(0o644)),
            ..args(FileState::File)
        };
        let f = FileFacts {
            group: Some("adm".into()),
            ..facts(Some(stat("regular file", 0o600)))
        };
        let c = decide(&a, &f).unwrap();
        assert_eq!(cmds(&c), ["chmod 0644 -- /srv/x", "chown :adm -- /srv/x"]);
        let d = c[0].diff().unwrap().unified();
        assert!(
            d.contains("-mode: 0600") && d.contains("+mode: 0644"),
            "{d}"
        );
        let d = c[1].diff().unwrap().unified();
        assert!(
            d.contains("-owner: root:root") && d.contains("+owner: :adm"),
            "{d}"
        );
    }

    #[test]
    fn state_file_never_creates() {
        let e = decide(&args(FileState::File), &facts(None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not exist") && e.contains("touch"), "{e}");
        let e = decide(
            &args(FileState::File),
            &facts(Some(stat("directory", 0o755))),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("is a directory"), "{e}");
    }

    #[test]
    fn absent_removes_directories_recursively_and_refuses_the_root() {
        let c = decide(
            &args(FileState::Absent),
            &facts(Some(stat("directory", 0o755))),
        )
        .unwrap();
        assert_eq!(cmds(&c), ["rm -rf -- /srv/x"]);
        let c = decide(
            &args(FileState::Absent),
            &facts(Some(stat("regular file", 0o644))),
        )
        .unwrap();
        assert_eq!(cmds(&c), ["rm -f -- /srv/x"]);
        assert!(decide(&args(FileState::Absent), &facts(None))
            .unwrap()
            .is_empty());
        for root in ["/", "//", "/.", "", "/../", "/./..", "/srv/..", "a/."] {
            let f = FileFacts {
                path: root.into(),
                ..facts(Some(stat("directory", 0o755)))
            };
            let e = decide(&args(FileState::Absent), &f)
                .unwrap_err()
                .to_string();
            assert!(e.contains("refusing"), "{root:?}: {e}");
        }
    }

    #[test]
    fn links_are_made_replaced_or_left() {
        let a = File {
            src: Some(Template::new("/srv/r/2")),
            ..args(FileState::Link)
        };
        let f = |s| FileFacts {
            src: Some("/srv/r/2".into()),
            ..facts(s)
        };
        assert_eq!(
            cmds(&decide(&a, &f(None)).unwrap()),
            ["ln -sfn -- /srv/r/2 /srv/x"]
        );
        let old = Stat {
            target: Some("/srv/r/1".into()),
            ..stat("symbolic link", 0o777)
        };
        let c = decide(&a, &f(Some(old))).unwrap();
        assert_eq!(cmds(&c), ["ln -sfn -- /srv/r/2 /srv/x"]);
        assert!(c[0].diff().unwrap().unified().contains("-link: /srv/r/1"));
        let same = Stat {
            target: Some("/srv/r/2".into()),
            ..stat("symbolic link", 0o777)
        };
        assert!(decide(&a, &f(Some(same))).unwrap().is_empty());
        let e = decide(&a, &f(Some(stat("directory", 0o755))))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a symlink"), "{e}");
    }

    #[test]
    fn touch_creates_and_then_leaves_the_file_alone() {
        let c = decide(&args(FileState::Touch), &facts(None)).unwrap();
        assert_eq!(cmds(&c), ["touch -- /srv/x"]);
        assert!(decide(
            &args(FileState::Touch),
            &facts(Some(stat("regular empty file", 0o644)))
        )
        .unwrap()
        .is_empty());
    }

    #[test]
    fn recurse_changes_the_tree_when_something_below_differs() {
        let a = File {
            mode: Some(Mode(0o755)),
            recurse: true,
            ..args(FileState::Directory)
        };
        let f = |tree| FileFacts {
            owner: Some("root".into()),
            tree: Some(tree),
            ..facts(Some(stat("directory", 0o755)))
        };
        assert!(decide(&a, &f(TreeDiffers::default())).unwrap().is_empty());
        let c = decide(
            &a,
            &f(TreeDiffers {
                mode: true,
                owner: true,
                group: false,
            }),
        )
        .unwrap();
        assert_eq!(
            cmds(&c),
            ["chmod -R 0755 -- /srv/x", "chown -R -h root -- /srv/x"]
        );
    }

    #[test]
    fn the_facts_output_is_read() {
        assert_eq!(parse_facts("absent\n").unwrap(), (None, None));
        let (s, t) = parse_facts("stat 0 root 4 adm 2755 directory\ntree 0 1 0\n").unwrap();
        let s = s.unwrap();
        assert_eq!(
            (s.mode, s.group.as_str(), s.kind.as_str()),
            (0o2755, "adm", "directory")
        );
        assert_eq!(
            t,
            Some(TreeDiffers {
                mode: false,
                owner: true,
                group: false
            })
        );
        let (s, _) = parse_facts("stat 0 root 0 root 777 symbolic link\ntarget /a b\nc\n").unwrap();
        assert_eq!(s.unwrap().target.as_deref(), Some("/a b\nc"));
        assert!(parse_facts("garbage").is_err());
        assert!(
            Mode::parse("0755").is_ok()
                && Mode::parse("75").is_err()
                && Mode::parse("0855").is_err()
        );
    }
}
