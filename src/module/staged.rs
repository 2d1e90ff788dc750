//! Files ferry creates on a host or in a pod, safely.

use serde::Serialize;

use crate::command::Cmd;
use crate::module::{HostReader, ModuleError};

// ---------------------------------------------------------------------------------------
// Files ferry creates on a host or in a pod
//
// ferry runs as root: a name another user could have prepared (a `.part` in `/tmp`, a
// symlink at the destination pointing at `/etc/shadow`) must never be written through.
// Every file ferry writes is first created, new (O_EXCL: `set -C`), as
// `<dir of the destination>/.ferry/<name>.part`, in a directory ferry made itself (mode
// 0700, owned by the login/become user, not a symlink: nobody else can put anything
// there), then renamed over the destination (a rename replaces a symlink, never follows
// it). Any name that is taken by something ferry did not create (a symlink, a non-regular
// file, a file of another user, a file with other hard links, a work directory of
// another user or open to others) fails the task with a message saying so; ferry never
// removes or reuses it.

/// The directory, next to a destination, where ferry stages files.
pub const WORK_DIR: &str = ".ferry";

/// Exit status of the safe-write scripts when a name is taken (the message is on stderr).
pub const NAME_TAKEN_EXIT: u32 = 5;

/// POSIX sh functions (busybox sh too) that the safe-write scripts start with.
/// - `ferry_workdir DIR`: DIR is (made, if absent) a real directory of this user with mode
///   0700, or the script exits [`NAME_TAKEN_EXIT`];
/// - `ferry_ours FILE`: 0 if FILE is a regular file of this user with one link, 1 if
///   nothing has that name; exits [`NAME_TAKEN_EXIT`] for anything else;
/// - `ferry_create FILE`: creates FILE empty with O_EXCL, or exits.
pub const SAFE_WRITE_FUNCS: &str = r#"ferry_uid=$(id -u) || exit 1
ferry_taken() { printf '%s exists and was not created by ferry (%s); remove it or choose another path\n' "$1" "$2" >&2; exit 5; }
ferry_workdir() {
  mkdir -m 0700 -- "$1" 2>/dev/null
  if [ -L "$1" ]; then ferry_taken "$1" "a symlink"; fi
  [ -d "$1" ] || ferry_taken "$1" "not a directory"
  ferry_st=$(stat -c '%u %a' -- "$1") || exit 1
  [ "${ferry_st% *}" = "$ferry_uid" ] || ferry_taken "$1" "owned by uid ${ferry_st% *}, not $ferry_uid"
  [ "${ferry_st#* }" = 700 ] || ferry_taken "$1" "mode ${ferry_st#* }, not 0700: other users may have put files there"
}
ferry_ours() {
  if [ -L "$1" ]; then ferry_taken "$1" "a symlink"; fi
  [ -e "$1" ] || return 1
  [ -f "$1" ] || ferry_taken "$1" "not a regular file"
  ferry_st=$(stat -c '%u %h' -- "$1") || exit 1
  [ "${ferry_st% *}" = "$ferry_uid" ] || ferry_taken "$1" "owned by uid ${ferry_st% *}, not $ferry_uid"
  [ "${ferry_st#* }" = 1 ] || ferry_taken "$1" "it has ${ferry_st#* } hard links"
}
ferry_create() { ( set -C; : > "$1" ) 2>/dev/null || ferry_taken "$1" "it appeared while ferry created it"; }
"#;

/// Where ferry stages `path` on a host or in a pod: its work directory
/// `<dir>/.ferry` and the part file `<dir>/.ferry/<name>.part`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StagedPath {
    /// The directory holding the destination.
    pub dir: String,
    /// `<dir>/.ferry`.
    pub work: String,
    /// `<dir>/.ferry/<name>.part`.
    pub part: String,
    /// The destination itself.
    pub dest: String,
}

impl StagedPath {
    pub fn of(dest: &str) -> Result<StagedPath, ModuleError> {
        let p = std::path::Path::new(dest);
        let name = p
            .file_name()
            .filter(|_| !dest.ends_with('/'))
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| {
                ModuleError::Precondition(format!("{dest:?} does not name a file to write"))
            })?;
        let dir = p
            .parent()
            .map(|d| d.to_string_lossy().into_owned())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| ".".into());
        let join = |a: &str, b: &str| {
            if a.ends_with('/') {
                format!("{a}{b}")
            } else {
                format!("{a}/{b}")
            }
        };
        let work = join(&dir, WORK_DIR);
        let part = join(&work, &format!("{name}.part"));
        Ok(StagedPath {
            dir,
            work,
            part,
            dest: dest.to_string(),
        })
    }

    /// Make the directories and create the part new and empty; a part left by an
    /// earlier run of ferry (in ferry's own directory, so ferry's) is replaced. Fails
    /// before anything is written if the destination's name is taken.
    pub fn prepare_cmd(&self) -> Cmd {
        self.prepare_checking(self.dest.as_str())
    }

    /// [`StagedPath::prepare_cmd`] for a scratch file that is never renamed over its
    /// destination (whose name is then not checked).
    pub fn prepare_scratch_cmd(&self) -> Cmd {
        self.prepare_checking("")
    }

    /// PREPARE_SCRIPT, checking that `dest` (unless empty) is not taken by someone else.
    fn prepare_checking(&self, dest: &str) -> Cmd {
        positional_script(
            concat_funcs(PREPARE_SCRIPT),
            "ferry-prepare",
            &[
                self.dir.as_str(),
                self.work.as_str(),
                self.part.as_str(),
                dest,
            ],
        )
    }

    /// Write stdin to `file`, a new file in ferry's work dir (made if absent): a
    /// helper ferry needs beside the part, e.g. the direct route's receiver.
    pub fn create_in_work_cmd(&self, file: &str) -> Cmd {
        positional_script(
            concat_funcs(
                "mkdir -p -- \"$1\" || exit 1\nferry_workdir \"$2\"\nferry_create \"$3\"\ncat >>\"$3\"\n",
            ),
            "ferry-create",
            &[self.dir.as_str(), self.work.as_str(), file],
        )
    }

    /// The kept part is ferry's (to append to it).
    pub fn check_part_cmd(&self) -> Cmd {
        positional_script(
            concat_funcs(CHECK_PART_SCRIPT),
            "ferry-check-part",
            &[self.work.as_str(), self.part.as_str()],
        )
    }

    /// Rename the finished part over the destination (after checking the destination's
    /// name is not taken by someone else).
    pub fn commit_cmd(&self) -> Cmd {
        positional_script(
            concat_funcs(COMMIT_SCRIPT),
            "ferry-commit",
            &[self.part.as_str(), self.dest.as_str()],
        )
    }

    /// Remove the part, only if it is ferry's (in ferry's own directory).
    pub fn remove_part_cmd(&self) -> Cmd {
        positional_script(
            concat_funcs(REMOVE_PART_SCRIPT),
            "ferry-remove-part",
            &[self.work.as_str(), self.part.as_str()],
        )
    }

    /// One line per path (work dir, part, destination) describing what has that name,
    /// without following symlinks; see [`parse_path_states`].
    pub fn state_cmd(&self) -> Cmd {
        positional_script(
            STATE_SCRIPT,
            "ferry-state",
            &[self.work.as_str(), self.part.as_str(), self.dest.as_str()],
        )
    }
}

/// `sh -c SCRIPT NAME ARGS…`: a fixed script that takes every value as a positional
/// argument, so no value is ever part of the script's text.
fn positional_script(script: impl Into<String>, name: &str, args: &[&str]) -> Cmd {
    Cmd::new("sh")
        .arg("-c")
        .arg(script.into())
        .arg(name)
        .args(args.iter().copied())
}

fn concat_funcs(script: &str) -> String {
    let mut s = String::with_capacity(SAFE_WRITE_FUNCS.len() + script.len());
    s.push_str(SAFE_WRITE_FUNCS);
    s.push_str(script);
    s
}

/// `$1` dir, `$2` work dir, `$3` part, `$4` destination.
const PREPARE_SCRIPT: &str = r#"mkdir -p -- "$1" || exit 1
ferry_workdir "$2"
ferry_ours "$4" || :
if ferry_ours "$3"; then rm -f -- "$3" || exit 1; fi
ferry_create "$3"
"#;

/// `$1` work dir, `$2` part.
const CHECK_PART_SCRIPT: &str = r#"ferry_workdir "$1"
ferry_ours "$2" || { echo "$2 is gone: nothing to resume from" >&2; exit 1; }
"#;

/// `$1` part, `$2` destination.
const COMMIT_SCRIPT: &str = r#"ferry_ours "$1" || { echo "$1 is gone" >&2; exit 1; }
ferry_ours "$2" || :
mv -f -T -- "$1" "$2"
"#;

/// `$1` work dir, `$2` part.
const REMOVE_PART_SCRIPT: &str = r#"[ -d "$1" ] && [ ! -L "$1" ] || exit 0
ferry_workdir "$1"
if ferry_ours "$2"; then rm -f -- "$2"; fi
"#;

/// For each argument: `absent`, `symlink`, or `UID LINKS SIZE MODE TYPE` (the
/// login/become user's uid first, on a line of its own).
const STATE_SCRIPT: &str = r#"id -u || exit 1
for p in "$@"; do
  if [ -L "$p" ]; then echo symlink
  elif [ ! -e "$p" ]; then echo absent
  else stat -c '%u %h %s %a %F' -- "$p" || echo unreadable
  fi
done
"#;

/// What has a name ferry wants to write, as [`StagedPath::state_cmd`] saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum PathState {
    Absent,
    /// A regular file (or, for the work dir, a directory with mode 0700) of this user
    /// with one link: ferry's own.
    Ours {
        size: u64,
        mode: u32,
    },
    /// Something ferry did not create: why.
    Taken(String),
}

impl PathState {
    /// The operator's message for a taken `path`.
    pub fn taken_message(&self, path: &str) -> Option<String> {
        match self {
            PathState::Taken(why) => Some(format!(
                "{path} exists and was not created by ferry ({why}); ferry does not write \
                 through or reuse it: remove it or choose another path"
            )),
            _ => None,
        }
    }
}

/// What holds the three names of a [`StagedPath`], as [`StagedPath::state_cmd`] saw them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedStates {
    pub work: PathState,
    pub part: PathState,
    pub dest: PathState,
}

impl StagedStates {
    /// Pure: from [`StagedPath::state_cmd`]'s output.
    pub fn parse(text: &str) -> Result<StagedStates, ModuleError> {
        let [work, part, dest] = parse_path_states(text)?;
        Ok(StagedStates { work, part, dest })
    }

    /// The operator's message for each name of `staged` that ferry did not create.
    pub fn taken(&self, staged: &StagedPath) -> Vec<String> {
        [
            (&self.work, &staged.work),
            (&self.part, &staged.part),
            (&self.dest, &staged.dest),
        ]
        .iter()
        .filter_map(|(state, path)| state.taken_message(path))
        .collect()
    }

    /// Bytes of a part of ferry's in ferry's own directory: what an interrupted write
    /// left, to resume after.
    pub fn kept_part(&self) -> Option<u64> {
        match (&self.work, &self.part) {
            (PathState::Ours { .. }, PathState::Ours { size, .. }) => Some(*size),
            _ => None,
        }
    }
}

/// Pure: the states of the work dir, the part and the destination from
/// [`StagedPath::state_cmd`]'s output.
pub fn parse_path_states(text: &str) -> Result<[PathState; 3], ModuleError> {
    let mut lines = text.lines();
    let uid = lines
        .next()
        .map(str::trim)
        .filter(|u| !u.is_empty() && u.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| unreadable_states(text))?
        .to_string();
    let mut one = |want_dir: bool| -> Result<PathState, ModuleError> {
        let line = lines.next().ok_or_else(|| unreadable_states(text))?;
        Ok(match line.trim() {
            "absent" => PathState::Absent,
            "symlink" => PathState::Taken("a symlink".into()),
            "unreadable" => PathState::Taken("its owner cannot be read".into()),
            other => {
                let mut f = other.splitn(5, ' ');
                let (owner, links, size, mode, kind) = (
                    f.next(),
                    f.next(),
                    f.next(),
                    f.next(),
                    f.next().unwrap_or(""),
                );
                let size = size.and_then(|s| s.parse().ok()).unwrap_or(0);
                let mode = mode
                    .and_then(|m| u32::from_str_radix(m, 8).ok())
                    .unwrap_or(0);
                if owner != Some(uid.as_str()) {
                    PathState::Taken(format!("owned by uid {}, not {uid}", owner.unwrap_or("?")))
                } else if want_dir {
                    if kind != "directory" {
                        PathState::Taken("not a directory".into())
                    } else if mode != 0o700 {
                        PathState::Taken(format!(
                            "mode {mode:04o}, not 0700: other users may have put files there"
                        ))
                    } else {
                        PathState::Ours { size, mode }
                    }
                } else if !kind.starts_with("regular") {
                    PathState::Taken(format!("not a regular file but a {kind}"))
                } else if links != Some("1") {
                    PathState::Taken(format!("it has {} hard links", links.unwrap_or("?")))
                } else {
                    PathState::Ours { size, mode }
                }
            }
        })
    };
    Ok([one(true)?, one(false)?, one(false)?])
}

/// The file-state script printed what it does not print.
fn unreadable_states(text: &str) -> ModuleError {
    ModuleError::Remote {
        what: "cannot read file states".into(),
        detail: format!("{text:?}"),
    }
}

/// An error from a safe-write script: the name-taken message as it is, anything else as
/// the failed command.
pub fn safe_write_error(
    ctx: &HostReader,
    shown: &str,
    out: &crate::transport::ExecOutput,
) -> ModuleError {
    let stderr = ctx.secrets.mask(out.stderr_str().trim());
    if out.status == Some(NAME_TAKEN_EXIT) && stderr.contains("not created by ferry") {
        return ModuleError::Precondition(format!("on host {}: {stderr}", ctx.host));
    }
    ModuleError::CommandFailed {
        cmd: ctx.secrets.mask(shown),
        status: format!("{:?}", out.status),
        stderr,
    }
}

#[cfg(test)]
mod safe_write_tests {
    use super::*;

    fn run(cmd: &Cmd) -> std::process::Output {
        crate::module::testing::run_sh(cmd).unwrap()
    }

    #[test]
    fn staged_paths_live_in_a_work_dir_beside_the_destination() {
        let s = StagedPath::of("/b/packagist_db.sql").unwrap();
        assert_eq!(s.work, "/b/.ferry");
        assert_eq!(s.part, "/b/.ferry/packagist_db.sql.part");
        assert_eq!(StagedPath::of("x").unwrap().part, "./.ferry/x.part");
        assert_eq!(StagedPath::of("/x").unwrap().part, "/.ferry/x.part");
        assert!(StagedPath::of("/b/").is_err());
    }

    #[test]
    fn prepare_creates_a_private_work_dir_and_an_empty_part() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("sub/a.sql");
        let s = StagedPath::of(&dest.to_string_lossy()).unwrap();
        let out = run(&s.prepare_cmd());
        assert!(out.status.success(), "{out:?}");
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(&s.work).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::read(&s.part).unwrap(), b"");
        // A part ferry left there earlier is replaced.
        std::fs::write(&s.part, b"old").unwrap();
        assert!(run(&s.prepare_cmd()).status.success());
        assert_eq!(std::fs::read(&s.part).unwrap(), b"");
        // The commit renames it over the destination.
        std::fs::write(&s.part, b"new").unwrap();
        assert!(run(&s.commit_cmd()).status.success());
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert!(!std::path::Path::new(&s.part).exists());
    }

    #[test]
    fn a_planted_symlink_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let dest = dir.path().join("a.sql");
        let s = StagedPath::of(&dest.to_string_lossy()).unwrap();
        // A symlink as the work dir.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &s.work).unwrap();
        let out = run(&s.prepare_cmd());
        assert_eq!(out.status.code(), Some(NAME_TAKEN_EXIT as i32), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("exists and was not created by ferry (a symlink)"),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
        std::fs::remove_file(&s.work).unwrap();
        // A symlink as the part (only root could plant it in ferry's 0700 dir).
        std::fs::create_dir(&s.work).unwrap();
        std::fs::set_permissions(&s.work, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::os::unix::fs::symlink(&victim, &s.part).unwrap();
        let out = run(&s.prepare_cmd());
        assert_eq!(out.status.code(), Some(NAME_TAKEN_EXIT as i32), "{out:?}");
        assert!(run(&s.check_part_cmd()).status.code() == Some(NAME_TAKEN_EXIT as i32));
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        std::fs::remove_file(&s.part).unwrap();
        // A symlink as the destination: the prepare refuses before anything is written.
        std::os::unix::fs::symlink(&victim, &dest).unwrap();
        let out = run(&s.prepare_cmd());
        assert_eq!(out.status.code(), Some(NAME_TAKEN_EXIT as i32), "{out:?}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        // A work dir open to others.
        std::fs::remove_file(&dest).unwrap();
        std::fs::set_permissions(&s.work, std::fs::Permissions::from_mode(0o777)).unwrap();
        let out = run(&s.prepare_cmd());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("mode 777, not 0700"), "{err}");
    }

    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn states_are_read_without_following_links() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("d");
        let s = StagedPath::of(&dest.to_string_lossy()).unwrap();
        let states = |s: &StagedPath| {
            let out = run(&s.state_cmd());
            parse_path_states(&String::from_utf8_lossy(&out.stdout)).unwrap()
        };
        assert_eq!(
            states(&s),
            [PathState::Absent, PathState::Absent, PathState::Absent]
        );
        assert!(run(&s.prepare_cmd()).status.success());
        std::fs::write(&s.part, b"abc").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &dest).unwrap();
        let [work, part, d] = states(&s);
        assert!(
            matches!(work, PathState::Ours { mode: 0o700, .. }),
            "{work:?}"
        );
        assert!(matches!(part, PathState::Ours { size: 3, .. }), "{part:?}");
        assert_eq!(d, PathState::Taken("a symlink".into()));
        let parsed = parse_path_states(
            "0\n0 2 4096 755 directory\n1000 1 3 600 regular file\n0 2 3 600 regular file\n",
        )
        .unwrap();
        assert_eq!(
            parsed,
            [
                PathState::Taken(
                    "mode 0755, not 0700: other users may have put files there".into()
                ),
                PathState::Taken("owned by uid 1000, not 0".into()),
                PathState::Taken("it has 2 hard links".into()),
            ]
        );
    }
}
