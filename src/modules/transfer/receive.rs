//! The receiving end of `transfer`: the fixed shell script that takes the bytes into
//! ferry's part file and renames it only once its sha256 matches, and the chmod that
//! follows no symlink.

use crate::command::Cmd;
use crate::journal::Artifact;
use crate::module::staged::SAFE_WRITE_FUNCS;

use super::part_path;

/// Receives the bytes on stdin into `$part` (appending after its existing prefix when
/// `$resume` is 1), hashing the whole file in the same pass; prints the sha256; renames
/// `$part` to `$dest` with `$mode` only if the hash is `$expected`. A short file (the
/// sender stopped: killed, connection lost) is kept for the next run to resume; a
/// complete but wrong one is removed. `$part` lives in ferry's work directory beside
/// `$dest` ([`StagedPath`]): made 0700 by ferry, the part created new there (O_EXCL);
/// a name there or at `$dest` that ferry did not create stops it (exit 5) before a byte
/// is written. Values arrive as positional arguments: the script text is fixed.
pub const RECEIVE_SCRIPT: &str = r#"set -o pipefail
part=$1 dest=$2 expected=$3 size=$4 mode=$5 resume=$6
umask 077
work=$(dirname -- "$part") && dir=$(dirname -- "$work") || exit 1
mkdir -p -- "$dir" || exit 1
ferry_workdir "$work"
ferry_ours "$dest" || :
if [ "$resume" = 1 ]; then
  ferry_ours "$part" || { echo "$part is gone: nothing to resume from" >&2; exit 1; }
  got=$({ cat -- "$part" && tee -a -- "$part"; } | sha256sum) || exit 1
else
  if ferry_ours "$part"; then rm -f -- "$part" || exit 1; fi
  ferry_create "$part"
  got=$(tee -a -- "$part" | sha256sum) || exit 1
fi
got=${got%% *}
printf '%s\n' "$got"
have=$(stat -c %s -- "$part") || exit 1
if [ "$have" -lt "$size" ]; then
  echo "incomplete: $have of $size bytes arrived; kept $part to resume from" >&2
  exit 4
fi
if [ "$got" != "$expected" ]; then
  rm -f -- "$part"
  echo "the received file's sha256 is $got, expected $expected; removed $part" >&2
  exit 3
fi
chmod -- "$mode" "$part" || exit 1
ferry_ours "$dest" || :
mv -f -T -- "$part" "$dest""#;

/// The far end of a transfer: [`RECEIVE_SCRIPT`] with its arguments.
pub fn receive_cmd(dest: &str, artifact: &Artifact, mode: u32, resume: bool) -> Cmd {
    let mut script = String::from(SAFE_WRITE_FUNCS);
    script.push_str(RECEIVE_SCRIPT);
    Cmd::new("bash")
        .arg("-c")
        .arg(script)
        .arg("ferry-receive")
        .arg(part_path(dest))
        .arg(dest)
        .arg(artifact.sha256.as_str())
        .arg(artifact.size.to_string())
        .arg(format!("{mode:04o}"))
        .arg(if resume { "1" } else { "0" })
}

/// `chmod MODE DEST`, only while `dest` is ferry's regular file (chmod would follow a
/// symlink put there since the facts were read).
pub(super) fn chmod_cmd(dest: &str, mode: u32) -> Cmd {
    let mut script = String::from(SAFE_WRITE_FUNCS);
    script.push_str(
        r#"ferry_ours "$1" || { echo "$1 is gone" >&2; exit 1; }
chmod -- "$2" "$1""#,
    );
    Cmd::new("sh")
        .arg("-c")
        .arg(script)
        .arg("ferry-chmod")
        .arg(dest)
        .arg(format!("{mode:04o}"))
}
