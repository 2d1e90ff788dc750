//! The host-administration modules (`package`, `service`, `user`, `group`, `fetch`)
//! through the real binary against a real sshd as root on this machine: what they
//! change, that `--check` changes nothing, that a re-run changes nothing, and the
//! refusals an operator must be able to read.

#[path = "common/play.rs"]
mod play;
#[path = "common/sshd.rs"]
mod sshd;

use std::process::Command;

use play::{error, status, task, Host};

fn sh(script: &str) -> (bool, String) {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

// ---------------------------------------------------------------------------------------
// package: a small Debian package installed and removed for real with apt

/// Whether dpkg has `hello` installed.
fn hello_installed() -> bool {
    sh("dpkg-query -W -f='${db:Status-Status}' hello 2>/dev/null").1 == "installed"
}

#[test]
fn package_installs_and_removes_with_apt() {
    let host = Host::start();
    if hello_installed() {
        assert!(sh("DEBIAN_FRONTEND=noninteractive apt-get remove -y -q hello").0);
    }
    // The lists must know it: refresh them once if this machine has none for it.
    if !sh("apt-cache policy hello | grep -q 'Candidate: [0-9]'").0 {
        assert!(sh("apt-get update -q").0, "apt-get update failed");
    }
    let present = task("hello", "package", "names = [\"hello\"]");
    let (code, doc) = host.play(&present, &["--check"]);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(status(&doc, "hello"), "would_change", "{doc}");
    assert!(!hello_installed(), "--check installed the package");

    let (code, doc) = host.play(&present, &[]);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(status(&doc, "hello"), "changed", "{doc}");
    assert!(hello_installed());
    assert!(sh("/usr/bin/hello").1.contains("Hello, world!"));

    let (code, doc) = host.play(&present, &[]);
    assert_eq!((code, status(&doc, "hello")), (Some(0), "ok"), "{doc}");
    let latest = task(
        "hello",
        "package",
        "names = [\"hello\"]\nstate = \"latest\"",
    );
    let (code, doc) = host.play(&latest, &[]);
    assert_eq!((code, status(&doc, "hello")), (Some(0), "ok"), "{doc}");

    // A name apt does not know is refused before apt-get runs, naming it.
    let unknown = task(
        "unknown",
        "package",
        "names = [\"hello\", \"ferry-no-such-package\"]",
    );
    let (code, doc) = host.play(&unknown, &[]);
    assert_eq!(code, Some(2), "{doc}");
    assert!(
        error(&doc, "unknown").contains("no package named ferry-no-such-package"),
        "{doc}"
    );
    // A glob or an option never reaches apt: refused when the playbook is read.
    let (code, doc) = host.play(&task("glob", "package", "names = [\"hel*\"]"), &[]);
    assert_eq!(code, Some(4), "{doc}");

    let absent = task(
        "hello",
        "package",
        "names = [\"hello\"]\nstate = \"absent\"",
    );
    let (_, doc) = host.play(&absent, &["--check"]);
    assert_eq!(status(&doc, "hello"), "would_change", "{doc}");
    assert!(hello_installed(), "--check removed the package");
    let (code, doc) = host.play(&absent, &[]);
    assert_eq!((code, status(&doc, "hello")), (Some(0), "changed"), "{doc}");
    assert!(!hello_installed());
    let (_, doc) = host.play(&absent, &[]);
    assert_eq!(status(&doc, "hello"), "ok", "{doc}");
}

// ---------------------------------------------------------------------------------------
// service: this machine runs no systemd (a container), so the clear refusal is what
// a real host without systemd gets; the decisions are fixture tests in the module.

#[test]
fn service_on_a_host_without_systemd_is_refused_clearly() {
    let host = Host::start();
    let tasks = task(
        "nginx",
        "service",
        "name = \"nginx\"\nstate = \"started\"\nenabled = true",
    );
    let (code, doc) = host.play(&tasks, &["--check"]);
    if std::path::Path::new("/run/systemd/system").is_dir() {
        // On a machine that runs systemd the unit is unknown instead.
        assert!(error(&doc, "nginx").contains("has no unit nginx"), "{doc}");
    } else {
        assert!(
            error(&doc, "nginx")
                .contains("no systemd on this host (h: /run/systemd/system is missing"),
            "{doc}"
        );
    }
    assert_eq!(code, Some(2), "{doc}");
    // A bad unit name is refused before any host is contacted.
    let (code, doc) = host.play(
        &task(
            "bad",
            "service",
            "name = \"x; reboot\"\nstate = \"stopped\"",
        ),
        &[],
    );
    assert_eq!(code, Some(4), "{doc}");
}

// ---------------------------------------------------------------------------------------
// user and group: real accounts, removed at the end

const GROUP: &str = "ferrytest-g";
const USER: &str = "ferrytest-u";

struct Accounts;

impl Drop for Accounts {
    fn drop(&mut self) {
        let _ = Command::new("userdel").args(["-r", USER]).output();
        let _ = Command::new("groupdel").arg(GROUP).output();
    }
}

#[test]
fn user_and_group_are_made_changed_and_removed() {
    let host = Host::start();
    drop(Accounts);
    let _cleanup = Accounts;
    let home = host.path("home-u");
    let tasks = [
        task(
            "group",
            "group",
            &format!("name = \"{GROUP}\"\ngid = 29417"),
        ),
        task(
            "user",
            "user",
            &format!(
                "name = \"{USER}\"\nuid = 29418\ngroups = [\"{GROUP}\", \"adm\"]\n\
                 shell = \"/bin/sh\"\nhome = {home:?}\ncomment = \"ferry test\""
            ),
        ),
    ]
    .concat();
    // --check: the user task sees the group missing (an earlier task would make it) and
    // says so; nothing is made.
    let (_, doc) = host.play(&tasks, &["--check"]);
    assert_eq!(status(&doc, "group"), "would_change", "{doc}");
    assert!(
        error(&doc, "user").contains(&format!("no group {GROUP} on the host")),
        "{doc}"
    );
    assert!(
        !sh(&format!("getent group {GROUP}")).0,
        "--check made the group"
    );

    let (code, doc) = host.play(&tasks, &[]);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(status(&doc, "group"), "changed", "{doc}");
    assert_eq!(status(&doc, "user"), "changed", "{doc}");
    assert_eq!(
        sh(&format!("getent group {GROUP}")).1,
        format!("{GROUP}:x:29417:{USER}")
    );
    let (_, entry) = sh(&format!("getent passwd {USER}"));
    assert_eq!(
        entry,
        format!("{USER}:x:29418:29418:ferry test:{}:/bin/sh", home.display())
    );
    assert!(home.is_dir(), "no home made");
    let (_, groups) = sh(&format!("id -Gn {USER}"));
    assert!(groups.contains("adm") && groups.contains(GROUP), "{groups}");

    let (code, doc) = host.play(&tasks, &[]);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(
        (status(&doc, "group"), status(&doc, "user")),
        ("ok", "ok"),
        "{doc}"
    );

    // Only what differs changes: the shell and one group fewer; gid moved.
    let changed = [
        task(
            "group",
            "group",
            &format!("name = \"{GROUP}\"\ngid = 29419"),
        ),
        task(
            "user",
            "user",
            &format!("name = \"{USER}\"\ngroups = [\"{GROUP}\"]\nshell = \"/bin/bash\""),
        ),
    ]
    .concat();
    let (_, doc) = host.play(&changed, &["--check"]);
    assert_eq!(status(&doc, "user"), "would_change", "{doc}");
    assert!(
        sh(&format!("getent passwd {USER}")).1.ends_with("/bin/sh"),
        "--check changed it"
    );
    let (code, doc) = host.play(&changed, &[]);
    assert_eq!(code, Some(0), "{doc}");
    assert!(sh(&format!("getent passwd {USER}"))
        .1
        .ends_with("/bin/bash"));
    assert!(!sh(&format!("id -Gn {USER}")).1.contains("adm"));
    assert_eq!(
        sh(&format!("getent group {GROUP}")).1,
        format!("{GROUP}:x:29419:{USER}")
    );

    // A missing supplementary group is named, nothing is made.
    let (code, doc) = host.play(
        &task(
            "user",
            "user",
            &format!("name = \"{USER}\"\ngroups = [\"ferry-no-such-group\"]"),
        ),
        &[],
    );
    assert_eq!(code, Some(2), "{doc}");
    assert!(
        error(&doc, "user").contains("no group ferry-no-such-group"),
        "{doc}"
    );
    // A name that would be an option is refused when the playbook is read.
    let (code, doc) = host.play(&task("bad", "user", "name = \"-o\""), &[]);
    assert_eq!(code, Some(4), "{doc}");

    let gone = [
        task(
            "user",
            "user",
            &format!("name = \"{USER}\"\nstate = \"absent\"\nremove = true"),
        ),
        task(
            "group",
            "group",
            &format!("name = \"{GROUP}\"\nstate = \"absent\""),
        ),
    ]
    .concat();
    let (code, doc) = host.play(&gone, &[]);
    assert_eq!(code, Some(0), "{doc}");
    assert!(!sh(&format!("getent passwd {USER}")).0);
    assert!(!sh(&format!("getent group {GROUP}")).0);
    assert!(!home.exists(), "remove = true left the home");
    let (_, doc) = host.play(&gone, &[]);
    assert_eq!(
        (status(&doc, "user"), status(&doc, "group")),
        ("ok", "ok"),
        "{doc}"
    );
}

// ---------------------------------------------------------------------------------------
// fetch

#[test]
fn fetch_copies_a_host_file_into_a_folder_per_host() {
    let host = Host::start();
    let src = host.path("etc/app.conf");
    std::fs::create_dir_all(src.parent().unwrap()).unwrap();
    let big: Vec<u8> = (0..3u32 << 20).map(|i| (i ^ (i >> 7)) as u8).collect();
    std::fs::write(&src, &big).unwrap();
    let link = host.path("current.conf");
    std::os::unix::fs::symlink(&src, &link).unwrap();
    let tasks = [
        task(
            "fetch",
            "fetch",
            &format!("src = {src:?}\ndest = \"fetched\""),
        ),
        task(
            "flat",
            "fetch",
            &format!("src = {link:?}\ndest = \"flat/\"\nflat = true"),
        ),
    ]
    .concat();
    let copy = host
        .dir
        .path()
        .join("fetched/h")
        .join(src.strip_prefix("/").unwrap());
    let flat = host.dir.path().join("flat/current.conf");

    let (code, doc) = host.play(&tasks, &["--check"]);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(status(&doc, "fetch"), "would_change", "{doc}");
    assert!(!copy.exists() && !flat.exists(), "--check fetched");

    let (code, doc) = host.play(&tasks, &[]);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(std::fs::read(&copy).unwrap(), big);
    assert_eq!(
        std::fs::read(&flat).unwrap(),
        big,
        "the link's target is fetched"
    );
    let (_, doc) = host.play(&tasks, &[]);
    assert_eq!(
        (status(&doc, "fetch"), status(&doc, "flat")),
        ("ok", "ok"),
        "{doc}"
    );

    // The host's file changes: fetched again; a local edit is replaced too.
    std::fs::write(&src, b"new\n").unwrap();
    std::fs::write(&flat, b"edited locally\n").unwrap();
    let (_, doc) = host.play(&tasks, &[]);
    assert_eq!(
        (status(&doc, "fetch"), status(&doc, "flat")),
        ("changed", "changed"),
        "{doc}"
    );
    assert_eq!(std::fs::read(&copy).unwrap(), b"new\n");
    assert_eq!(std::fs::read(&flat).unwrap(), b"new\n");
    let leftovers: Vec<_> = std::fs::read_dir(copy.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A missing file is named; a relative src is refused when the playbook is read.
    let missing = host.path("etc/none");
    let (code, doc) = host.play(
        &task(
            "missing",
            "fetch",
            &format!("src = {missing:?}\ndest = \"fetched\""),
        ),
        &[],
    );
    assert_eq!(code, Some(2), "{doc}");
    assert!(error(&doc, "missing").contains("has no file"), "{doc}");
    let (code, doc) = host.play(&task("rel", "fetch", "src = \"etc/x\"\ndest = \"f\""), &[]);
    assert_eq!(code, Some(4), "{doc}");
}
