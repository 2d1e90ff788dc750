//! The command line as `ansible-playbook` users type it, through the real binary against a
//! real sshd: the exit-code table, `-e` over every other variable, `-u` and
//! `--private-key` under the inventory's own settings, host patterns, tags that match
//! nothing, and the listings that contact nothing.

#[path = "common/play.rs"]
mod play;
#[path = "common/sshd.rs"]
mod sshd;

use std::path::Path;
use std::process::{Command, Output};

use play::{ferry, play_in};
use sshd::{free_port, Client, Sshd};

fn play(dir: &Path, extra: &[&str]) -> Output {
    play_in(dir, "playbook.toml", extra)
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A host of the inventory without `user` and `identity_file` (so `-u` and
/// `--private-key` have something to fill in).
fn bare_host(name: &str, port: u16, client: &Client) -> String {
    format!(
        "[hosts.{name}]\naddress = \"127.0.0.1\"\nport = {port}\nknown_hosts = \"{}\"\n\
         ssh_config = \"{}\"\nconnect_timeout = 5\n",
        client.known_hosts.display(),
        client.ssh_config.display()
    )
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

#[test]
fn exit_codes_are_ansible_playbooks() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let closed = free_port();
    write(
        d,
        "inventory.toml",
        &format!(
            "{}{}connect_timeout = 2\n",
            client.inventory_host("up", server.port),
            client.inventory_host("down", closed)
        ),
    );
    let task = |name: &str, hosts: &str, cmd: &str| {
        format!(
            "[[task]]\nname = \"{name}\"\nhosts = \"{hosts}\"\n[task.command]\ncmd = \"{cmd}\"\n\n"
        )
    };
    write(d, "playbook.toml", &task("t", "up", "true"));
    let out = play(d, &[]);
    assert_eq!(code(&out), Some(0), "ok");
    // stderr is no terminal here: a plain line per task start and end, as Ansible's.
    let err = stderr(&out);
    assert!(err.contains("TASK [t] on up\n"), "{err}");
    assert!(err.contains("changed: [up] t ("), "{err}");
    // ... and what the running task does, once.
    assert_eq!(err.matches("  [up] t: run command\n").count(), 1, "{err}");
    // With --format json, stderr has none of that.
    let out = play(d, &["--format", "json"]);
    assert!(!stderr(&out).contains("TASK ["), "{}", stderr(&out));
    write(d, "playbook.toml", &task("t", "up", "exit 7"));
    assert_eq!(code(&play(d, &[])), Some(2), "a task failed");
    write(d, "playbook.toml", &task("t", "all", "true"));
    let out = play(d, &["--format", "json"]);
    assert_eq!(code(&out), Some(3), "a host unreachable: {}", stderr(&out));
    // The JSON report says which ferry wrote it and why the host was unreachable.
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        doc["ferry"]
            .as_str()
            .unwrap_or("")
            .starts_with(env!("CARGO_PKG_VERSION")),
        "{doc}"
    );
    assert!(
        doc["hosts"]["down"]["unreachable_reason"]
            .as_str()
            .unwrap_or("")
            .contains("refused"),
        "{doc}"
    );
    // A failed task outranks an unreachable host.
    write(d, "playbook.toml", &task("t", "all", "exit 7"));
    assert_eq!(code(&play(d, &[])), Some(2), "failed and unreachable");
    write(d, "playbook.toml", "[[task]]\nname = \"t\"\nbogus = 1\n");
    assert_eq!(
        code(&play(d, &[])),
        Some(4),
        "a playbook that does not parse"
    );
    write(d, "playbook.toml", &task("t", "up", "true"));
    for bad in [
        &["--frobnicate"][..],
        &["--limit", "nohost"],
        &["--tags", "nosuchtag"],
        &["-e", "no equals sign"],
    ] {
        let out = play(d, bad);
        assert_eq!(code(&out), Some(5), "{bad:?}: {}", stderr(&out));
    }
    // Ansible's journal of what ran is ours: a locked one is an error of its own (1).
    let lock = d.join("journal.lock");
    let held = std::fs::File::create(&lock).unwrap();
    let mut locked = fd_lock::RwLock::new(held);
    let _guard = locked.write().unwrap();
    let out = play(d, &[]);
    assert_eq!(code(&out), Some(1), "a locked journal: {}", stderr(&out));
}

#[test]
fn extra_vars_beat_every_other_and_the_cli_user_and_key_fill_in_under_the_inventory() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out_file = d.join("out.txt");
    write(
        d,
        "inventory.toml",
        &format!(
            "{}[hosts.h.vars]\nx = \"inventory\"\ny = \"inventory\"\n",
            bare_host("h", server.port, &client)
        ),
    );
    write(
        d,
        "playbook.toml",
        &format!(
            "[vars]\nx = \"playbook\"\ny = \"playbook\"\nz = \"playbook\"\nn = 0\n\n\
             [[task]]\nname = \"t\"\nhosts = \"h\"\n[task.command]\n\
             cmd = \"printf %s {{{{ x }}}}-{{{{ y }}}}-{{{{ z }}}}-{{{{ n }}}} > {}\"\n",
            out_file.display()
        ),
    );
    write(d, "vars.toml", "y = \"file\"\nn = 3\n");
    let key = client.key.private.to_string_lossy().into_owned();
    let out = play(
        d,
        &[
            "-u",
            "root",
            "--private-key",
            &key,
            "-e",
            "x=cli",
            "-e",
            "@vars.toml",
            "-e",
            "{ z = \"inline\" }",
        ],
    );
    assert_eq!(code(&out), Some(0), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&out_file).unwrap(),
        "cli-file-inline-3"
    );

    // Without the key, nothing else authorizes us: --private-key is what let us in.
    let out = play(d, &["-u", "root", "-e", "x=cli"]);
    assert_eq!(code(&out), Some(3), "{}", stderr(&out));
    // -u names a user sshd refuses: unreachable ...
    let out = play(d, &["-u", "ferry-no-such-user", "--private-key", &key]);
    assert_eq!(code(&out), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("ferry-no-such-user") || stdout(&out).contains("ferry-no-such-user")
    );
    // ... unless the inventory names the user: the inventory wins, as ansible_user
    // beats -u.
    write(
        d,
        "inventory.toml",
        &format!("{}user = \"root\"\n", bare_host("h", server.port, &client)),
    );
    let out = play(
        d,
        &[
            "-u",
            "ferry-no-such-user",
            "--private-key",
            &key,
            "-e",
            "x=a",
            "-e",
            "y=b",
        ],
    );
    assert_eq!(code(&out), Some(0), "{}{}", stdout(&out), stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&out_file).unwrap(),
        "a-b-playbook-0"
    );

    // A bad @file is a located parse error (4), nothing contacted.
    write(d, "bad.toml", "y = [1,\n");
    let out = play(d, &["-e", "@bad.toml"]);
    assert_eq!(code(&out), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("bad.toml:"), "{}", stderr(&out));
}

#[test]
fn listings_and_syntax_check_contact_nothing_and_patterns_are_ansibles() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Nothing listens at these ports: a contact would show as unreachable (exit 3).
    let mut inv = String::new();
    for (name, groups) in [
        ("web1", "[\"web\", \"prod\"]"),
        ("web2", "[\"web\", \"prod\"]"),
        ("web3", "[\"web\"]"),
        ("db1", "[\"db\", \"prod\"]"),
    ] {
        inv.push_str(&format!(
            "[hosts.{name}]\naddress = \"127.0.0.1\"\nport = {}\ngroups = {groups}\n",
            free_port()
        ));
    }
    write(d, "inventory.toml", &inv);
    write(
        d,
        "playbook.toml",
        "[[task]]\nname = \"web task\"\nhosts = \"web\"\ntags = [\"web\"]\n[task.command]\ncmd = \"true\"\n\n\
         [[task]]\nname = \"db task\"\nhosts = \"db*\"\ntags = [\"db\"]\n[task.command]\ncmd = \"true\"\n",
    );
    let out = play(d, &["--list-hosts", "-l", "web*:&prod:!web2,db1"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    let hosts: Vec<String> = stdout(&out)
        .lines()
        .skip_while(|l| !l.contains("hosts ("))
        .skip(1)
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(hosts, ["db1", "web1"], "{}", stdout(&out));

    let out = play(d, &["--list-tasks", "-t", "db"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("db task\tTAGS: [db]\tHOSTS: db1"),
        "{}",
        stdout(&out)
    );
    assert!(!stdout(&out).contains("web task"), "{}", stdout(&out));

    let out = play(d, &["--syntax-check"]);
    assert_eq!(code(&out), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("playbook: playbook.toml"),
        "{}",
        stdout(&out)
    );
    assert!(
        !d.join("journal.json").exists(),
        "a listing wrote the journal"
    );

    // The limit names hosts, but none that a selected task runs on: an error, not an
    // empty run that reports success.
    let out = play(d, &["--list-hosts", "-t", "db", "-l", "web1"]);
    assert_eq!(code(&out), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("--limit web1"), "{}", stderr(&out));
    // A skip-tag that no task has is as much a typo as a tag.
    let out = play(d, &["--syntax-check", "--skip-tags", "dbb"]);
    assert_eq!(code(&out), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("its tags: db, web"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn version_completions_and_man_page() {
    let dir = tempfile::tempdir().unwrap();
    let out = ferry(dir.path(), &["--version"]);
    assert_eq!(code(&out), Some(0));
    let version = stdout(&out);
    assert!(
        version.starts_with(&format!("ferry {} (commit ", env!("CARGO_PKG_VERSION")))
            || version.contains("unknown commit"),
        "{version}"
    );
    let out = ferry(dir.path(), &["completions", "bash"]);
    assert_eq!(code(&out), Some(0));
    assert!(
        stdout(&out).contains("--extra-vars"),
        "bash completion lacks the flags"
    );
    let out = ferry(dir.path(), &["man"]);
    assert_eq!(code(&out), Some(0));
    assert!(stdout(&out).contains(".TH ferry 1"), "{}", stdout(&out));
}

/// On a terminal the report's tables fit its width (long commands folded); piped, they
/// keep their lines whole. A pty (`script`, util-linux) stands in for the terminal.
#[test]
fn the_report_fits_the_terminal() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "inventory.toml",
        &client.inventory_host("h", server.port),
    );
    let long = format!("echo {} {}", "a".repeat(150), "b".repeat(60));
    write(
        d,
        "playbook.toml",
        &format!("[[task]]\nname = \"long\"\nhosts = \"h\"\n[task.command]\ncmd = \"{long}\"\n"),
    );
    let ferry_cmd = format!(
        "stty cols 72; {} play playbook.toml -i inventory.toml --journal journal.json --check",
        env!("CARGO_BIN_EXE_ferry")
    );
    let out = Command::new("script")
        .args(["-qec", &ferry_cmd, "/dev/null"])
        .current_dir(d)
        .env_remove("SSH_AUTH_SOCK")
        .output()
        .expect("run script(1)");
    let text = stdout(&out);
    let table: Vec<&str> = text
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| l.starts_with(['┌', '│', '╞', '├', '└']))
        .collect();
    assert!(!table.is_empty(), "no table in: {text}");
    for line in &table {
        let shown = without_colours(line);
        assert!(
            shown.chars().count() <= 72,
            "a line wider than the terminal ({}): {shown}\n{text}",
            shown.chars().count()
        );
    }
    assert!(text.contains("aaaa"), "{text}");
    // Piped: the command is on one line, whole.
    let out = play(d, &["--check"]);
    assert!(stdout(&out).contains(&long), "{}", stdout(&out));
}

/// `text` without ANSI colour sequences (ESC [ ... m).
fn without_colours(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
