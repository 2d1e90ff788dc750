//! The `ferry` binary: exit code 2 on bad input, before any host is contacted.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use ferry::inventory::Inventory;
use ferry::journal::{Journal, JournalOwner, RecordStatus};
use ferry::playbook::Playbook;
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

/// Exit codes (ansible-playbook's): 1 other errors, 4 a file that does not parse or
/// check, 5 bad options.
const EXIT_ERROR: i32 = 1;
const EXIT_PARSE: i32 = 4;
const EXIT_OPTIONS: i32 = 5;

fn assert_refused(out: &Output, code: i32, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
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
    assert_refused(
        &out,
        EXIT_PARSE,
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
    assert_refused(
        &ferry(&["play", &pb, "-i", &inv]),
        EXIT_PARSE,
        "pb.toml:4:1: unknown field `bogus`",
    );
    let good = write(dir.path(), "good.toml", GOOD_PLAY);
    let bad_inv = inventory(dir.path(), host.port(), "prot = 1");
    assert_refused(
        &ferry(&["play", &good, "-i", &bad_inv]),
        EXIT_PARSE,
        "inv.toml:4:1: unknown field `prot`",
    );
    let env_inv = inventory(
        dir.path(),
        host.port(),
        "password_env = \"FERRY_TEST_SURELY_UNSET\"",
    );
    assert_refused(
        &ferry(&["play", &good, "-i", &env_inv]),
        EXIT_PARSE,
        "environment variable `FERRY_TEST_SURELY_UNSET` is not set",
    );
    assert!(!host.contacted());
}

#[test]
fn bad_flags_exit_5() {
    let dir = tempfile::tempdir().unwrap();
    let host = Watcher::new();
    let inv = inventory(dir.path(), host.port(), "");
    let pb = write(dir.path(), "pb.toml", GOOD_PLAY);
    assert_eq!(
        ferry(&["play", &pb, "-i", &inv, "--frobnicate"])
            .status
            .code(),
        Some(EXIT_OPTIONS)
    );
    assert_refused(
        &ferry(&["play", &pb, "-i", &inv, "--limit", "nohost"]),
        EXIT_OPTIONS,
        "no host or group named `nohost`",
    );
    assert_refused(
        &ferry(&["play", &pb, "-i", &inv, "--start-at", "nope"]),
        EXIT_OPTIONS,
        "no task named `nope`",
    );
    assert_eq!(
        ferry(&["play", &pb, "-i", &inv, "--forks", "0"])
            .status
            .code(),
        Some(EXIT_OPTIONS)
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
    assert_refused(&out, EXIT_ERROR, "is locked by another ferry run");
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
    let (journal, owner) = default_journal(&pb, &inv);
    assert_eq!(journal.parent(), Some(dir.path().join(".ferry").as_path()));
    let j = Journal::open_for(&journal, &owner, Secrets::new(), true).unwrap();
    j.task_started("old", "t").unwrap();
    j.task_finished("old", "t", RecordStatus::Changed, &[], None)
        .unwrap();
    drop(j);
    let out = ferry(&["status", &pb, "-i", &inv, "--format", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["hosts"]["old"]["t"]["status"], "changed");
    assert!(!host.contacted());
}

/// The default journal of `playbook` with `inventory`, and the owner a run records.
fn default_journal(playbook: &str, inventory: &str) -> (std::path::PathBuf, JournalOwner) {
    let secrets = Secrets::new();
    let inv = Inventory::load(Path::new(inventory), &secrets).unwrap();
    let pb = Playbook::load(Path::new(playbook)).unwrap();
    (
        inv.default_journal_path(Path::new(playbook)),
        ferry::engine::journal_owner(&pb, &inv),
    )
}

/// Record `task` as done on `host`, as `owner`'s run would.
fn record_done(journal: &Path, owner: &JournalOwner, host: &str, task: &str) {
    let j = Journal::open_for(journal, owner, Secrets::new(), true).unwrap();
    j.task_started(host, task).unwrap();
    j.task_finished(host, task, RecordStatus::Changed, &[], None)
        .unwrap();
}

/// Two playbooks with the same file name (other directories) keep journals of their
/// own, and one refuses the other's journal when it is given with --journal.
#[test]
fn same_named_playbooks_do_not_share_a_journal() {
    let dir = tempfile::tempdir().unwrap();
    let host = Watcher::new();
    let inv = inventory(dir.path(), host.port(), "");
    std::fs::create_dir_all(dir.path().join("a")).unwrap();
    std::fs::create_dir_all(dir.path().join("b")).unwrap();
    let pb_a = write(&dir.path().join("a"), "pb.toml", GOOD_PLAY);
    let pb_b = write(&dir.path().join("b"), "pb.toml", GOOD_PLAY);
    let (journal_a, owner_a) = default_journal(&pb_a, &inv);
    let (journal_b, _) = default_journal(&pb_b, &inv);
    assert_ne!(journal_a, journal_b);
    record_done(&journal_a, &owner_a, "old", "t");
    // b's default journal is its own: nothing has run.
    let out = ferry(&["status", &pb_b, "-i", &inv]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nothing has run yet"));
    // a's journal given to b: refused, naming both playbooks, nothing contacted.
    for command in ["play", "status"] {
        let out = ferry(&[
            command,
            &pb_b,
            "-i",
            &inv,
            "--journal",
            journal_a.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(EXIT_ERROR), "{command}: {stderr}");
        assert!(stderr.contains("belongs to playbook"), "{stderr}");
        let canonical = |p: &str| std::fs::canonicalize(p).unwrap().display().to_string();
        assert!(stderr.contains(&canonical(&pb_a)), "{stderr}");
        assert!(stderr.contains(&canonical(&pb_b)), "{stderr}");
    }
    // --start-at on b trusts nothing of a's.
    let out = ferry(&[
        "play",
        &pb_b,
        "-i",
        &inv,
        "--start-at",
        "t",
        "--journal",
        journal_a.to_str().unwrap(),
    ]);
    assert_refused(&out, EXIT_ERROR, "belongs to playbook");
    assert!(!host.contacted());
}

/// An edited task is not skipped by --start-at on the strength of a record its earlier
/// definition made.
#[test]
fn start_at_refuses_to_skip_an_edited_task() {
    let dir = tempfile::tempdir().unwrap();
    let host = Watcher::new();
    let inv = inventory(dir.path(), host.port(), "");
    let two = |first_cmd: &str| {
        format!(
            "[[task]]\nname = \"first\"\nhosts = \"old\"\n[task.command]\ncmd = \"{first_cmd}\"\n\n\
             [[task]]\nname = \"second\"\nhosts = \"old\"\n[task.command]\ncmd = \"true\"\n"
        )
    };
    let pb = write(dir.path(), "pb.toml", &two("echo one"));
    let (journal, owner) = default_journal(&pb, &inv);
    record_done(&journal, &owner, "old", "first");
    write(dir.path(), "pb.toml", &two("echo two"));
    let out = ferry(&["play", &pb, "-i", &inv, "--start-at", "second"]);
    assert_refused(
        &out,
        EXIT_OPTIONS,
        "task `first` is skipped but has been edited",
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pb.toml:1:1"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!host.contacted());
}

/// A journal of an older ferry at the old default path is not taken over silently.
#[test]
fn a_journal_at_the_old_default_path_is_reported_not_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let host = Watcher::new();
    let inv = inventory(dir.path(), host.port(), "");
    let pb = write(dir.path(), "pb.toml", GOOD_PLAY);
    std::fs::create_dir_all(dir.path().join(".ferry")).unwrap();
    let legacy = dir.path().join(".ferry/pb.journal.json");
    std::fs::write(&legacy, r#"{"version": 1, "playbook": "pb", "hosts": {}}"#).unwrap();
    let out = ferry(&["play", &pb, "-i", &inv]);
    assert_refused(&out, EXIT_ERROR, "found a journal of an older ferry");
    assert!(String::from_utf8_lossy(&out.stderr).contains("mv "));
    assert!(!host.contacted());
    // Moved into place as the message says, it is adopted.
    let (journal, owner) = default_journal(&pb, &inv);
    std::fs::rename(&legacy, &journal).unwrap();
    record_done(&journal, &owner, "old", "t");
    let out = ferry(&["status", &pb, "-i", &inv]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `--journal` naming a lock file or a symlink is refused before anything is contacted.
#[test]
fn journal_at_a_lock_name_or_a_symlink_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let host = Watcher::new();
    let inv = inventory(dir.path(), host.port(), "");
    let pb = write(dir.path(), "pb.toml", GOOD_PLAY);
    let lock = dir.path().join("x.lock");
    let out = ferry(&["play", &pb, "-i", &inv, "--journal", lock.to_str().unwrap()]);
    assert_refused(&out, EXIT_ERROR, "its own lock");
    let target = dir.path().join("elsewhere.json");
    std::fs::write(&target, "keep me").unwrap();
    let link = dir.path().join("j.journal.json");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = ferry(&["play", &pb, "-i", &inv, "--journal", link.to_str().unwrap()]);
    assert_refused(&out, EXIT_ERROR, "is a symlink");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me");
    assert!(!host.contacted());
}

/// What a case writes for a file.
enum Content {
    Text(&'static str),
    Bytes(&'static [u8]),
    /// The file is not created.
    Missing,
}

/// One bad input and what `ferry play` must say about it.
struct Case {
    name: &'static str,
    /// The inventory; `{port}` becomes the recording host's port. `None`: a good one.
    inventory: Option<Content>,
    /// The playbook. `None`: a good one.
    playbook: Option<Content>,
    /// The file the error must name: "inv.toml" or "pb.toml".
    file: &'static str,
    /// `line:column` in that file.
    at: &'static str,
    /// The field the error must name, where there is one.
    field: Option<&'static str>,
    /// A fragment of the message.
    says: &'static str,
}

const GOOD_INVENTORY: &str = "[hosts.old]\naddress = \"127.0.0.1\"\nport = {port}\n";

/// Every kind of bad input exits 2 naming `file:line:column` (and the field), before
/// any host is contacted.
#[test]
fn hostile_input_matrix() {
    use Content::*;
    let task = |module: &'static str| -> Option<Content> { Some(Text(module)) };
    let cases = [
        Case {
            name: "malformed TOML (playbook)",
            inventory: None,
            playbook: task("[[task]\nname = \"t\"\n"),
            file: "pb.toml",
            at: "1:8",
            field: None,
            says: "unclosed array table, expected `]`",
        },
        Case {
            name: "malformed TOML (inventory)",
            inventory: Some(Text("[hosts.old]\naddress = \"127.0.0.1\nport = {port}\n")),
            playbook: None,
            file: "inv.toml",
            at: "2:21",
            field: Some("address"),
            says: "invalid basic string",
        },
        Case {
            name: "duplicate key (TOML)",
            inventory: Some(Text("[hosts.old]\nport = {port}\nport = 22\n")),
            playbook: None,
            file: "inv.toml",
            at: "3:1",
            field: Some("port"),
            says: "duplicate key",
        },
        Case {
            name: "unknown task key",
            inventory: None,
            playbook: task("[[task]]\nname = \"t\"\nhosts = \"old\"\nbogus = 1\n[task.command]\ncmd = \"true\"\n"),
            file: "pb.toml",
            at: "4:1",
            field: Some("bogus"),
            says: "unknown field `bogus`",
        },
        Case {
            name: "unknown module key",
            inventory: None,
            playbook: task("[[task]]\nname = \"t\"\nhosts = \"old\"\n[task.command]\ncmd = \"true\"\ncreatez = \"/x\"\n"),
            file: "pb.toml",
            at: "6:1",
            field: Some("createz"),
            says: "unknown field `createz`",
        },
        Case {
            name: "unknown playbook key",
            inventory: None,
            playbook: task("nmae = \"x\"\n[[task]]\nname = \"t\"\nhosts = \"old\"\n[task.command]\ncmd = \"true\"\n"),
            file: "pb.toml",
            at: "1:1",
            field: Some("nmae"),
            says: "unknown field `nmae`",
        },
        Case {
            name: "unknown inventory host key",
            inventory: Some(Text("[hosts.old]\naddress = \"127.0.0.1\"\nport = {port}\nprot = 1\n")),
            playbook: None,
            file: "inv.toml",
            at: "4:1",
            field: Some("prot"),
            says: "unknown field `prot`",
        },
        Case {
            name: "unknown inventory group key",
            inventory: Some(Text("[hosts.old]\nport = {port}\n[groups.g]\nhost = [\"old\"]\n")),
            playbook: None,
            file: "inv.toml",
            at: "4:1",
            field: Some("host"),
            says: "unknown field `host`",
        },
        Case {
            name: "wrong type (inventory port)",
            inventory: Some(Text("[hosts.old]\nport = \"{port}\"\n")),
            playbook: None,
            file: "inv.toml",
            at: "2:8",
            field: Some("port"),
            says: "invalid type",
        },
        Case {
            name: "wrong type (task tags)",
            inventory: None,
            playbook: task("[[task]]\nname = \"t\"\nhosts = \"old\"\ntags = \"x\"\n[task.command]\ncmd = \"true\"\n"),
            file: "pb.toml",
            at: "4:8",
            field: Some("tags"),
            says: "invalid type",
        },
        Case {
            name: "wrong type (module field)",
            inventory: None,
            playbook: task("[[task]]\nname = \"t\"\nhosts = \"old\"\n[task.command]\ncmd = \"true\"\nchanged = \"yes\"\n"),
            file: "pb.toml",
            at: "6:11",
            field: Some("changed"),
            says: "expected a boolean",
        },
        Case {
            name: "undefined template variable",
            inventory: None,
            playbook: task("[[task]]\nname = \"t\"\nhosts = \"old\"\n[task.command]\ncmd = \"ls {{ nope }}\"\n"),
            file: "pb.toml",
            at: "5:11",
            field: Some("cmd"),
            says: "undefined variable `nope`",
        },
        Case {
            name: "undefined variable in `when`",
            inventory: None,
            playbook: task("[[task]]\nname = \"t\"\nhosts = \"old\"\nwhen = \"{{ nope }}\"\n[task.command]\ncmd = \"true\"\n"),
            file: "pb.toml",
            at: "4:9",
            field: Some("when"),
            says: "undefined variable `nope`",
        },
        Case {
            name: "unclosed template block",
            inventory: None,
            playbook: task("[[task]]\nname = \"t\"\nhosts = \"old\"\n[task.command]\ncmd = \"ls {{#if x}}\"\n"),
            file: "pb.toml",
            at: "5:",
            field: Some("cmd"),
            says: "invalid template",
        },
        Case {
            name: "a task with two modules",
            inventory: None,
            playbook: task("[[task]]\nname = \"t\"\nhosts = \"old\"\n[task.command]\ncmd = \"true\"\n[task.assert]\nthat = \"x\"\n"),
            file: "pb.toml",
            // TOML tables arrive in key order: the second module is `command`.
            at: "4:7",
            field: None,
            says: "a task has exactly one module, this one has two: `assert` and `command`",
        },
        Case {
            name: "a task with no module",
            inventory: None,
            playbook: task("[[task]]\nname = \"lonely\"\nhosts = \"old\"\n"),
            file: "pb.toml",
            at: "1:1",
            field: None,
            says: "task `lonely` has no module",
        },
        Case {
            name: "cyclic dependencies",
            inventory: None,
            playbook: task("[[task]]\nname = \"a\"\nhosts = \"old\"\nafter = [\"b\"]\n[task.command]\ncmd = \"true\"\n[[task]]\nname = \"b\"\nhosts = \"old\"\nafter = [\"a\"]\n[task.command]\ncmd = \"true\"\n"),
            file: "pb.toml",
            at: "4:10",
            field: Some("after"),
            says: "task `a` depends on `b`, which is not an earlier task",
        },
        Case {
            name: "a task depending on itself",
            inventory: None,
            playbook: task("[[task]]\nname = \"a\"\nhosts = \"old\"\nafter = [\"a\"]\n[task.command]\ncmd = \"true\"\n"),
            file: "pb.toml",
            at: "4:10",
            field: Some("after"),
            says: "itself (a cycle)",
        },
        Case {
            name: "missing dependency",
            inventory: None,
            playbook: task("[[task]]\nname = \"a\"\nhosts = \"old\"\nafter = [\"nope\"]\n[task.command]\ncmd = \"true\"\n"),
            file: "pb.toml",
            at: "4:10",
            field: Some("after"),
            says: "depends on `nope`, which is not an earlier task",
        },
        Case {
            name: "duplicate task names",
            inventory: None,
            playbook: task("[[task]]\nname = \"a\"\nhosts = \"old\"\n[task.command]\ncmd = \"true\"\n[[task]]\nname = \"a\"\nhosts = \"old\"\n[task.command]\ncmd = \"true\"\n"),
            file: "pb.toml",
            at: "6:1",
            field: Some("name"),
            says: "two tasks are named `a`",
        },
        Case {
            name: "unknown group in a task's hosts",
            inventory: None,
            playbook: task("[[task]]\nname = \"t\"\nhosts = \"old,nogroup\"\n[task.command]\ncmd = \"true\"\n"),
            file: "pb.toml",
            at: "3:9",
            field: Some("hosts"),
            says: "no host or group named `nogroup`",
        },
        Case {
            name: "unknown host in an inventory group",
            inventory: Some(Text("[hosts.old]\nport = {port}\n[groups.g]\nhosts = [\"old\", \"ghost\"]\n")),
            playbook: None,
            file: "inv.toml",
            at: "4:17",
            field: Some("hosts"),
            says: "group `g` lists unknown host `ghost`",
        },
        Case {
            name: "raw {{{x}}} in a shell field",
            inventory: None,
            playbook: task("[[task]]\nname = \"t\"\nhosts = \"old\"\n[task.command]\ncmd = \"ls {{{x}}}\"\n"),
            file: "pb.toml",
            at: "5:11",
            field: Some("cmd"),
            says: "raw interpolation",
        },
        Case {
            name: "raw {{&x}} in a shell field",
            inventory: None,
            playbook: task("[[task]]\nname = \"t\"\nhosts = \"old\"\n[task.command]\ncmd = \"ls {{&x}}\"\n"),
            file: "pb.toml",
            at: "5:11",
            field: Some("cmd"),
            says: "raw interpolation",
        },
        Case {
            name: "self-quoted value in a shell field",
            inventory: None,
            playbook: task("[[task]]\nname = \"t\"\nhosts = \"old\"\n[task.command]\ncmd = \"ls '{{x}}'\"\n"),
            file: "pb.toml",
            at: "5:12",
            field: Some("cmd"),
            says: "wrapped in quotes",
        },
        Case {
            name: "raw {{ &x }} (spaced) in a shell field",
            inventory: None,
            playbook: task("[[task]]\nname = \"t\"\nhosts = \"old\"\n[task.command]\ncmd = \"ls {{ &x }}\"\n"),
            file: "pb.toml",
            at: "5:11",
            field: Some("cmd"),
            says: "raw interpolation",
        },
        Case {
            name: "value inside the template's own double quotes",
            inventory: None,
            playbook: task("[vars]\nx = \"1\"\n[[task]]\nname = \"t\"\nhosts = \"old\"\n[task.command]\ncmd = 'echo \"a {{x}}\"'\n"),
            file: "pb.toml",
            at: "7:16",
            field: Some("cmd"),
            says: "inside double quotes",
        },
        Case {
            name: "value in a here-document",
            inventory: None,
            playbook: task("[vars]\nx = \"1\"\n[[task]]\nname = \"t\"\nhosts = \"old\"\n[task.command]\ncmd = '''\ncat <<EOF\n{{x}}\nEOF\n'''\n"),
            file: "pb.toml",
            at: "9:1",
            field: Some("cmd"),
            says: "here-document",
        },
        Case {
            name: "value in a comment",
            inventory: None,
            playbook: task("[vars]\nx = \"1\"\n[[task]]\nname = \"t\"\nhosts = \"old\"\n[task.command]\ncmd = \"true # {{x}}\"\n"),
            file: "pb.toml",
            at: "7:15",
            field: Some("cmd"),
            says: "comment",
        },
        Case {
            name: "value in command position",
            inventory: None,
            playbook: task("[vars]\nx = \"PATH=/tmp\"\n[[task]]\nname = \"t\"\nhosts = \"old\"\n[task.command]\ncmd = \"{{x}} ls\"\n"),
            file: "pb.toml",
            at: "7:8",
            field: Some("cmd"),
            says: "command position",
        },
        Case {
            name: "inventory var named like a built-in",
            inventory: Some(Text("[hosts.old]\nport = {port}\n[hosts.old.vars]\ngroups = \"x\"\n")),
            playbook: None,
            file: "inv.toml",
            at: "4:10",
            field: Some("groups"),
            says: "ferry sets itself",
        },
        Case {
            name: "playbook var named like a built-in",
            inventory: None,
            playbook: task("[vars]\nhostvars = 1\n[[task]]\nname = \"t\"\nhosts = \"old\"\n[task.command]\ncmd = \"true\"\n"),
            file: "pb.toml",
            at: "2:12",
            field: Some("hostvars"),
            says: "ferry sets itself",
        },
        Case {
            name: "NUL byte in an inventory var",
            inventory: Some(Text("[hosts.old]\nport = {port}\n[hosts.old.vars]\nx = \"a\\u0000b\"\n")),
            playbook: None,
            file: "inv.toml",
            at: "4:5",
            field: Some("x"),
            says: "NUL byte",
        },
        Case {
            name: "NUL byte in a playbook var",
            inventory: None,
            playbook: task("[vars]\nx = [\"ok\", \"a\\u0000b\"]\n[[task]]\nname = \"t\"\nhosts = \"old\"\n[task.command]\ncmd = \"echo {{x}}\"\n"),
            file: "pb.toml",
            at: "2:5",
            field: Some("x"),
            says: "NUL byte",
        },
        Case {
            name: "empty hosts pattern",
            inventory: None,
            playbook: task("[[task]]\nname = \"t\"\nhosts = \"\"\n[task.command]\ncmd = \"true\"\n"),
            file: "pb.toml",
            at: "3:9",
            field: Some("hosts"),
            says: "empty",
        },
        Case {
            name: "unset environment variable",
            inventory: Some(Text("[hosts.old]\nport = {port}\npassword_env = \"FERRY_TEST_SURELY_UNSET\"\n")),
            playbook: None,
            file: "inv.toml",
            at: "3:16",
            field: Some("password_env"),
            says: "environment variable `FERRY_TEST_SURELY_UNSET` is not set",
        },
        Case {
            name: "non-UTF-8 playbook",
            inventory: None,
            playbook: Some(Bytes(b"[[task]]\nname = \"t\"\nhosts = \"old\"\n[task.command]\ncmd = \"ls \xff\"\n")),
            file: "pb.toml",
            at: "5:11",
            field: Some("cmd"),
            says: "byte 0xff is not valid UTF-8",
        },
        Case {
            name: "non-UTF-8 inventory",
            inventory: Some(Bytes(b"[hosts.old]\n\xc3(")),
            playbook: None,
            file: "inv.toml",
            at: "2:1",
            field: None,
            says: "byte 0xc3 is not valid UTF-8",
        },
        Case {
            name: "empty playbook",
            inventory: None,
            playbook: Some(Text("")),
            file: "pb.toml",
            at: "1:1",
            field: None,
            says: "the playbook has no tasks",
        },
        Case {
            name: "empty inventory",
            inventory: Some(Text("")),
            playbook: None,
            file: "inv.toml",
            at: "1:1",
            field: None,
            says: "the inventory has no hosts",
        },
        Case {
            name: "missing playbook",
            inventory: None,
            playbook: Some(Missing),
            file: "pb.toml",
            at: "0:0",
            field: None,
            says: "cannot read file: No such file",
        },
        Case {
            name: "missing inventory",
            inventory: Some(Missing),
            playbook: None,
            file: "inv.toml",
            at: "0:0",
            field: None,
            says: "cannot read file: No such file",
        },
    ];
    let host = Watcher::new();
    let port = host.port().to_string();
    let mut failures = Vec::new();
    for case in &cases {
        let dir = tempfile::tempdir().unwrap();
        let place = |name: &str, content: &Content| {
            let path = dir.path().join(name);
            match content {
                Text(t) => std::fs::write(&path, t.replace("{port}", &port)).unwrap(),
                Bytes(b) => std::fs::write(&path, b).unwrap(),
                Missing => {}
            }
            path.to_string_lossy().into_owned()
        };
        let inv = place(
            "inv.toml",
            case.inventory.as_ref().unwrap_or(&Text(GOOD_INVENTORY)),
        );
        let pb = place(
            "pb.toml",
            case.playbook.as_ref().unwrap_or(&Text(GOOD_PLAY)),
        );
        let out = ferry(&["play", &pb, "-i", &inv]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let file = dir.path().join(case.file);
        let mut wanted = vec![
            format!("{}:{}", file.display(), case.at),
            case.says.to_string(),
        ];
        if let Some(field) = case.field {
            wanted.push(format!("(field `{field}`)"));
        }
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|w| !stderr.contains(w.as_str()))
            .collect();
        if out.status.code() != Some(EXIT_PARSE) || !missing.is_empty() || !out.stdout.is_empty() {
            failures.push(format!(
                "{}: exit {:?}, missing {missing:?} in stderr:\n{stderr}",
                case.name,
                out.status.code()
            ));
        }
        if host.contacted() {
            failures.push(format!("{}: the host was contacted", case.name));
        }
    }
    // Control: the recorder does see a run that gets as far as connecting.
    let dir = tempfile::tempdir().unwrap();
    let inv = inventory(dir.path(), host.port(), "connect_timeout = 1");
    let pb = write(dir.path(), "pb.toml", GOOD_PLAY);
    let out = ferry(&["play", &pb, "-i", &inv]);
    assert_ne!(out.status.code(), Some(EXIT_PARSE), "good input refused");
    assert!(
        host.contacted(),
        "the recording host did not see a good run"
    );
    println!("hostile-input matrix: {} cases", cases.len());
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Every module's arguments are checked before any host is contacted: static ones when
/// the playbook is read, templated ones rendered for every host of the task (and the
/// checks that need vars). A bad argument of a later task exits 2 at its
/// file:line:column, and the valid first task never runs.
#[test]
fn invalid_module_arguments_exit_2_before_the_first_task_runs() {
    // (case, module table of the second task, line:column, field, message fragment)
    let cases: &[(&str, &str, &str, Option<&str>, &str)] = &[
        (
            "storage_export gzip_level 12",
            "[task.storage_export]\ncontainer = \"c\"\ndata_dir = \"/d\"\ndest = \"/x.tgz\"\ngzip_level = 12\n",
            "14:14",
            Some("gzip_level"),
            "gzip_level = 12: gzip takes 1 (fast) to 9 (small)",
        ),
        (
            "storage_export gzip_level 0",
            "[task.storage_export]\ncontainer = \"c\"\ndata_dir = \"/d\"\ndest = \"/x.tgz\"\ngzip_level = 0\n",
            "14:14",
            Some("gzip_level"),
            "gzip_level = 0",
        ),
        (
            "storage_export method",
            "[task.storage_export]\ncontainer = \"c\"\ndata_dir = \"/d\"\ndest = \"/x.tgz\"\nmethod = \"zip\"\n",
            "14:10",
            Some("method"),
            "unknown variant `zip`",
        ),
        (
            "storage_export dest operand",
            "[task.storage_export]\ncontainer = \"c\"\ndata_dir = \"/d\"\ndest = \"{{ dash }}\"\n",
            "13:8",
            Some("dest"),
            "renders to a value starting with `-`",
        ),
        (
            "transfer mode",
            "[task.transfer]\nartifact = \"a\"\ndest = \"/x\"\nmode = \"0900\"\n",
            "13:8",
            Some("mode"),
            "mode \"0900\" is not an octal file mode",
        ),
        (
            "transfer dest operand",
            "[task.transfer]\nartifact = \"a\"\ndest = \"{{ dash }}\"\n",
            "12:8",
            Some("dest"),
            "renders to a value starting with `-`",
        ),
        (
            "k8s_scale workload kind",
            "[task.k8s_scale]\nworkloads = [\"deployment/ui\", \"pod/x\"]\nreplicas = 0\n",
            "11:13",
            Some("workloads"),
            "workload kind \"pod\" is not supported",
        ),
        (
            "k8s_scale workload without kind",
            "[task.k8s_scale]\nworkloads = [\"ui\"]\nreplicas = 0\n",
            "11:13",
            Some("workloads"),
            "must be written kind/name",
        ),
        (
            "k8s_scale no workloads",
            "[task.k8s_scale]\nworkloads = []\nreplicas = 0\n",
            "11:13",
            Some("workloads"),
            "workloads is empty",
        ),
        (
            "k8s_scale timeout",
            "[task.k8s_scale]\nworkloads = [\"deployment/ui\"]\nreplicas = 0\ntimeout = \"5x\"\n",
            "13:11",
            Some("timeout"),
            "unknown unit 'x'",
        ),
        (
            "k8s_scale replicas",
            "[task.k8s_scale]\nworkloads = [\"deployment/ui\"]\nreplicas = -1\n",
            "12:12",
            Some("replicas"),
            "invalid value",
        ),
        (
            "k8s_scale namespace operand",
            "[task.k8s_scale]\nworkloads = [\"deployment/ui\"]\nreplicas = 0\nnamespace = \"{{ dash }}\"\n",
            "13:13",
            Some("namespace"),
            "renders to a value starting with `-`",
        ),
        (
            "redis_flushdb db",
            "[task.redis_flushdb]\ndb = 0\n",
            "11:6",
            Some("db"),
            "refusing to flush Redis database 0",
        ),
        (
            "redis_flushdb port",
            "[task.redis_flushdb]\ndb = 5\nport = 70000\n",
            "12:8",
            Some("port"),
            "invalid value",
        ),
        (
            "preflight min_version",
            "[task.preflight]\nrole = \"old\"\nmin_version = \"latest\"\n",
            "12:15",
            Some("min_version"),
            "min_version = \"latest\" is not a version",
        ),
        (
            "preflight safety_factor",
            "[task.preflight]\nrole = \"old\"\nsafety_factor = 0.5\n",
            "12:17",
            Some("safety_factor"),
            "safety_factor = 0.5",
        ),
        (
            "preflight role",
            "[task.preflight]\nrole = \"sideways\"\n",
            "11:8",
            Some("role"),
            "unknown variant `sideways`",
        ),
        (
            "preflight args of the other role",
            "[task.preflight]\nrole = \"new\"\ndata_dir = \"/d\"\n",
            "12:1",
            Some("data_dir"),
            "preflight with role = \"new\" does not take data_dir",
        ),
        (
            "docker_container state",
            "[task.docker_container]\nnames = [\"a\"]\nstate = \"paused\"\n",
            "12:9",
            Some("state"),
            "unknown variant `paused`",
        ),
        (
            "docker_container stop_timeout",
            "[task.docker_container]\nnames = [\"a\"]\nstate = \"stopped\"\nstop_timeout = -1\n",
            "13:16",
            Some("stop_timeout"),
            "invalid value",
        ),
        (
            "docker_container name operand",
            "[task.docker_container]\nnames = [\"{{ dash }}\"]\nstate = \"stopped\"\n",
            "11:10",
            Some("names"),
            "renders to a value starting with `-`",
        ),
        (
            "pg_dump database operand",
            "[task.pg_dump]\ncontainer = \"pg\"\ndatabase = \"{{ dash }}\"\ndest = \"/x.sql\"\n",
            "12:12",
            Some("database"),
            "renders to a value starting with `-`",
        ),
        (
            "pg_restore_k8s timeout",
            "[task.pg_restore_k8s]\ntimeout = \"soon\"\n",
            "11:11",
            Some("timeout"),
            "\"soon\": a number must come before 's'",
        ),
        (
            "pg_restore_k8s external_postgres var",
            "[task.pg_restore_k8s]\nartifact = \"packagist_db\"\n",
            "7:1",
            None,
            "var external_postgres needs a string `user` (host `old`)",
        ),
        (
            "redis_backup port",
            "[task.redis_backup]\ncontainer = \"r\"\ndest = \"/x.rdb\"\nport = 65536\n",
            "13:8",
            Some("port"),
            "invalid value",
        ),
        (
            "redis_restore_openebs timeout",
            "[task.redis_restore_openebs]\ntimeout = -5\n",
            "11:11",
            Some("timeout"),
            "invalid value",
        ),
        (
            "storage_import timeout",
            "[task.storage_import]\ntimeout = \"x\"\n",
            "11:11",
            Some("timeout"),
            "\"x\": unknown unit 'x'",
        ),
        (
            "storage_import archive operand",
            "[task.storage_import]\narchive = \"{{ dash }}\"\n",
            "11:11",
            Some("archive"),
            "renders to a value starting with `-`",
        ),
        (
            "storage_stream source",
            "[task.storage_stream]\nsource = \"{{ nowhere }}\"\n",
            "11:10",
            Some("source"),
            "source `nohost` is neither a host nor a group of the inventory",
        ),
        (
            "migration_marker namespace operand",
            "[task.migration_marker]\nnamespace = \"{{ dash }}\"\n",
            "11:13",
            Some("namespace"),
            "renders to a value starting with `-`",
        ),
        (
            "command creates operand",
            "[task.command]\ncmd = \"true\"\ncreates = \"{{ dash }}\"\n",
            "12:11",
            Some("creates"),
            "renders to a value starting with `-`",
        ),
        (
            "command changed",
            "[task.command]\ncmd = \"true\"\nchanged = \"yes\"\n",
            "12:11",
            Some("changed"),
            "invalid type",
        ),
        (
            "assert that",
            "[task.assert]\nthat = \"{{ undefined_thing }}\"\n",
            "11:9",
            Some("that"),
            "undefined variable `undefined_thing`",
        ),
    ];
    let host = Watcher::new();
    let mut failures = Vec::new();
    for (name, module, at, field, says) in cases {
        let dir = tempfile::tempdir().unwrap();
        let inv = inventory(
            dir.path(),
            host.port(),
            "[hosts.old.vars]\ndash = \"-rf\"\nnowhere = \"nohost\"\n\
             [hosts.old.vars.external_postgres]\nhost = \"db\"\ndatabase = \"d\"\n",
        );
        let marker = dir.path().join("first-ran");
        let pb = write(
            dir.path(),
            "pb.toml",
            &format!(
                "[[task]]\nname = \"first\"\nhosts = \"old\"\n[task.command]\ncmd = \"touch {}\"\n\n\
                 [[task]]\nname = \"bad\"\nhosts = \"old\"\n{module}",
                marker.display()
            ),
        );
        let out = ferry(&["play", &pb, "-i", &inv]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let mut wanted = vec![format!("{pb}:{at}"), says.to_string()];
        if let Some(field) = field {
            wanted.push(format!("field `{field}`"));
        }
        let missing: Vec<&String> = wanted
            .iter()
            .filter(|w| !stderr.contains(w.as_str()))
            .collect();
        if out.status.code() != Some(EXIT_PARSE) || !missing.is_empty() || !out.stdout.is_empty() {
            failures.push(format!(
                "{name}: exit {:?}, missing {missing:?} in stderr:\n{stderr}",
                out.status.code()
            ));
        }
        if host.contacted() || marker.exists() {
            failures.push(format!("{name}: a host was contacted"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// `--limit ""` (or `--limit ,`) would select no host and report success: it is bad
/// options (exit 5), for `play` and `ping`, before any host is contacted.
#[test]
fn empty_limit_is_bad_input() {
    let host = Watcher::new();
    let dir = tempfile::tempdir().unwrap();
    let inv = inventory(dir.path(), host.port(), "connect_timeout = 1");
    let pb = write(dir.path(), "pb.toml", GOOD_PLAY);
    for limit in ["", " , "] {
        for args in [
            vec!["play", pb.as_str(), "-i", inv.as_str(), "--limit", limit],
            vec!["ping", "-i", inv.as_str(), "--limit", limit],
        ] {
            let out = ferry(&args);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(EXIT_OPTIONS), "{args:?}: {stderr}");
            assert!(
                stderr.contains("--limit") && stderr.contains("empty"),
                "{stderr}"
            );
            assert!(!host.contacted(), "{args:?}: the host was contacted");
        }
    }
}

/// `--events` is created mode 0600 (whatever the umask, also when a file of ours was
/// there), and a symbolic link planted at its name is refused, not followed.
#[test]
fn events_file_is_0600_and_never_follows_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    // A closed port: the host is unreachable, the run still writes its events.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let inv = inventory(dir.path(), port, "connect_timeout = 2");
    let pb = write(dir.path(), "pb.toml", GOOD_PLAY);
    let journal = dir.path().join("j.json").to_string_lossy().into_owned();
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, "old").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&events, std::fs::Permissions::from_mode(0o644)).unwrap();
    let events_arg = events.to_string_lossy().into_owned();
    let out = ferry(&[
        "play",
        &pb,
        "-i",
        &inv,
        "--journal",
        &journal,
        "--events",
        &events_arg,
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let text = std::fs::read_to_string(&events).unwrap();
    assert!(text.contains("host_unreachable"), "{text}");
    let mode = std::fs::metadata(&events).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "events mode {mode:o}");

    let precious = dir.path().join("precious");
    std::fs::write(&precious, "keep me").unwrap();
    let link = dir.path().join("link.jsonl");
    std::os::unix::fs::symlink(&precious, &link).unwrap();
    let link_arg = link.to_string_lossy().into_owned();
    let out = ferry(&[
        "play",
        &pb,
        "-i",
        &inv,
        "--journal",
        &journal,
        "--events",
        &link_arg,
    ]);
    assert_refused(&out, EXIT_ERROR, "symbolic link");
    assert_eq!(std::fs::read(&precious).unwrap(), b"keep me");
}
