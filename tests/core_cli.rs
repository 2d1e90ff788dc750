//! The `ferry` binary: exit code 2 on bad input, before any host is contacted.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use ferry::journal::Journal;
use ferry::secrets::Secrets;

fn ferry(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// A "host" that records whether anyone connected to it.
struct Watcher(TcpListener);

impl Watcher {
    fn new() -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        Watcher(l)
    }
    fn port(&self) -> u16 {
        self.0.local_addr().unwrap().port()
    }
    fn contacted(&self) -> bool {
        match self.0.accept() {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("{e}"),
        }
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_string_lossy().into_owned()
}

fn inventory(dir: &Path, port: u16, extra: &str) -> String {
    write(
        dir,
        "inv.toml",
        &format!("[hosts.old]\naddress = \"127.0.0.1\"\nport = {port}\n{extra}\n"),
    )
}

const GOOD_PLAY: &str = "[[task]]\nname = \"t\"\nhosts = \"old\"\n[task.command]\ncmd = \"true\"\n";

fn assert_bad_input(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected `{needle}` in: {stderr}");
    assert!(out.stdout.is_empty(), "no report on bad input");
}

#[test]
fn undefined_variable_exits_2_without_contacting() {
    let dir = tempfile::tempdir().unwrap();
    let host = Watcher::new();
    let inv = inventory(dir.path(), host.port(), "");
    let pb = write(
        dir.path(),
        "pb.toml",
        "[[task]]\nname = \"t\"\nhosts = \"old\"\n[task.command]\ncmd = \"ls {{ nope }}\"\n",
    );
    let out = ferry(&["play", &pb, "-i", &inv]);
    assert_bad_input(
        &out,
        "pb.toml:5:11: template \"ls {{ nope }}\": undefined variable `nope`",
    );
    assert!(!host.contacted());
}

#[test]
fn bad_playbook_and_inventory_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let host = Watcher::new();
    let inv = inventory(dir.path(), host.port(), "");
    let pb = write(
        dir.path(),
        "pb.toml",
        "[[task]]\nname = \"t\"\nhosts = \"old\"\nbogus = 1\n[task.command]\ncmd = \"true\"\n",
    );
    assert_bad_input(
        &ferry(&["play", &pb, "-i", &inv]),
        "pb.toml:4:1: unknown field `bogus`",
    );
    let good = write(dir.path(), "good.toml", GOOD_PLAY);
    let bad_inv = inventory(dir.path(), host.port(), "prot = 1");
    assert_bad_input(
        &ferry(&["play", &good, "-i", &bad_inv]),
        "inv.toml:4:1: unknown field `prot`",
    );
    let env_inv = inventory(
        dir.path(),
        host.port(),
        "password_env = \"FERRY_TEST_SURELY_UNSET\"",
    );
    assert_bad_input(
        &ferry(&["play", &good, "-i", &env_inv]),
        "environment variable `FERRY_TEST_SURELY_UNSET` is not set",
    );
    assert!(!host.contacted());
}

#[test]
fn bad_flags_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let host = Watcher::new();
    let inv = inventory(dir.path(), host.port(), "");
    let pb = write(dir.path(), "pb.toml", GOOD_PLAY);
    assert_eq!(
        ferry(&["play", &pb, "-i", &inv, "--frobnicate"])
            .status
            .code(),
        Some(2)
    );
    assert_bad_input(
        &ferry(&["play", &pb, "-i", &inv, "--limit", "nohost"]),
        "no host or group named `nohost`",
    );
    assert_bad_input(
        &ferry(&["play", &pb, "-i", &inv, "--start-at", "nope"]),
        "no task named `nope`",
    );
    assert_eq!(
        ferry(&["play", &pb, "-i", &inv, "--forks", "0"])
            .status
            .code(),
        Some(2)
    );
    assert!(!host.contacted());
}

#[test]
fn locked_journal_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let host = Watcher::new();
    let inv = inventory(dir.path(), host.port(), "");
    let pb = write(dir.path(), "pb.toml", GOOD_PLAY);
    let journal = dir.path().join("j.journal.json");
    let _held = Journal::open(&journal, "pb", Secrets::new(), true).unwrap();
    let out = ferry(&[
        "play",
        &pb,
        "-i",
        &inv,
        "--journal",
        journal.to_str().unwrap(),
    ]);
    assert_bad_input(&out, "is locked by another ferry run");
    assert!(!host.contacted());
}

#[test]
fn status_reads_the_journal_without_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let host = Watcher::new();
    let inv = inventory(dir.path(), host.port(), "");
    let pb = write(dir.path(), "pb.toml", GOOD_PLAY);
    let out = ferry(&["status", &pb, "-i", &inv]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing has run yet"));
    // The default journal lives beside the inventory.
    let journal = dir.path().join(".ferry/pb.journal.json");
    let j = Journal::open(&journal, "pb", Secrets::new(), true).unwrap();
    j.task_started("old", "t").unwrap();
    j.task_finished("old", "t", ferry::journal::RecordStatus::Changed, &[], None)
        .unwrap();
    drop(j);
    let out = ferry(&["status", &pb, "-i", &inv, "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["hosts"]["old"]["t"]["status"], "changed");
    assert!(!host.contacted());
}
