//! The storage import in the ui pod: the upload's pod side, the vendor console's import,
//! and the per-file proof afterwards.

use crate::command::Cmd;
use crate::k8s::Cluster;
use crate::module::kube::{pod_exec, sh_argv};
use crate::module::staged::StagedPath;
use crate::module::{HostReader, ModuleError};
use crate::playbook::template::Template;

pub fn storage_verify_dir(
    ctx: &HostReader,
    verify_dir: &Option<Template>,
) -> Result<Option<String>, ModuleError> {
    Ok(match verify_dir {
        Some(t) => Some(ctx.render_operand(t)?).filter(|d| !d.is_empty()),
        None => Some("/data/packagist".into()),
    })
}

/// `find` in `data_dir` over what is below the two storage dirs (`composer/…`,
/// `artifacts/…`), without the dirs themselves and without failing when one is missing
/// (facts only read: nothing creates them first), printing `format` (a `-printf`
/// format; `%P` is the path as `composer/…`) for each entry; only regular files with
/// `files_only`. Everything else at the top of `data_dir` is pruned unread.
pub fn storage_find_cmd(data_dir: &str, format: &str, files_only: bool) -> Cmd {
    let print = if files_only {
        vec!["(", "-type", "f", "-printf", format, "-o", "-true", ")"]
    } else {
        vec!["-printf", format]
    };
    Cmd::new("cd").arg(data_dir).and(
        Cmd::new("find")
            .args([
                ".",
                "-path",
                ".",
                "-o",
                "-path",
                "./composer",
                "-o",
                "-path",
            ])
            .args(["./artifacts", "-o", "-path", "./*/*"])
            .args(print)
            .args(["-o", "-prune"]),
    )
}

/// sha256 of every file under the two storage dirs (`sha256sum` lines, relative paths).
pub fn content_hash_cmd(dir: &str) -> Cmd {
    Cmd::new("cd").arg(dir).and(Cmd::new("find").args([
        "composer",
        "artifacts",
        "-type",
        "f",
        "-exec",
        "sha256sum",
        "{}",
        "+",
    ]))
}

/// sha256 of every storage file under `dir` in a pod, or `None` if it cannot be read.
pub async fn pod_storage_fingerprint(
    cluster: &Cluster,
    pod: &str,
    container: &str,
    dir: &str,
) -> Result<Option<crate::fingerprint::StorageFingerprint>, ModuleError> {
    let hash = content_hash_cmd(dir);
    match pod_exec(cluster, pod, Some(container), &sh_argv(&hash), None).await {
        Ok(out) => Ok(crate::fingerprint::StorageFingerprint::parse_sha256sum(
            &String::from_utf8_lossy(&out),
        )
        .ok()),
        Err(_) => Ok(None),
    }
}

/// The vendor's console in the ui pod.
pub const CONSOLE: &str = "/srv/manager/bin/console";

/// The pod side of the archive's upload into `staged.part`: a fresh upload creates the
/// part new in ferry's 0700 directory and prints the sha256 of what it wrote; a resumed
/// one appends after the kept prefix once it is checked to be ferry's. A name there
/// that ferry did not create stops it (exit [`NAME_TAKEN_EXIT`]) before a byte is
/// written.
pub fn pod_upload_cmd(staged: &StagedPath, resume: bool) -> Cmd {
    let prepared = Cmd::new("umask").arg("077");
    if resume {
        prepared
            .and(staged.check_part_cmd())
            .and(Cmd::new("cat").op(">>").arg(staged.part.as_str()))
    } else {
        prepared.and(staged.prepare_cmd()).and(
            Cmd::new("tee")
                .arg("-a")
                .arg(staged.part.as_str())
                .pipe(Cmd::new("sha256sum")),
        )
    }
}

/// Move the uploaded part into place as the archive (`staged.dest`, a name nobody else
/// may hold) and run the vendor's storage import on it in `pod`, within `timeout`. The
/// archive is left for the caller to remove.
pub async fn import_storage_archive(
    cluster: &Cluster,
    pod: &str,
    container: &str,
    staged: &StagedPath,
    timeout: std::time::Duration,
) -> Result<(), ModuleError> {
    let import = staged.commit_cmd().and(
        Cmd::new(CONSOLE)
            .args(["packagist:self-hosted:migrate-storage", "import"])
            .arg(staged.dest.as_str()),
    );
    run_alone(cluster, pod, container, IMPORT_LOCK, &import, timeout).await?;
    Ok(())
}

/// The lock of the storage import in the ui container (its own `/tmp`, gone with the pod).
pub const IMPORT_LOCK: &str = "/tmp/.ferry-storage-import.lock";

/// `$1` the lock, then the command to run under it. The lock is a symlink whose target is
/// the holder's pid (made atomically by `ln -s`); a lock whose process is gone (killed
/// with its shell) is stale and taken over. Held by a live process: says so on stdout
/// and runs nothing.
const LOCKED_SCRIPT: &str = r#"lock=$1; shift
if ! ln -s "$$" "$lock" 2>/dev/null; then
  pid=$(readlink "$lock")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "ferry-lock-held $pid"; exit 0; fi
  rm -f -- "$lock"
  ln -s "$$" "$lock" 2>/dev/null || { echo "ferry-lock-held unknown"; exit 0; }
fi
trap 'rm -f -- "$lock"' EXIT
"$@"
"#;

/// Pure: the pid holding the lock, when the locked script found it held.
pub fn lock_holder(stdout: &str) -> Option<String> {
    stdout
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("ferry-lock-held "))
        .map(|p| p.trim().to_string())
}

/// Run `script` in the container under `lock`, never beside another holder of it. An
/// exec'd process outlives its client on a real node: an import from an earlier ferry
/// run that was cut off (killed, a lost connection, its timeout) is still running
/// there. Then this waits until it has ended, up to `timeout` in all, and runs `script`
/// after it; past `timeout` it fails naming the process.
pub async fn run_alone(
    cluster: &Cluster,
    pod: &str,
    container: &str,
    lock: &str,
    script: &Cmd,
    timeout: std::time::Duration,
) -> Result<Vec<u8>, ModuleError> {
    let started = tokio::time::Instant::now();
    let locked = Cmd::new("sh")
        .arg("-c")
        .arg(LOCKED_SCRIPT)
        .arg("ferry-lock")
        .arg(lock)
        .arg("sh")
        .arg("-c")
        .arg(script.to_shell());
    let argv = sh_argv(&locked);
    let poll = std::time::Duration::from_secs(2);
    let held = |pid: &str| ModuleError::Timeout {
        what: format!(
            "the process of an earlier run (pid {pid} in pod {pod}, container {container}) \
             to release {lock}; it is still running: let it finish (kubectl exec {pod} -c \
             {container} -- ps) and run ferry again"
        ),
        secs: timeout.as_secs(),
    };
    let mut said: Option<u64> = None;
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        let run = pod_exec(cluster, pod, Some(container), &argv, None);
        let out = tokio::time::timeout(left, run)
            .await
            .map_err(|_| ModuleError::Timeout {
                what: format!("the command under {lock} in pod {pod} to finish"),
                secs: timeout.as_secs(),
            })??;
        let Some(pid) = lock_holder(&String::from_utf8_lossy(&out)) else {
            return Ok(out);
        };
        let waiting = started.elapsed().as_secs();
        if said.is_none_or(|s| waiting >= s + 15) {
            tracing::warn!(
                "pod {pod}: a process of an earlier run (pid {pid}) still holds {lock}; \
                 waiting for it to end before starting again ({waiting}s)"
            );
            said = Some(waiting);
        }
        if started.elapsed() + poll >= timeout {
            return Err(held(&pid));
        }
        tokio::time::sleep(poll).await;
    }
}

/// The import's proof: the files under `dir` in the pod must be exactly `expected`.
pub async fn prove_imported_storage(
    cluster: &Cluster,
    pod: &str,
    container: &str,
    dir: &str,
    expected: &crate::fingerprint::StorageFingerprint,
) -> Result<(), ModuleError> {
    let now = pod_storage_fingerprint(cluster, pod, container, dir)
        .await?
        .ok_or_else(|| ModuleError::Failed(format!("cannot list the imported files in {dir}")))?;
    let diff = now.diff(expected, 10);
    if !diff.is_empty() {
        return Err(ModuleError::ProofMismatch {
            what: "imported storage".into(),
            detail: diff.join("; "),
        });
    }
    Ok(())
}

#[cfg(test)]
mod upload_tests {
    use super::*;

    #[test]
    fn a_held_lock_is_read_off_the_first_line() {
        assert_eq!(lock_holder("ferry-lock-held 4242\n"), Some("4242".into()));
        assert_eq!(
            lock_holder("ferry-lock-held unknown\n"),
            Some("unknown".into())
        );
        assert_eq!(lock_holder("Storage imported\n"), None);
        // Only the script's own first line counts, not what the command printed.
        assert_eq!(lock_holder("Storage imported\nferry-lock-held 1\n"), None);
    }

    /// Run for real: a live holder is reported and nothing runs; a stale lock (its
    /// process gone) is taken over and released after.
    #[test]
    fn the_lock_script_runs_one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("lock");
        let lock = lock.to_str().unwrap();
        let run = |cmd: &str| {
            let out = std::process::Command::new("sh")
                .args(["-c", LOCKED_SCRIPT, "ferry-lock", lock, "sh", "-c", cmd])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        std::os::unix::fs::symlink(std::process::id().to_string(), lock).unwrap();
        assert_eq!(
            run("echo ran"),
            format!("ferry-lock-held {}\n", std::process::id())
        );
        std::fs::remove_file(lock).unwrap();
        std::os::unix::fs::symlink("999999999", lock).unwrap();
        assert_eq!(run("echo ran"), "ran\n");
        assert!(std::fs::symlink_metadata(lock).is_err(), "released");
    }

    use crate::module::staged::{StagedPath, NAME_TAKEN_EXIT};

    fn run(cmd: &Cmd) -> std::process::Output {
        crate::module::testing::run_sh(cmd).unwrap()
    }
    use std::os::unix::fs::PermissionsExt;

    /// Run `cmd` with `stdin` as a pod's `sh -c` would.
    fn run_with_input(cmd: &Cmd, stdin: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd.to_shell())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        let bytes = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&bytes);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    }

    /// The pod side of the storage upload (storage_import, storage_stream), run by sh
    /// here: with links planted at both names a part could have (beside the archive,
    /// as before, and in a `.ferry` of someone else's), no byte reaches the victim; in a
    /// clean directory the upload lands in ferry's 0700 directory and is committed.
    #[test]
    fn pod_upload_never_writes_through_a_planted_part() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let archive = dir.path().join("packagist_storage.tar.gz");
        let s = StagedPath::of(&archive.to_string_lossy()).unwrap();
        std::os::unix::fs::symlink(&victim, format!("{}.part", s.dest)).unwrap();
        std::fs::create_dir(&s.work).unwrap();
        std::fs::set_permissions(&s.work, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::os::unix::fs::symlink(&victim, &s.part).unwrap();
        for resume in [false, true] {
            let out = run_with_input(&pod_upload_cmd(&s, resume), b"archive bytes");
            assert_eq!(out.status.code(), Some(NAME_TAKEN_EXIT as i32), "{out:?}");
            assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        }
        // ferry's own directory, but a link at the archive's name: the commit refuses.
        std::fs::remove_file(&s.part).unwrap();
        std::fs::set_permissions(&s.work, std::fs::Permissions::from_mode(0o700)).unwrap();
        let out = run_with_input(&pod_upload_cmd(&s, false), b"archive bytes");
        assert!(out.status.success(), "{out:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with(&hex::encode(
                <sha2::Sha256 as sha2::Digest>::digest(b"archive bytes")
            ))
        );
        std::os::unix::fs::symlink(&victim, &s.dest).unwrap();
        let out = run(&s.commit_cmd());
        assert_eq!(out.status.code(), Some(NAME_TAKEN_EXIT as i32), "{out:?}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        std::fs::remove_file(&s.dest).unwrap();
        // A resumed upload appends to ferry's kept part; then it takes the archive's name.
        let out = run_with_input(&pod_upload_cmd(&s, true), b" and more");
        assert!(out.status.success(), "{out:?}");
        assert!(run(&s.commit_cmd()).status.success());
        assert_eq!(std::fs::read(&s.dest).unwrap(), b"archive bytes and more");
    }
}
