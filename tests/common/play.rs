//! Test harness: the real `ferry` binary against hosts of a real sshd (`common/sshd.rs`):
//! running it in a directory, reading its JSON report, and a one-host playground.
//!
//! Include after sshd: `#[path = "common/sshd.rs"] mod sshd;` then
//! `#[path = "common/play.rs"] mod play;`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use super::sshd::{Client, Sshd};

/// Run `ferry ARGS...` in `dir` (no ssh-agent: the inventory's key is used).
pub fn ferry(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .current_dir(dir)
        .env_remove("SSH_AUTH_SOCK")
        .output()
        .expect("run ferry")
}

/// `ferry play PLAYBOOK -i inventory.toml --journal journal.json EXTRA...` in `dir`.
pub fn play_in(dir: &Path, playbook: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "play",
        playbook,
        "-i",
        "inventory.toml",
        "--journal",
        "journal.json",
    ];
    args.extend_from_slice(extra);
    ferry(dir, &args)
}

/// stdout then stderr, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A host `h` reached over a real sshd (as root, on this machine), and a directory to
/// play in: `inventory.toml`, `playbook.toml` and the journal live there.
pub struct Host {
    _server: Sshd,
    _client: Client,
    pub dir: tempfile::TempDir,
}

impl Host {
    pub fn start() -> Host {
        let server = Sshd::start();
        let client = Client::new(&server);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("inventory.toml"),
            client.inventory_host("h", server.port),
        )
        .unwrap();
        Host {
            _server: server,
            _client: client,
            dir,
        }
    }

    /// A scratch path on the host (this machine), inside the test's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join("host").join(name)
    }

    /// Run `tasks` (TOML `[[task]]` tables, all on host `h`) with a fresh journal and
    /// return the exit code and the JSON report.
    pub fn play(&self, tasks: &str, extra: &[&str]) -> (Option<i32>, Value) {
        std::fs::create_dir_all(self.dir.path().join("host")).unwrap();
        std::fs::write(
            self.dir.path().join("playbook.toml"),
            format!("name = \"sys\"\n{tasks}"),
        )
        .unwrap();
        let _ = std::fs::remove_file(self.dir.path().join("journal.json"));
        let mut args = vec!["--format", "json", "--yes"];
        args.extend_from_slice(extra);
        let out = play_in(self.dir.path(), "playbook.toml", &args);
        let doc: Value = match serde_json::from_slice(&out.stdout) {
            Ok(doc) => doc,
            // Refused before any host was contacted: no report, the reason on stderr.
            Err(_) if matches!(out.status.code(), Some(4 | 5)) => {
                serde_json::json!({ "stderr": String::from_utf8_lossy(&out.stderr) })
            }
            Err(e) => panic!("no JSON report ({e}): {}", text(&out)),
        };
        (out.status.code(), doc)
    }
}

/// The report's result of `task` on host `h`.
pub fn result<'a>(doc: &'a Value, task: &str) -> &'a Value {
    doc["tasks"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["task"] == task && t["host"] == "h"))
        .unwrap_or(&Value::Null)
}

pub fn status<'a>(doc: &'a Value, task: &str) -> &'a str {
    result(doc, task)["status"].as_str().unwrap_or("?")
}

pub fn error(doc: &Value, task: &str) -> String {
    result(doc, task)["error"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// A `[[task]]` on host `h`.
pub fn task(name: &str, module: &str, body: &str) -> String {
    format!("[[task]]\nname = \"{name}\"\nhosts = \"h\"\n[task.{module}]\n{body}\n\n")
}
