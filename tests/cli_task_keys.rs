//! The task keys Ansible users write every day, through the real binary against a real
//! sshd: `register` feeding a later `loop` and `when`, `loop` over a var, `notify` and a
//! `[[handler]]` that runs once and only after a change, `failed_when`/`changed_when`,
//! `ignore_errors`, a task's `timeout`, and check mode changing nothing.

#[path = "common/play.rs"]
mod play;
#[path = "common/sshd.rs"]
mod sshd;

use std::process::Command;

use play::{play_in as play, text};
use sshd::{Client, Sshd};

const PLAYBOOK: &str = r#"
[vars]
users = ["ann", "bob"]

[[task]]
name = "list"
hosts = "h"
register = "listing"
[task.command]
cmd = "printf 'x\\ny\\n'"
changed = false

[[task]]
name = "each line"
hosts = "h"
loop = "{{ listing.stdout_lines }}"
notify = ["note it"]
[task.command]
cmd = "echo {{ item }} >> {{ dir }}/lines"
unless = "grep -qx {{ item }} {{ dir }}/lines"

[[task]]
name = "users"
hosts = "h"
loop = "{{ users }}"
[task.command]
cmd = "touch {{ dir }}/{{ item }}"
creates = "{{ dir }}/{{ item }}"

[[task]]
name = "when x came first"
hosts = "h"
when = '{{ eq listing.stdout_lines.[0] "x" }}'
[task.command]
cmd = "touch {{ dir }}/when-ran"
creates = "{{ dir }}/when-ran"

[[task]]
name = "when it did not"
hosts = "h"
when = '{{ eq listing.stdout_lines.[0] "y" }}'
[task.command]
cmd = "touch {{ dir }}/when-wrong"

[[task]]
name = "grep finds nothing"
hosts = "h"
register = "g"
failed_when = "{{ gt g.rc 1 }}"
changed_when = "false"
[task.command]
cmd = "grep -q nothing {{ dir }}/lines"

[[task]]
name = "ignored"
hosts = "h"
ignore_errors = true
[task.command]
cmd = "exit 4"

[[handler]]
name = "note it"
[handler.command]
cmd = "echo noted >> {{ dir }}/handler"
"#;

#[test]
fn register_loop_when_handlers_and_conditions() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let work = d.join("work");
    std::fs::create_dir(&work).unwrap();
    std::fs::write(
        d.join("inventory.toml"),
        format!(
            "{}[hosts.h.vars]\ndir = \"{}\"\n",
            client.inventory_host("h", server.port),
            work.display()
        ),
    )
    .unwrap();
    std::fs::write(d.join("playbook.toml"), PLAYBOOK).unwrap();
    let read = |name: &str| std::fs::read_to_string(work.join(name)).unwrap_or_default();

    // Check mode first: nothing is made, the handler does not run.
    let out = play(d, "playbook.toml", &["--check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        std::fs::read_dir(&work).unwrap().count(),
        0,
        "check mode wrote"
    );

    let out = play(d, "playbook.toml", &["--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        read("lines"),
        "x\ny\n",
        "the loop ran once per registered line"
    );
    assert!(work.join("ann").exists() && work.join("bob").exists());
    assert!(work.join("when-ran").exists());
    assert!(
        !work.join("when-wrong").exists(),
        "a false runtime `when` ran"
    );
    assert_eq!(
        read("handler"),
        "noted\n",
        "the handler runs once, after the change"
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let task = |name: &str| {
        doc["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["task"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no task {name} in {doc}"))
    };
    assert_eq!(task("each line")["status"], "changed");
    let first = task("each line")["changes"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        first.starts_with("[x] run command\n  $ echo x >> "),
        "{doc}"
    );
    assert_eq!(task("when it did not")["status"], "skipped");
    assert_eq!(task("grep finds nothing")["status"], "ok", "{doc}");
    assert_eq!(task("ignored")["status"], "ok");
    assert!(
        task("ignored")["warnings"][0]
            .as_str()
            .unwrap()
            .contains("exit 4"),
        "{doc}"
    );
    assert_eq!(task("note it")["status"], "changed");

    // A re-run changes nothing, so the handler is not notified again.
    let out = play(d, "playbook.toml", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(read("lines"), "x\ny\n");
    assert_eq!(
        read("handler"),
        "noted\n",
        "the handler ran without a change"
    );
    assert!(text(&out).contains("changed=0"), "{}", text(&out));
}

#[test]
fn a_task_timeout_stops_it_and_bad_keys_are_located() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("inventory.toml"),
        client.inventory_host("h", server.port),
    )
    .unwrap();
    std::fs::write(
        d.join("slow.toml"),
        "[[task]]\nname = \"slow\"\nhosts = \"h\"\ntimeout = 1\n[task.command]\n\
         cmd = \"sleep 37.5\"\n",
    )
    .unwrap();
    let out = play(d, "slow.toml", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("timeout of 1s"), "{}", text(&out));
    // Its remote command was told to stop with it (sshd signals the process group).
    let gone = (0..50).any(|_| {
        if sshd::processes_showing("sleep 37.5").is_empty() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        false
    });
    assert!(gone, "the timed-out command is still running");

    for (playbook, located) in [
        (
            "[[task]]\nname = \"t\"\nhosts = \"h\"\nnotify = [\"nope\"]\n[task.command]\ncmd = \"true\"\n",
            "p.toml:4:",
        ),
        (
            "[[task]]\nname = \"t\"\nhosts = \"h\"\nregister = \"Bad-Name\"\n[task.command]\ncmd = \"true\"\n",
            "p.toml:4:",
        ),
        (
            "[[task]]\nname = \"t\"\nhosts = \"h\"\nloop = \"{{ nothere }}\"\n[task.command]\ncmd = \"echo {{ item }}\"\n",
            "p.toml:4:",
        ),
        (
            "[[task]]\nname = \"t\"\nhosts = \"h\"\nregister = \"r\"\n[task.command]\ncmd = \"true\"\n\
             [[task]]\nname = \"u\"\nhosts = \"h\"\n[task.command]\ncmd = \"echo {{ r.stdotu }}\"\n",
            "p.toml:11:",
        ),
    ] {
        std::fs::write(d.join("p.toml"), playbook).unwrap();
        let _ = std::fs::remove_file(d.join("journal.json"));
        let out = play(d, "p.toml", &[]);
        assert_eq!(out.status.code(), Some(4), "{playbook}\n{}", text(&out));
        assert!(text(&out).contains(located), "{playbook}\n{}", text(&out));
    }
}

#[test]
fn include_brings_a_task_files_tasks_with_their_vars() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let work = d.join("work");
    std::fs::create_dir_all(d.join("tasks")).unwrap();
    std::fs::create_dir(&work).unwrap();
    std::fs::write(
        d.join("inventory.toml"),
        format!(
            "{}[hosts.h.vars]\ndir = \"{}\"\n",
            client.inventory_host("h", server.port),
            work.display()
        ),
    )
    .unwrap();
    // The task file's vars are defaults; the include's beat them; the inventory beats
    // both (`dir`); the include gives hosts and tags to tasks that name none.
    std::fs::write(
        d.join("tasks/files.toml"),
        "[vars]\nname = \"from-file\"\nsuffix = \".txt\"\n\n[[task]]\nname = \"make it\"\n\
         [task.command]\ncmd = \"touch {{ dir }}/{{ name }}{{ suffix }}\"\n\
         creates = \"{{ dir }}/{{ name }}{{ suffix }}\"\n",
    )
    .unwrap();
    std::fs::write(
        d.join("playbook.toml"),
        "[[task]]\ninclude = \"tasks/files.toml\"\nhosts = \"h\"\ntags = [\"files\"]\n\
         vars = { name = \"from-include\" }\n",
    )
    .unwrap();
    let out = play(d, "playbook.toml", &["--tags", "files"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        work.join("from-include.txt").exists(),
        "{:?}",
        std::fs::read_dir(&work).unwrap().collect::<Vec<_>>()
    );
    let out = play(d, "playbook.toml", &[]);
    assert!(text(&out).contains("changed=0"), "{}", text(&out));

    // An error in a task file is located in the task file; a loop of includes is refused.
    std::fs::write(
        d.join("tasks/bad.toml"),
        "[[task]]\nname = \"b\"\nhosts = \"h\"\n[task.command]\ncmd = \"echo {{ nope }}\"\n",
    )
    .unwrap();
    std::fs::write(
        d.join("p2.toml"),
        "[[task]]\ninclude = \"tasks/bad.toml\"\n",
    )
    .unwrap();
    let _ = std::fs::remove_file(d.join("journal.json"));
    let out = play(d, "p2.toml", &[]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("tasks/bad.toml:5:"), "{}", text(&out));
    std::fs::write(
        d.join("tasks/loop.toml"),
        "[[task]]\ninclude = \"loop.toml\"\n",
    )
    .unwrap();
    std::fs::write(
        d.join("p3.toml"),
        "[[task]]\ninclude = \"tasks/loop.toml\"\n",
    )
    .unwrap();
    let out = play(d, "p3.toml", &[]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("includes itself"), "{}", text(&out));
}

#[test]
fn a_tasks_become_beats_the_hosts() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let mut user = sshd::TestUser::create("Pw-7781-x");
    user.allow_sudo(true);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let host = |name: &str, become_: bool| {
        client
            .inventory_host(name, server.port)
            .replace("user = \"root\"", &format!("user = \"{}\"", user.name))
            + &format!("become = {become_}\n")
    };
    std::fs::write(
        d.join("inventory.toml"),
        host("plain", false) + &host("sudo", true),
    )
    .unwrap();
    let task = |name: &str, hosts: &str, become_: &str| {
        format!(
            "[[task]]\nname = \"{name}\"\nhosts = \"{hosts}\"\n{become_}register = \"r\"\n\
             [task.command]\ncmd = \"id -u\"\nchanged = false\n"
        )
    };
    std::fs::write(
        d.join("become.toml"),
        task("escalated", "plain", "become = true\n")
            + &task("as the login", "sudo", "become = false\n")
            + &task("as the host says", "sudo", ""),
    )
    .unwrap();
    let out = play(d, "become.toml", &["--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let uid = |task: &str| {
        doc["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["task"] == task)
            .map(|t| {
                t["output"]["stdout"]
                    .as_str()
                    .unwrap_or("")
                    .trim()
                    .to_string()
            })
            .unwrap()
    };
    let own = String::from_utf8(
        Command::new("id")
            .args(["-u", &user.name])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(uid("escalated"), "0", "{doc}");
    assert_eq!(uid("as the login"), own.trim(), "{doc}");
    assert_eq!(uid("as the host says"), "0", "{doc}");
}
