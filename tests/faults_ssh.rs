//! Faults at the SSH level, through the real binary against real sshd servers:
//! an unreachable host at start (the others go on, the report says unreachable, exit 3)
//! and a host key that changed between two runs (refused before authentication).

#[path = "common/sshd.rs"]
mod sshd;

use std::path::Path;
use std::process::{Command, Output};

use sshd::{free_port, keygen, Client, Sshd};

fn ferry(dir: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "play",
            "playbook.toml",
            "-i",
            "inventory.toml",
            "--format",
            "json",
        ])
        .args(["--journal", "journal.json"])
        .args(extra)
        .current_dir(dir)
        .env_remove("SSH_AUTH_SOCK")
        .output()
        .expect("run ferry")
}

fn host(name: &str, port: u16, client: &Client) -> String {
    format!("{}connect_timeout = 5\n", client.inventory_host(name, port))
}

const PLAYBOOK: &str = r#"name = "faults"
[[task]]
name = "touch"
hosts = "all"
[task.command]
cmd = "true"
"#;

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON document ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn unreachable_host_does_not_stop_the_others() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let dir = tempfile::tempdir().unwrap();
    let closed = free_port(); // nothing listens there
    std::fs::write(
        dir.path().join("inventory.toml"),
        format!(
            "{}{}",
            host("up", server.port, &client),
            host("down", closed, &client)
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("playbook.toml"), PLAYBOOK).unwrap();
    let out = ferry(dir.path(), &[]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc = json(&out);
    assert_eq!(doc["hosts"]["down"]["unreachable"], true, "{doc}");
    assert_eq!(doc["hosts"]["up"]["unreachable"], false, "{doc}");
    assert_eq!(doc["hosts"]["up"]["changed"], 1, "{doc}");
}

#[test]
fn changed_host_key_stops_the_run_before_authentication() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("inventory.toml"),
        host("h", server.port, &client),
    )
    .unwrap();
    std::fs::write(dir.path().join("playbook.toml"), PLAYBOOK).unwrap();
    let first = ferry(dir.path(), &[]);
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );

    // The server's key "changes": known_hosts now holds another key for it.
    let other = keygen(dir.path(), "impostor", "ed25519", "", false);
    let mut parts = other.public.split_whitespace();
    let (kind, key) = (parts.next().unwrap(), parts.next().unwrap());
    std::fs::write(
        &client.known_hosts,
        format!("[127.0.0.1]:{} {kind} {key}\n", server.port),
    )
    .unwrap();
    let logins_before = server.log().matches("Accepted publickey").count();

    let second = ferry(dir.path(), &[]);
    assert_eq!(second.status.code(), Some(3));
    let doc = json(&second);
    assert_eq!(doc["hosts"]["h"]["unreachable"], true, "{doc}");
    let all = format!("{doc}{}", String::from_utf8_lossy(&second.stderr));
    assert!(all.contains("CHANGED"), "no clear host-key message: {all}");
    assert_eq!(
        server.log().matches("Accepted publickey").count(),
        logins_before,
        "ferry authenticated to a host whose key changed"
    );
}
