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
            at: "5:7",
            field: Some("cmd"),
            says: "raw interpolation",
        },
        Case {
            name: "raw {{&x}} in a shell field",
            inventory: None,
            playbook: task("[[task]]\nname = \"t\"\nhosts = \"old\"\n[task.command]\ncmd = \"ls {{&x}}\"\n"),
            file: "pb.toml",
            at: "5:7",
            field: Some("cmd"),
            says: "raw interpolation",
        },
        Case {
            name: "self-quoted value in a shell field",
            inventory: None,
            playbook: task("[[task]]\nname = \"t\"\nhosts = \"old\"\n[task.command]\ncmd = \"ls '{{x}}'\"\n"),
            file: "pb.toml",
            at: "5:7",
            field: Some("cmd"),
            says: "wrapped in quotes",
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
        if out.status.code() != Some(2) || !missing.is_empty() || !out.stdout.is_empty() {
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
    assert_ne!(out.status.code(), Some(2), "good input refused");
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
    assert_bad_input(&out, "symbolic link");
    assert_eq!(std::fs::read(&precious).unwrap(), b"keep me");
}
