//! What an operator sees on a terminal, through the real binary in a tmux pane of a known
//! size against a real sshd: a live line per running task saying what it does, and a
//! final table that fits the pane's width.

#[path = "common/sshd.rs"]
mod sshd;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sshd::{keygen, Client, Sshd};

const COLUMNS: usize = 72;

/// A tmux server of this test's own (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(dir: &Path, command: &str) -> Tmux {
        if !Path::new("/usr/bin/tmux").exists() {
            // tests/run installs it; a lone `cargo test` does it here.
            let apt = |args: &[&str]| {
                Command::new("apt-get")
                    .args(args)
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false)
            };
            let ok = apt(&["update", "-qq"]) && apt(&["install", "-y", "-qq", "tmux"]);
            assert!(
                ok,
                "this test needs tmux (Debian package tmux) and apt-get failed"
            );
        }
        // A server per test: tests of this file run at the same time.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let socket = format!("ferry-tty-{}-{n}", std::process::id());
        let status = Command::new("tmux")
            .args(["-L", &socket, "-f", "/dev/null", "new-session", "-d"])
            .args(["-x", &COLUMNS.to_string(), "-y", "60", "-c"])
            .arg(dir)
            .arg(format!("{command}; echo FERRY-EXIT=$?; sleep 600"))
            .env_remove("SSH_AUTH_SOCK")
            .status()
            .expect("run tmux");
        assert!(status.success());
        Tmux { socket }
    }

    /// The pane's text, the whole scrollback.
    fn pane(&self) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "capture-pane", "-p", "-J", "-S", "-"])
            .output()
            .expect("tmux capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Type `text` and Enter into the pane.
    fn type_line(&self, text: &str) {
        let status = Command::new("tmux")
            .args(["-L", &self.socket, "send-keys", text, "Enter"])
            .status()
            .expect("tmux send-keys");
        assert!(status.success());
    }

    /// The pane's text as soon as `what` holds for it; panics after `limit`.
    fn wait_for(&self, limit: Duration, what: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let pane = self.pane();
            if what(&pane) {
                return pane;
            }
            assert!(start.elapsed() < limit, "the pane never showed it:\n{pane}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .status();
    }
}

#[test]
fn a_terminal_shows_live_task_lines_and_a_table_that_fits() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("inventory.toml"),
        client.inventory_host("web", server.port),
    )
    .unwrap();
    // A long command line: the table must fold it, not overflow the pane.
    let long = "x".repeat(150);
    std::fs::write(
        d.join("playbook.toml"),
        format!(
            "[[task]]\nname = \"slow step\"\nhosts = \"web\"\n[task.command]\n\
             cmd = \"while test ! -e {}/go; do sleep 0.1; done; echo {long}\"\n",
            d.display()
        ),
    )
    .unwrap();
    let tmux = Tmux::start(
        d,
        &format!(
            "{} play playbook.toml -i inventory.toml --journal journal.json",
            env!("CARGO_BIN_EXE_ferry")
        ),
    );
    // While the task runs: its live line, with the host, the task and what it does.
    let live = tmux.wait_for(Duration::from_secs(30), |p| {
        p.contains("[web]") && p.contains("slow step: run command")
    });
    assert!(
        !live.contains("TASK ["),
        "plain lines on a terminal:\n{live}"
    );
    std::fs::write(d.join("go"), "").unwrap();
    let done = tmux.wait_for(Duration::from_secs(30), |p| p.contains("FERRY-EXIT="));
    assert!(done.contains("FERRY-EXIT=0"), "{done}");
    assert!(done.contains("changed: [web] slow step ("), "{done}");
    assert!(done.contains("PLAY RECAP"), "{done}");
    // The table fits: none of its lines wider than the pane (tmux would have wrapped it,
    // and -J joins wrapped lines back), and the long command is there, folded. (Lines
    // indicatif printed are padded to the width, so the next line joins them: only the
    // table's own lines are measured.)
    let table: Vec<&str> = done
        .lines()
        .filter(|l| l.starts_with(['┌', '│', '╞', '└']))
        .collect();
    assert!(table.len() >= 5, "{done}");
    for line in table {
        assert!(
            line.chars().count() <= COLUMNS,
            "a line wider than {COLUMNS} columns:\n{line}\n\n{done}"
        );
    }
    assert!(done.contains("xxxxxxxxxx"), "{done}");
    assert!(!done.contains(&long), "folded, not whole: {done}");

    // With -v the cells stay whole (the terminal wraps them; -J joins them back).
    let verbose = Tmux::start(
        d,
        &format!(
            "{} -v play playbook.toml -i inventory.toml --journal journal.json 2>/dev/null",
            env!("CARGO_BIN_EXE_ferry")
        ),
    );
    let whole = verbose.wait_for(Duration::from_secs(30), |p| p.contains("FERRY-EXIT="));
    assert!(whole.contains("FERRY-EXIT=0"), "{whole}");
    assert!(whole.contains(&long), "whole with -v: {whole}");
}

/// A key whose passphrase the inventory does not give: a person at the terminal is asked,
/// as ssh asks, and the run goes on with the answer (without a terminal the same run
/// fails naming the encrypted key: tests/ssh_auth.rs).
#[test]
fn a_terminal_is_asked_for_the_key_passphrase() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = keygen(d, "locked", "ed25519", "open sesame", false);
    server.authorize(&key.public);
    std::fs::write(
        d.join("inventory.toml"),
        format!(
            "[hosts.web]\naddress = \"127.0.0.1\"\nport = {}\nuser = \"root\"\n\
             identity_file = \"{}\"\nknown_hosts = \"{}\"\nssh_config = \"{}\"\n",
            server.port,
            key.private.display(),
            client.known_hosts.display(),
            client.ssh_config.display()
        ),
    )
    .unwrap();
    std::fs::write(
        d.join("playbook.toml"),
        "[[task]]\nname = \"hello\"\nhosts = \"web\"\n[task.command]\ncmd = \"true\"\n",
    )
    .unwrap();
    let tmux = Tmux::start(
        d,
        &format!(
            "{} play playbook.toml -i inventory.toml --journal journal.json",
            env!("CARGO_BIN_EXE_ferry")
        ),
    );
    let asked = tmux.wait_for(Duration::from_secs(30), |p| {
        p.contains("Enter passphrase for key")
    });
    assert!(
        asked.contains(&key.private.display().to_string()),
        "{asked}"
    );
    tmux.type_line("open sesame");
    let done = tmux.wait_for(Duration::from_secs(30), |p| p.contains("FERRY-EXIT="));
    assert!(done.contains("FERRY-EXIT=0"), "{done}");
    assert!(done.contains("changed: [web] hello ("), "{done}");
    // The answer is not echoed.
    assert!(!done.contains("open sesame"), "{done}");
}
