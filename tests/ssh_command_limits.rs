//! The `command` module through the real binary against a real sshd: bounded output
//! memory (a command printing 200 MiB) and its `timeout`.

#[path = "common/sshd.rs"]
mod sshd;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sshd::{Client, Sshd};

/// Run ferry in `dir`; returns (exit code, stdout, peak RSS in KiB seen while it ran).
fn ferry(dir: &Path) -> (Option<i32>, String, u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "play",
            "playbook.toml",
            "-i",
            "inventory.toml",
            "--format",
            "json",
        ])
        .args(["--journal", "journal.json"])
        .current_dir(dir)
        .env_remove("SSH_AUTH_SOCK")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let status_path = format!("/proc/{}/status", child.id());
    let mut peak = 0u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut { stdout }, &mut s).unwrap();
        s
    });
    loop {
        if let Ok(text) = std::fs::read_to_string(&status_path) {
            if let Some(kb) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            {
                peak = peak.max(kb);
            }
        }
        if let Some(st) = child.try_wait().unwrap() {
            return (st.code(), reader.join().unwrap(), peak);
        }
        assert!(Instant::now() < deadline, "ferry did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn setup(task: &str) -> (Sshd, Client, tempfile::TempDir) {
    let server = Sshd::start();
    let client = Client::new(&server);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("inventory.toml"),
        client.inventory_host("h", server.port),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("playbook.toml"),
        format!("name = \"limits\"\n[[task]]\nname = \"big\"\nhosts = \"all\"\n{task}"),
    )
    .unwrap();
    (server, client, dir)
}

#[test]
fn a_command_printing_200_mib_keeps_ferry_memory_small() {
    let (_server, _client, dir) = setup(
        "[task.command]\ncmd = \"head -c 209715200 /dev/zero | tr '\\\\0' x; echo; echo END\"\nchanged = false\n",
    );
    let (code, stdout, peak_kib) = ferry(dir.path());
    assert_eq!(code, Some(0), "{stdout}");
    assert!(peak_kib > 0);
    assert!(
        peak_kib < 150 * 1024,
        "ferry's peak RSS was {} MiB for 200 MiB of output",
        peak_kib / 1024
    );
    let _ = stdout;
}

#[test]
fn a_command_past_its_timeout_fails_naming_task_and_timeout() {
    let (_server, _client, dir) = setup("[task.command]\ncmd = \"sleep 30\"\ntimeout = \"2s\"\n");
    let started = Instant::now();
    let (code, stdout, _) = ferry(dir.path());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the timeout did not stop it"
    );
    assert_ne!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("did not finish within its timeout of 2s") && stdout.contains("big"),
        "{stdout}"
    );
}
