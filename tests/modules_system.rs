//! The system modules (`file`, `lineinfile`, ...) through the real binary against a real
//! sshd as root on this machine: what they change on the host, that a re-run changes
//! nothing, and that `--check` changes nothing.

#[path = "common/play.rs"]
mod play;
#[path = "common/sshd.rs"]
mod sshd;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use play::{error, result, status, task, Host};

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

// ---------------------------------------------------------------------------------------
// file

#[test]
fn file_makes_a_tree_a_link_and_removes_them() {
    let host = Host::start();
    let dir = host.path("app");
    let inner = dir.join("sub");
    let f = dir.join("sub/f");
    let link = host.path("current");
    let tasks = [
        task(
            "dir",
            "file",
            &format!("path = {dir:?}\nstate = \"directory\"\nmode = \"0750\"\ngroup = \"nogroup\""),
        ),
        task(
            "inner",
            "file",
            &format!("path = {inner:?}\nstate = \"directory\""),
        ),
        task("touch", "file", &format!("path = {f:?}\nstate = \"touch\"")),
        task(
            "tree",
            "file",
            &format!(
                "path = {dir:?}\nstate = \"directory\"\nmode = \"0750\"\nowner = \"nobody\"\nrecurse = true"
            ),
        ),
        task(
            "link",
            "file",
            &format!("path = {link:?}\nstate = \"link\"\nsrc = {dir:?}"),
        ),
    ]
    .concat();
    // --check first: nothing is made.
    let (code, doc) = host.play(&tasks, &["--check"]);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(status(&doc, "dir"), "would_change", "{doc}");
    assert!(!dir.exists() && !link.exists());

    let (code, doc) = host.play(&tasks, &[]);
    assert_eq!(code, Some(0), "{doc}");
    for t in ["dir", "inner", "touch", "tree", "link"] {
        assert_eq!(status(&doc, t), "changed", "{t}: {doc}");
    }
    let nobody = uid("nobody");
    for p in [&dir, &inner, &f] {
        assert_eq!(mode(p), 0o750, "{p:?}");
        assert_eq!(std::fs::metadata(p).unwrap().uid(), nobody, "{p:?}");
    }
    assert_eq!(std::fs::read_link(&link).unwrap(), dir);

    // A re-run changes nothing.
    let (code, doc) = host.play(&tasks, &[]);
    assert_eq!(code, Some(0), "{doc}");
    for t in ["dir", "inner", "touch", "tree", "link"] {
        assert_eq!(status(&doc, t), "ok", "{t}: {doc}");
    }

    // Something below that differs brings the tree task back, with the diff.
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (_, doc) = host.play(&tasks, &["--diff"]);
    assert_eq!(status(&doc, "tree"), "changed", "{doc}");
    assert_eq!(mode(&f), 0o750);

    // A link to elsewhere is replaced; a changed mode shows before and after.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let (_, doc) = host.play(
        &task(
            "dir",
            "file",
            &format!("path = {dir:?}\nstate = \"directory\"\nmode = \"0750\""),
        ),
        &["--diff", "--check"],
    );
    let diffs = result(&doc, "dir")["diffs"].to_string();
    assert!(
        diffs.contains("-mode: 0700") && diffs.contains("+mode: 0750"),
        "{doc}"
    );
    assert_eq!(mode(&dir), 0o700, "--check changed the mode");

    // absent: --check removes nothing; then the tree and the link go.
    let gone = [
        task(
            "rm-link",
            "file",
            &format!("path = {link:?}\nstate = \"absent\""),
        ),
        task(
            "rm-dir",
            "file",
            &format!("path = {dir:?}\nstate = \"absent\""),
        ),
    ]
    .concat();
    let (_, doc) = host.play(&gone, &["--check"]);
    assert_eq!(status(&doc, "rm-dir"), "would_change", "{doc}");
    assert!(f.exists());
    let (code, doc) = host.play(&gone, &[]);
    assert_eq!(code, Some(0), "{doc}");
    assert!(!dir.exists() && std::fs::symlink_metadata(&link).is_err());
    let (_, doc) = host.play(&gone, &[]);
    assert_eq!(status(&doc, "rm-dir"), "ok", "{doc}");
}

#[test]
fn file_refuses_what_it_must_not_do() {
    let host = Host::start();
    let missing = host.path("missing");
    let a_dir = host.path("d");
    std::fs::create_dir_all(&a_dir).unwrap();
    // A failed task stops its host: one play each.
    let refused = |t: String, needle: &str| {
        let (code, doc) = host.play(&t, &[]);
        assert_eq!(code, Some(2), "{doc}");
        let name = doc["tasks"][0]["task"].as_str().unwrap_or("").to_string();
        let e = error(&doc, &name);
        assert!(e.contains(needle), "{needle}: {doc}");
    };
    refused(
        task("root", "file", "path = \"/\"\nstate = \"absent\""),
        "refusing",
    );
    refused(
        task(
            "missing",
            "file",
            &format!("path = {missing:?}\nmode = \"0644\""),
        ),
        "does not exist",
    );
    assert!(!missing.exists());
    refused(
        task(
            "over-dir",
            "file",
            &format!("path = {a_dir:?}\nstate = \"link\"\nsrc = \"/etc\""),
        ),
        "not a symlink",
    );
    assert!(a_dir.is_dir());
    refused(
        task(
            "no-user",
            "file",
            &format!("path = {a_dir:?}\nstate = \"directory\"\nowner = \"nosuchuser-ferry\""),
        ),
        "no user nosuchuser-ferry",
    );
}

fn uid(name: &str) -> u32 {
    let out = Command::new("id").args(["-u", name]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

// ---------------------------------------------------------------------------------------
// lineinfile

#[test]
fn lineinfile_replaces_inserts_and_removes_lines() {
    let host = Host::start();
    let conf = host.path("sshd_config");
    let link = host.path("link_to_conf");
    std::fs::create_dir_all(conf.parent().unwrap()).unwrap();
    let original = "Port 22\n#PasswordAuthentication yes\nPubkeyAuthentication yes\nUsePAM yes\n";
    std::fs::write(&conf, original).unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::os::unix::fs::symlink(&conf, &link).unwrap();
    let nobody = uid("nobody");
    std::os::unix::fs::chown(&conf, Some(nobody), None).unwrap();
    let tasks = [
        task(
            "password",
            "lineinfile",
            &format!(
                "path = {conf:?}\nregexp = '^#?PasswordAuthentication\\s'\nline = \"PasswordAuthentication no\""
            ),
        ),
        // Through the symlink: the target is edited.
        task(
            "banner",
            "lineinfile",
            &format!(
                "path = {link:?}\nline = \"Banner none\"\ninsertafter = '^PubkeyAuthentication'"
            ),
        ),
        task(
            "first",
            "lineinfile",
            &format!("path = {conf:?}\nline = \"# managed by ferry\"\ninsertbefore = \"BOF\""),
        ),
    ]
    .concat();
    let (code, doc) = host.play(&tasks, &["--check", "--diff"]);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(status(&doc, "password"), "would_change", "{doc}");
    let diff = result(&doc, "password")["diffs"].to_string();
    assert!(
        diff.contains("-#PasswordAuthentication yes")
            && diff.contains("+PasswordAuthentication no"),
        "{doc}"
    );
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        original,
        "--check wrote"
    );

    let (code, doc) = host.play(&tasks, &[]);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(
        std::fs::read_to_string(&conf).unwrap(),
        "# managed by ferry\nPort 22\nPasswordAuthentication no\nPubkeyAuthentication yes\nBanner none\nUsePAM yes\n"
    );
    // The file is still the same kind of file: mode, owner, the symlink to it.
    assert_eq!(mode(&conf), 0o640);
    assert_eq!(std::fs::metadata(&conf).unwrap().uid(), nobody);
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let leftovers: Vec<_> = std::fs::read_dir(conf.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}");

    let (_, doc) = host.play(&tasks, &[]);
    for t in ["password", "banner", "first"] {
        assert_eq!(status(&doc, t), "ok", "{t}: {doc}");
    }

    // absent removes every matching line.
    let absent = task(
        "no-comments",
        "lineinfile",
        &format!("path = {conf:?}\nregexp = '^#'\nstate = \"absent\""),
    );
    let (_, doc) = host.play(&absent, &[]);
    assert_eq!(status(&doc, "no-comments"), "changed", "{doc}");
    assert!(!std::fs::read_to_string(&conf).unwrap().contains('#'));
    let (_, doc) = host.play(&absent, &[]);
    assert_eq!(status(&doc, "no-comments"), "ok", "{doc}");
}

#[test]
fn lineinfile_creates_only_when_asked_and_refuses_large_files() {
    let host = Host::start();
    let new = host.path("new.conf");
    let t = |create: &str| {
        task(
            "t",
            "lineinfile",
            &format!("path = {new:?}\nline = \"a = 1\"\n{create}"),
        )
    };
    let (code, doc) = host.play(&t(""), &[]);
    assert_eq!(code, Some(2), "{doc}");
    assert!(error(&doc, "t").contains("does not exist"), "{doc}");
    assert!(!new.exists());
    let (code, doc) = host.play(&t("create = true\nmode = \"0600\""), &[]);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(std::fs::read_to_string(&new).unwrap(), "a = 1\n");
    assert_eq!(mode(&new), 0o600);

    let big = host.path("big");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(17 * 1024 * 1024).unwrap();
    let (code, doc) = host.play(
        &task(
            "big",
            "lineinfile",
            &format!("path = {big:?}\nline = \"x\""),
        ),
        &[],
    );
    assert_eq!(code, Some(2), "{doc}");
    assert!(
        error(&doc, "big").contains("more than the 16777216"),
        "{doc}"
    );
    assert_eq!(std::fs::metadata(&big).unwrap().len(), 17 * 1024 * 1024);
}

// ---------------------------------------------------------------------------------------
// wait_for

#[test]
fn wait_for_ports_paths_and_commands() {
    let host = Host::start();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap().port();
    let closed = sshd::free_port();
    let (code, doc) = host.play(
        &[
            task("open", "wait_for", &format!("port = {open}\ntimeout = 10")),
            task(
                "closed",
                "wait_for",
                &format!("port = {closed}\nstate = \"absent\"\ntimeout = 10"),
            ),
            task(
                "gone",
                "wait_for",
                &format!("path = {:?}\nstate = \"absent\"", host.path("nothing")),
            ),
        ]
        .concat(),
        &["--check"],
    );
    assert_eq!(code, Some(0), "{doc}");
    for t in ["open", "closed", "gone"] {
        assert_eq!(status(&doc, t), "ok", "{t}: {doc}");
    }

    // A path that appears while the task waits.
    let later = host.path("later");
    let maker = {
        let later = later.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(1500));
            std::fs::write(later, "").unwrap();
        })
    };
    let (code, doc) = host.play(
        &task(
            "appears",
            "wait_for",
            &format!("path = {later:?}\ntimeout = 20\ninterval = 1"),
        ),
        &[],
    );
    maker.join().unwrap();
    assert_eq!(code, Some(0), "{doc}");
    assert!(
        result(&doc, "appears")["duration_ms"].as_u64().unwrap_or(0) >= 1000,
        "it did not wait: {doc}"
    );

    // What never happens fails in its time, naming it.
    let (code, doc) = host.play(
        &task(
            "never",
            "wait_for",
            &format!("port = {closed}\ntimeout = 2"),
        ),
        &[],
    );
    assert_eq!(code, Some(2), "{doc}");
    let e = error(&doc, "never");
    assert!(
        e.contains(&format!("127.0.0.1:{closed} did not accept connections"))
            && e.contains("within 2s"),
        "{e}"
    );
    let (code, doc) = host.play(
        &task(
            "cmd",
            "wait_for",
            &format!(
                "command = \"test -e {}\"\ntimeout = 2",
                later.with_extension("x").display()
            ),
        ),
        &[],
    );
    assert_eq!(code, Some(2), "{doc}");
    let e = error(&doc, "cmd");
    assert!(
        e.contains("did not exit 0") && e.contains("within 2s"),
        "{e}"
    );
    drop(listener);
}
