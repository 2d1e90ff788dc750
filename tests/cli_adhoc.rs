//! `ferry run -i INV PATTERN -- COMMAND...` through the real binary against real sshd
//! servers: a line per host as `ansible -a` prints it, the command's output, check mode
//! that runs nothing, the exit codes of `ferry play`, and no journal left behind.

#[path = "common/play.rs"]
mod play;
#[path = "common/sshd.rs"]
mod sshd;

use std::path::Path;
use std::process::Output;

use sshd::{free_port, Client, Sshd};

/// `ferry run -i inventory.toml ARGS...` in `dir`.
fn ferry_run(dir: &Path, args: &[&str]) -> Output {
    play::ferry(dir, &[&["run", "-i", "inventory.toml"], args].concat())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn one_command_on_the_hosts_of_a_pattern() {
    let a = Sshd::start();
    let b = Sshd::start();
    let client = Client::new(&a);
    b.authorize(&client.key.public);
    let known = std::fs::read_to_string(&client.known_hosts).unwrap() + &b.known_hosts_line();
    std::fs::write(&client.known_hosts, known).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let closed = free_port();
    std::fs::write(
        d.join("inventory.toml"),
        format!(
            "{}[hosts.web1.vars]\ncolour = \"blue; rm -rf /\"\n{}{}connect_timeout = 2\n\
             [groups.web]\nhosts = [\"web1\", \"web2\"]\n",
            client.inventory_host("web1", a.port),
            client.inventory_host("web2", b.port),
            client.inventory_host("down", closed),
        ),
    )
    .unwrap();
    let marker = d.join("ran");
    let marker = marker.to_str().unwrap();

    // A line per host, the command's stdout under it; a var is one quoted word.
    let out = ferry_run(
        d,
        &[
            "web",
            "--",
            "echo",
            "on",
            "{{ inventory_hostname }}",
            "&&",
            "touch",
            marker,
        ],
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(
        stdout.contains("web1 | CHANGED | rc=0 >>\non web1\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("web2 | CHANGED | rc=0 >>\non web2\n"),
        "{stdout}"
    );
    assert!(stdout.contains("PLAY RECAP"), "{stdout}");
    assert!(
        !stdout.contains("down"),
        "the pattern left `down` out: {stdout}"
    );
    assert!(Path::new(marker).exists());
    let out = ferry_run(d, &["web1", "--", "printf", "%s", "{{ colour }}"]);
    assert!(
        text(&out.stdout).contains(">>\nblue; rm -rf /\n"),
        "{}",
        text(&out.stdout)
    );

    // Check mode says where it would run and runs nothing.
    std::fs::remove_file(marker).unwrap();
    let out = ferry_run(d, &["web", "-C", "--", "touch", marker]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("web1 | WOULD RUN (check mode) >>"),
        "{}",
        text(&out.stdout)
    );
    assert!(!Path::new(marker).exists(), "check mode ran the command");

    // A failing host: exit 2, its stderr and rc shown; an unreachable one: exit 3.
    let out = ferry_run(d, &["web", "--", "echo oops >&2; exit 3"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains("web1 | FAILED | rc=3 >>\noops\n"),
        "{stdout}"
    );
    let out = ferry_run(d, &["down", "--", "true"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("down | UNREACHABLE! =>"),
        "{}",
        text(&out.stdout)
    );

    // Bad input: a pattern that names nothing (5), a raw template (4), no command (5).
    assert_eq!(
        ferry_run(d, &["nohost", "--", "true"]).status.code(),
        Some(5)
    );
    assert_eq!(
        ferry_run(d, &["web", "--", "echo {{{ colour }}}"])
            .status
            .code(),
        Some(4)
    );
    assert_eq!(ferry_run(d, &["web"]).status.code(), Some(5));

    // JSON: the same report as `ferry play`'s, the output in it.
    let out = ferry_run(d, &["web1", "--format", "json", "--", "echo", "hi"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["tasks"][0]["output"]["stdout"], "hi\n", "{doc}");
    assert_eq!(doc["tasks"][0]["output"]["rc"], 0, "{doc}");

    // Nothing is kept between ad-hoc runs.
    let left: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("inventory.toml")],
        "{left:?}"
    );
}
