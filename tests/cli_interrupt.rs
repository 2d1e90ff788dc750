//! Ctrl-C over a real sshd: the first SIGINT stops the run cleanly (exit 99, the running
//! task recorded as interrupted, the remote command stopped, no later task started),
//! and a re-run finishes the job.

#[path = "common/sshd.rs"]
mod sshd;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sshd::{Client, Sshd};

fn spawn_ferry(dir: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "play",
            "playbook.toml",
            "-i",
            "inventory.toml",
            "--journal",
            "journal.json",
            "--format",
            "json",
        ])
        .current_dir(dir)
        .env_remove("SSH_AUTH_SOCK")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ferry")
}

/// Poll `what` for up to `limit`: a bound on how long a thing may take, not a sleep
/// that stands in for it.
fn within(limit: Duration, mut what: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if what() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    what()
}

fn alive(pid: &str) -> bool {
    // A zombie is dead for our purpose (its parent, sshd's session, reaps it).
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

fn sigint(child: &Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn ctrl_c_stops_the_remote_command_records_the_task_and_a_rerun_completes() {
    let server = Sshd::start_with(sshd::SshdOptions {
        log_level: "DEBUG1",
        ..Default::default()
    });
    let client = Client::new(&server);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("inventory.toml"),
        client.inventory_host("h", server.port),
    )
    .unwrap();
    let pidfile = d.join("sleep.pid");
    let slow = d.join("slow");
    let after = d.join("after");
    std::fs::write(&slow, "").unwrap();
    std::fs::write(
        d.join("playbook.toml"),
        format!(
            "name = \"interrupt\"\n\
             [[task]]\nname = \"long\"\nhosts = \"h\"\n[task.command]\n\
             cmd = \"if [ -e {slow} ]; then sleep 300 & echo $! > {pid}; wait; fi\"\n\n\
             [[task]]\nname = \"after\"\nhosts = \"h\"\n[task.command]\ncmd = \"touch {after}\"\n",
            slow = slow.display(),
            pid = pidfile.display(),
            after = after.display()
        ),
    )
    .unwrap();

    let mut ferry = spawn_ferry(d);
    assert!(
        within(Duration::from_secs(30), || std::fs::read_to_string(
            &pidfile
        )
        .is_ok_and(|p| !p.trim().is_empty())),
        "the long task never started"
    );
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    assert!(alive(&pid), "the remote sleep is not running");
    sigint(&ferry);
    assert!(
        within(Duration::from_secs(20), || ferry
            .try_wait()
            .unwrap()
            .is_some()),
        "ferry still runs 20 s after SIGINT"
    );
    let out = ferry.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(99), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["interrupted"], true, "{report}");
    let long = report["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task"] == "long")
        .expect("the long task is in the report");
    assert!(
        long["error"].as_str().unwrap_or("").contains("interrupted"),
        "{long}"
    );
    assert!(
        within(Duration::from_secs(10), || !alive(&pid)),
        "the remote command (pid {pid}) still runs after the interrupt; sshd: {}",
        server.log()
    );
    assert!(!after.exists(), "a task started after the interrupt");
    let journal: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("journal.json")).unwrap()).unwrap();
    assert_eq!(
        journal["hosts"]["h"]["long"]["status"], "interrupted",
        "{journal}"
    );

    // The re-run runs the interrupted task again and finishes.
    std::fs::remove_file(&slow).unwrap();
    let out = spawn_ferry(d).wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(after.exists(), "the re-run did not finish the job");
    let journal: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("journal.json")).unwrap()).unwrap();
    assert_eq!(
        journal["hosts"]["h"]["long"]["status"], "changed",
        "{journal}"
    );
}
