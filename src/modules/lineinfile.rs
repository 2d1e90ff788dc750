//! `lineinfile`: one line of a text file present (replaced or inserted) or absent.
//!
//! ```toml
//! [task.lineinfile]
//! path = "/etc/ssh/sshd_config"
//! regexp = '^#?PasswordAuthentication\s'
//! line = "PasswordAuthentication no"
//! insertafter = '^#?PubkeyAuthentication'   # or "EOF" (default); insertbefore: or "BOF"
//! # state = "absent"        # removes every line matching regexp (or equal to line)
//! # create = true           # a missing file is made (mode, default "0644")
//! ```
//!
//! Ansible's semantics (its `lineinfile` without `backrefs`/`firstmatch`): with
//! `regexp`, the last matching line is replaced by `line`; with no match (or no
//! `regexp`) a line equal to `line` anywhere leaves the file alone, else `line` is
//! inserted after the last line matching `insertafter` (before the last matching
//! `insertbefore`), at the end when neither matches. The whole edit is decided from
//! the file's content as facts read it (at most [`MAX_BYTES`]); apply writes the new
//! content to a temporary file beside it (mode and owner copied) and renames it over
//! the file, only if the file's sha256 is still the one facts read. A symlink at
//! `path` is followed: its target is edited.

use async_trait::async_trait;
use regex::bytes::Regex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::command::Cmd;
use crate::module::{
    Applied, ArgCheck, ArgError, Change, Diff, Module, ModuleError, Probe, TaskCtx,
};
use crate::modules::file::Mode;
use crate::playbook::template::Template;

/// The largest file lineinfile reads: it holds the file in memory to decide.
pub const MAX_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineState {
    #[default]
    Present,
    Absent,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineInFile {
    pub path: Template,
    pub line: Option<Template>,
    pub regexp: Option<Template>,
    #[serde(default)]
    pub state: LineState,
    pub insertafter: Option<Template>,
    pub insertbefore: Option<Template>,
    #[serde(default)]
    pub create: bool,
    /// Mode of a file `create` makes.
    pub mode: Option<Mode>,
}

/// Where a missing line goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Insert {
    Eof,
    Bof,
    After(String),
    Before(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineFacts {
    pub path: String,
    /// What is edited: `path` with symlinks resolved.
    pub real: String,
    pub line: Option<String>,
    pub regexp: Option<String>,
    pub insert: Insert,
    /// `None`: no file.
    pub sha256: Option<String>,
    pub size: u64,
    /// The file's bytes (not in the JSON facts: they may be megabytes).
    #[serde(skip)]
    pub content: Vec<u8>,
}

/// The one change: the file's new content, written if the file is still `before_sha256`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriteFile {
    pub path: String,
    pub what: &'static str,
    pub cmd: Cmd,
    #[serde(skip)]
    pub before: Vec<u8>,
    #[serde(skip)]
    pub after: Vec<u8>,
}

impl Change for WriteFile {
    fn describe(&self) -> String {
        format!("{} in {}", self.what, self.path)
    }
    fn commands(&self) -> Vec<String> {
        vec![format!(
            "{} < ({} bytes)",
            self.cmd.display(),
            self.after.len()
        )]
    }
    fn diff(&self) -> Option<Diff> {
        Some(Diff {
            what: self.path.clone(),
            before: String::from_utf8_lossy(&self.before).into_owned(),
            after: String::from_utf8_lossy(&self.after).into_owned(),
        })
    }
}

/// Exit status of the scripts when the file is not what facts saw (message on stderr).
const CHANGED_UNDER_US: u32 = 4;

/// `$1` path, `$2` the byte limit + 1. Prints `absent`, or `file SIZE`, a newline, the
/// resolved path, a NUL, then at most `$2` bytes of content. Not a regular file: exit 3.
const READ_SCRIPT: &str = r#"if [ ! -e "$1" ]; then
  [ ! -L "$1" ] || { echo "$1 is a symlink to nothing" >&2; exit 3; }
  echo absent; exit 0
fi
real=$(readlink -f -- "$1") || exit 1
[ -f "$real" ] || { echo "$1 is not a regular file" >&2; exit 3; }
size=$(stat -c %s -- "$real") || exit 1
printf 'file %s\n%s\0' "$size" "$real"
# A file over the limit is refused by its size, unread; one that grows meanwhile by
# the limit + 1 bytes read.
[ "$size" -ge "$2" ] || head -c "$2" -- "$real"
"#;

/// `$1` the file, `$2` its sha256 as read (`absent`: it must not exist), `$3` the mode
/// of a new file; stdin the new content.
const WRITE_SCRIPT: &str = r#"d=$(dirname -- "$1") || exit 1
if [ "$2" = absent ]; then
  mkdir -p -- "$d" || exit 1
  if [ -e "$1" ] || [ -L "$1" ]; then echo "$1 appeared since ferry read it: run the task again" >&2; exit 4; fi
else
  sum=$(sha256sum < "$1") || exit 1
  [ "${sum%% *}" = "$2" ] || { echo "$1 changed since ferry read it (another writer?): nothing written; run the task again" >&2; exit 4; }
fi
t=$(mktemp "$d/.ferry-lineinfile.XXXXXX") || exit 1
trap 'rm -f -- "$t"' EXIT
cat > "$t" || exit 1
if [ "$2" = absent ]; then chmod "$3" -- "$t" || exit 1
else chmod --reference="$1" -- "$t" && chown --reference="$1" -- "$t" || exit 1; fi
mv -f -- "$t" "$1" || exit 1
trap - EXIT
"#;

fn compile(what: &str, re: &str) -> Result<Regex, String> {
    Regex::new(re).map_err(|e| format!("{what} {re:?} is not a valid regular expression: {e}"))
}

/// A line without its end (`\n`, `\r\n`): what regexps see, so that `$` matches at
/// the end of a line as Python's `re.search` (Ansible's) does before a final newline.
fn bare(l: &[u8]) -> &[u8] {
    let l = l.strip_suffix(b"\n").unwrap_or(l);
    l.strip_suffix(b"\r").unwrap_or(l)
}

/// Pure: the new content, or `None` when the file is already so (Ansible's algorithm).
pub fn edit(
    content: &[u8],
    state: LineState,
    line: Option<&str>,
    regexp: Option<&Regex>,
    insert: &Insert,
    ins_re: Option<&Regex>,
) -> Option<(Vec<u8>, &'static str)> {
    let mut lines: Vec<Vec<u8>> = content
        .split_inclusive(|b| *b == b'\n')
        .map(<[u8]>::to_vec)
        .collect();
    let wanted = line.map(str::as_bytes);
    if state == LineState::Absent {
        let before = lines.len();
        lines.retain(|l| match (regexp, wanted) {
            (Some(re), _) => !re.is_match(bare(l)),
            (None, Some(w)) => bare(l) != w,
            (None, None) => true,
        });
        return (lines.len() != before).then(|| (lines.concat(), "remove line(s)"));
    }
    let wanted = wanted?;
    let mut found: Option<usize> = None;
    let mut matched_re = false;
    if let Some(re) = regexp {
        found = lines.iter().rposition(|l| re.is_match(bare(l)));
        matched_re = found.is_some();
    }
    let mut at: Option<usize> = None;
    if !matched_re {
        for (i, l) in lines.iter().enumerate() {
            if bare(l) == wanted {
                found = Some(i);
            } else if ins_re.is_some_and(|r| r.is_match(bare(l))) {
                at = Some(match insert {
                    Insert::After(_) => i + 1,
                    _ => i,
                });
            }
        }
    }
    let mut new_line = wanted.to_vec();
    new_line.push(b'\n');
    if let Some(i) = found {
        if lines[i] == new_line || (!matched_re && bare(&lines[i]) == wanted) {
            return None;
        }
        // A replaced line always gets its newline, as Ansible's does.
        lines[i] = new_line;
        return Some((lines.concat(), "replace line"));
    }
    match (insert, at) {
        (Insert::Bof, _) => lines.insert(0, new_line),
        (Insert::After(_), Some(i)) | (Insert::Before(_), Some(i)) => {
            if matches!(insert, Insert::After(_)) && lines.get(i).is_some_and(|l| bare(l) == wanted)
            {
                return None;
            }
            if i > 0 && !lines[i - 1].ends_with(b"\n") {
                lines[i - 1].push(b'\n');
            }
            lines.insert(i, new_line);
        }
        _ => {
            if let Some(last) = lines.last_mut() {
                if !last.ends_with(b"\n") {
                    last.push(b'\n');
                }
            }
            lines.push(new_line);
        }
    }
    Some((lines.concat(), "add line"))
}

impl LineInFile {
    fn insert_arg(
        &self,
        render: impl Fn(&Template) -> Result<String, ModuleError>,
    ) -> Result<Insert, ModuleError> {
        Ok(match (&self.insertafter, &self.insertbefore) {
            (Some(a), _) => match render(a)?.as_str() {
                "EOF" => Insert::Eof,
                "BOF" => Insert::Bof,
                re => Insert::After(re.to_string()),
            },
            (None, Some(b)) => match render(b)?.as_str() {
                "BOF" => Insert::Bof,
                "EOF" => Insert::Eof,
                re => Insert::Before(re.to_string()),
            },
            (None, None) => Insert::Eof,
        })
    }
}

/// Pure: the change for `facts`.
pub fn decide(args: &LineInFile, f: &LineFacts) -> Result<Vec<WriteFile>, ModuleError> {
    let bad = |e: String| ModuleError::Precondition(format!("lineinfile {}: {e}", f.path));
    let regexp = f
        .regexp
        .as_deref()
        .map(|r| compile("regexp", r))
        .transpose()
        .map_err(bad)?;
    let ins_re = match &f.insert {
        Insert::After(r) => Some(compile("insertafter", r).map_err(bad)?),
        Insert::Before(r) => Some(compile("insertbefore", r).map_err(bad)?),
        _ => None,
    };
    if f.sha256.is_none() {
        if args.state == LineState::Absent {
            return Ok(Vec::new());
        }
        if !args.create {
            return Err(ModuleError::Precondition(format!(
                "lineinfile: {} does not exist (create = true makes it)",
                f.path
            )));
        }
    }
    if f.size > MAX_BYTES || f.content.len() as u64 > MAX_BYTES {
        return Err(ModuleError::Precondition(format!(
            "lineinfile: {} has {} bytes, more than the {} lineinfile edits (it holds the \
             file in memory): use a template or a command for a file this large",
            f.path,
            f.size.max(f.content.len() as u64),
            MAX_BYTES
        )));
    }
    let Some((after, what)) = edit(
        &f.content,
        args.state,
        f.line.as_deref(),
        regexp.as_ref(),
        &f.insert,
        ins_re.as_ref(),
    ) else {
        return Ok(Vec::new());
    };
    let mode = String::from(args.mode.unwrap_or(Mode(0o644)));
    let cmd = Cmd::new("sh")
        .arg("-c")
        .arg(WRITE_SCRIPT)
        .arg("ferry-lineinfile")
        .args([
            f.real.as_str(),
            f.sha256.as_deref().unwrap_or("absent"),
            mode.as_str(),
        ]);
    Ok(vec![WriteFile {
        path: f.path.clone(),
        what: if f.sha256.is_none() {
            "create file with line"
        } else {
            what
        },
        cmd,
        before: f.content.clone(),
        after,
    }])
}

#[async_trait]
impl Module for LineInFile {
    type Facts = LineFacts;
    type Change = WriteFile;
    const TEXT_FIELDS: &'static [&'static str] = &["line", "regexp", "insertafter", "insertbefore"];

    fn check_args(&self, at: &ArgCheck<'_>) -> Result<(), ArgError> {
        match self.state {
            LineState::Present if self.line.is_none() => {
                return Err(ArgError::field("line", "state = \"present\" needs line"))
            }
            LineState::Absent if self.line.is_none() && self.regexp.is_none() => {
                return Err(ArgError::field(
                    "state",
                    "state = \"absent\" needs regexp or line",
                ))
            }
            LineState::Absent
                if self.create || self.insertafter.is_some() || self.insertbefore.is_some() =>
            {
                return Err(ArgError::field(
                    "state",
                    "create, insertafter and insertbefore are for state = \"present\"",
                ))
            }
            _ => {}
        }
        if self.insertafter.is_some() && self.insertbefore.is_some() {
            return Err(ArgError::field(
                "insertbefore",
                "give insertafter or insertbefore, not both",
            ));
        }
        if self.mode.is_some() && !self.create {
            return Err(ArgError::field(
                "mode",
                "mode is the mode of a file create = true makes",
            ));
        }
        for (what, t) in [
            ("regexp", &self.regexp),
            ("insertafter", &self.insertafter),
            ("insertbefore", &self.insertbefore),
        ] {
            let Some(t) = t else { continue };
            let Ok(text) = at.renderer.render(t, at.vars) else {
                continue;
            };
            if what != "regexp" && (text == "EOF" || text == "BOF") {
                continue;
            }
            compile(what, &text).map_err(|e| ArgError::template(t, e))?;
        }
        Ok(())
    }

    async fn facts(&self, probe: &Probe<'_>) -> Result<LineFacts, ModuleError> {
        let path = probe.render_operand(&self.path)?;
        let line = self.line.as_ref().map(|t| probe.render(t)).transpose()?;
        let regexp = self.regexp.as_ref().map(|t| probe.render(t)).transpose()?;
        let insert = self.insert_arg(|t| probe.render(t))?;
        let cmd = Cmd::new("sh")
            .arg("-c")
            .arg(READ_SCRIPT)
            .arg("ferry-lineinfile")
            .args([path.clone(), (MAX_BYTES + 1).to_string()]);
        let out = probe.exec(&cmd).await?;
        let shown = format!("reading {path} on {}", probe.host);
        let what = || shown.clone();
        let stderr = probe.secrets.mask(out.stderr_str().trim());
        if out.status == Some(3) {
            return Err(ModuleError::Precondition(format!("lineinfile: {stderr}")));
        }
        if !out.success() {
            return Err(ModuleError::Remote {
                what: what(),
                detail: stderr,
            });
        }
        let mut facts = LineFacts {
            real: path.clone(),
            path,
            line,
            regexp,
            insert,
            sha256: None,
            size: 0,
            content: Vec::new(),
        };
        if out.stdout == b"absent\n" {
            return Ok(facts);
        }
        let unreadable = || ModuleError::Remote {
            what: what(),
            detail: "unreadable output of the read script".into(),
        };
        let nl = out
            .stdout
            .iter()
            .position(|b| *b == b'\n')
            .ok_or_else(unreadable)?;
        let size = std::str::from_utf8(&out.stdout[..nl])
            .ok()
            .and_then(|h| h.strip_prefix("file "))
            .and_then(|s| s.parse().ok())
            .ok_or_else(unreadable)?;
        let rest = &out.stdout[nl + 1..];
        let nul = rest.iter().position(|b| *b == 0).ok_or_else(unreadable)?;
        facts.real = String::from_utf8_lossy(&rest[..nul]).into_owned();
        facts.content = rest[nul + 1..].to_vec();
        facts.size = size;
        facts.sha256 = Some(hex::encode(Sha256::digest(&facts.content)));
        Ok(facts)
    }

    fn decide(&self, facts: &LineFacts) -> Result<Vec<WriteFile>, ModuleError> {
        decide(self, facts)
    }

    async fn apply(
        &self,
        ctx: &TaskCtx,
        _: &LineFacts,
        changes: &[WriteFile],
    ) -> Result<Applied, ModuleError> {
        for c in changes {
            let out = ctx.transport.exec(&c.cmd, Some(&c.after)).await?;
            if out.status == Some(CHANGED_UNDER_US) {
                return Err(ModuleError::Precondition(format!(
                    "on host {}: {}",
                    ctx.host,
                    ctx.secrets.mask(out.stderr_str().trim())
                )));
            }
            if !out.success() {
                return Err(ModuleError::CommandFailed {
                    cmd: ctx.secrets.mask(&c.cmd.display()),
                    status: format!("{:?}", out.status),
                    stderr: ctx.secrets.mask(out.stderr_str().trim()),
                });
            }
        }
        Ok(Applied::changed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        content: &str,
        state: LineState,
        line: Option<&str>,
        re: Option<&str>,
        insert: Insert,
    ) -> Option<String> {
        let re = re.map(|r| Regex::new(r).unwrap());
        let ins = match &insert {
            Insert::After(r) | Insert::Before(r) => Some(Regex::new(r).unwrap()),
            _ => None,
        };
        edit(
            content.as_bytes(),
            state,
            line,
            re.as_ref(),
            &insert,
            ins.as_ref(),
        )
        .map(|(c, _)| String::from_utf8(c).unwrap())
    }

    const P: LineState = LineState::Present;

    #[test]
    fn regexp_replaces_the_last_match() {
        let got = run("a=1\nb=2\na=3\n", P, Some("a=9"), Some("^a="), Insert::Eof);
        assert_eq!(got.as_deref(), Some("a=1\nb=2\na=9\n"));
        // Already so: no change, even when an earlier line also matches.
        assert_eq!(
            run("a=1\na=9\n", P, Some("a=9"), Some("^a="), Insert::Eof),
            None
        );
    }

    #[test]
    fn without_a_match_the_line_is_inserted() {
        // At the end by default, adding the missing newline of the last line.
        assert_eq!(
            run("x\ny", P, Some("z"), Some("^z"), Insert::Eof).as_deref(),
            Some("x\ny\nz\n")
        );
        // After the last line matching insertafter.
        assert_eq!(
            run(
                "#a\nk\n#a\nk\n",
                P,
                Some("z"),
                Some("^z="),
                Insert::After("^#a".into())
            )
            .as_deref(),
            Some("#a\nk\n#a\nz\nk\n")
        );
        // Before the last line matching insertbefore; at the start with BOF.
        assert_eq!(
            run("a\nb\n", P, Some("z"), None, Insert::Before("^b".into())).as_deref(),
            Some("a\nz\nb\n")
        );
        assert_eq!(
            run("a\n", P, Some("z"), None, Insert::Bof).as_deref(),
            Some("z\na\n")
        );
        // insertafter that matches nothing: at the end.
        assert_eq!(
            run("a\n", P, Some("z"), None, Insert::After("^q".into())).as_deref(),
            Some("a\nz\n")
        );
        // An empty (or new) file.
        assert_eq!(
            run("", P, Some("z"), None, Insert::Eof).as_deref(),
            Some("z\n")
        );
    }

    #[test]
    fn a_line_already_there_is_left_alone() {
        assert_eq!(run("a\nz\nb\n", P, Some("z"), None, Insert::Eof), None);
        assert_eq!(run("a\r\nz\r\n", P, Some("z"), None, Insert::Eof), None);
        // regexp that matches nothing, but the line is there: Ansible leaves it.
        assert_eq!(
            run("a\nz\n", P, Some("z"), Some("^nomatch"), Insert::Bof),
            None
        );
        assert_eq!(
            run("a\nz\n", P, Some("z"), None, Insert::After("^a".into())),
            None
        );
    }

    #[test]
    fn absent_removes_every_matching_line() {
        let a = LineState::Absent;
        assert_eq!(
            run("a=1\nb\na=2\n", a, None, Some("^a="), Insert::Eof).as_deref(),
            Some("b\n")
        );
        assert_eq!(
            run("a\nb\na\n", a, Some("a"), None, Insert::Eof).as_deref(),
            Some("b\n")
        );
        assert_eq!(run("b\n", a, Some("a"), None, Insert::Eof), None);
    }

    fn args() -> LineInFile {
        LineInFile {
            path: Template::new("/etc/x"),
            line: Some(Template::new("k=v")),
            regexp: Some(Template::new("^k=")),
            state: LineState::Present,
            insertafter: None,
            insertbefore: None,
            create: false,
            mode: None,
        }
    }

    fn facts(content: Option<&str>) -> LineFacts {
        let content = content.map(|c| c.as_bytes().to_vec());
        LineFacts {
            path: "/etc/x".into(),
            real: "/etc/x".into(),
            line: Some("k=v".into()),
            regexp: Some("^k=".into()),
            insert: Insert::Eof,
            sha256: content.as_ref().map(|c| hex::encode(Sha256::digest(c))),
            size: content.as_ref().map_or(0, |c| c.len() as u64),
            content: content.unwrap_or_default(),
        }
    }

    #[test]
    fn the_change_writes_if_unchanged_and_diffs() {
        let f = facts(Some("a\nk=1\n"));
        let c = decide(&args(), &f).unwrap();
        assert_eq!(c[0].after, b"a\nk=v\n");
        let cmd = c[0].cmd.display();
        assert!(cmd.contains(f.sha256.as_deref().unwrap()), "{cmd}");
        let d = c[0].diff().unwrap().unified();
        assert!(d.contains("-k=1") && d.contains("+k=v"), "{d}");
        assert!(decide(&args(), &facts(Some("k=v\n"))).unwrap().is_empty());
    }

    #[test]
    fn a_missing_file_fails_unless_create() {
        let e = decide(&args(), &facts(None)).unwrap_err().to_string();
        assert!(e.contains("does not exist") && e.contains("create"), "{e}");
        let c = decide(
            &LineInFile {
                create: true,
                mode: Some(Mode(0o600)),
                ..args()
            },
            &facts(None),
        )
        .unwrap();
        assert_eq!(c[0].after, b"k=v\n");
        assert!(
            c[0].cmd.display().ends_with("/etc/x absent 0600"),
            "{}",
            c[0].cmd.display()
        );
        let absent = LineInFile {
            state: LineState::Absent,
            ..args()
        };
        assert!(decide(&absent, &facts(None)).unwrap().is_empty());
    }

    #[test]
    fn a_file_too_large_is_refused() {
        let f = LineFacts {
            size: MAX_BYTES + 1,
            ..facts(Some("k=v\n"))
        };
        let e = decide(&args(), &f).unwrap_err().to_string();
        assert!(e.contains("more than the 16777216"), "{e}");
    }

    /// The write script run here with `stdin`, as a host's `sh -c` would.
    fn write_here(c: &WriteFile) -> std::process::Output {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(c.cmd.to_shell())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&c.after).unwrap();
        child.wait_with_output().unwrap()
    }

    #[test]
    fn the_write_keeps_mode_and_refuses_a_file_changed_under_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("conf");
        std::fs::write(&p, "k=1\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        let real = p.to_string_lossy().into_owned();
        let f = LineFacts {
            real: real.clone(),
            path: real,
            ..facts(Some("k=1\n"))
        };
        let c = decide(&args(), &f).unwrap();
        // Someone else writes between facts and apply: nothing is written.
        std::fs::write(&p, "k=2\n").unwrap();
        let out = write_here(&c[0]);
        assert_eq!(out.status.code(), Some(CHANGED_UNDER_US as i32), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("changed since ferry read it"));
        assert_eq!(std::fs::read(&p).unwrap(), b"k=2\n");
        // As read: written, mode kept, no temporary file left.
        std::fs::write(&p, "k=1\n").unwrap();
        let out = write_here(&c[0]);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(std::fs::read(&p).unwrap(), b"k=v\n");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
