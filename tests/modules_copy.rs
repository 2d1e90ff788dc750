//! `copy` and `template` through the real binary against a real sshd: content from a
//! laptop file (streamed, sha256-checked), from `content` and from a Handlebars file;
//! a re-run changes nothing; only the mode differs → only chmod; check mode writes
//! nothing; `--diff` shows the file's diff; a link at dest is refused, not followed;
//! an undefined variable in a template file is located in it before anything runs.

#[path = "common/play.rs"]
mod play;
#[path = "common/sshd.rs"]
mod sshd;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use play::{play_in, text};
use sha2::{Digest, Sha256};
use sshd::{Client, Sshd};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn copy_and_template_are_idempotent_atomic_and_checked() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let work = d.join("work");
    std::fs::create_dir_all(d.join("files")).unwrap();
    std::fs::create_dir_all(d.join("templates")).unwrap();
    std::fs::create_dir(&work).unwrap();
    std::fs::write(
        d.join("inventory.toml"),
        format!(
            "{}[hosts.h.vars]\ndir = \"{}\"\nport = 8080\nname = \"a 'quoted' $name\"\n",
            client.inventory_host("h", server.port),
            work.display()
        ),
    )
    .unwrap();
    // 20 MiB of not-quite-repeating bytes: streamed, not held.
    let big: Vec<u8> = (0..20u32 << 20).map(|i| (i ^ (i >> 9)) as u8).collect();
    std::fs::write(d.join("files/big.bin"), &big).unwrap();
    std::fs::write(
        d.join("templates/app.conf.hbs"),
        "port={{ port }}\nname={{ name }}\n",
    )
    .unwrap();
    let playbook = |mode: &str| {
        format!(
            "[[task]]\nname = \"big\"\nhosts = \"h\"\n[task.copy]\nsrc = \"files/big.bin\"\n\
             dest = \"{{{{ dir }}}}/big.bin\"\n\
             [[task]]\nname = \"small\"\nhosts = \"h\"\n[task.copy]\n\
             content = \"hello {{{{ port }}}}\\n\"\ndest = \"{{{{ dir }}}}/small\"\nmode = \"{mode}\"\n\
             [[task]]\nname = \"conf\"\nhosts = \"h\"\n[task.template]\n\
             src = \"templates/app.conf.hbs\"\ndest = \"{{{{ dir }}}}/app.conf\"\nmode = \"0640\"\n"
        )
    };
    std::fs::write(d.join("playbook.toml"), playbook("0600")).unwrap();

    let out = play_in(d, "playbook.toml", &["--check"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        std::fs::read_dir(&work).unwrap().count(),
        0,
        "check mode wrote"
    );

    let out = play_in(d, "playbook.toml", &[]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let got = std::fs::read(work.join("big.bin")).unwrap();
    assert_eq!(Sha256::digest(&got), Sha256::digest(&big));
    assert_eq!(
        std::fs::read_to_string(work.join("small")).unwrap(),
        "hello 8080\n"
    );
    assert_eq!(mode(&work.join("small")), 0o600);
    assert_eq!(
        std::fs::read_to_string(work.join("app.conf")).unwrap(),
        "port=8080\nname=a 'quoted' $name\n",
        "a template's values are written as they are"
    );
    assert_eq!(mode(&work.join("app.conf")), 0o640);
    let names: Vec<String> = std::fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("ferry-part")), "{names:?}");

    let out = play_in(d, "playbook.toml", &[]);
    assert!(
        text(&out).contains("changed=0"),
        "a re-run changed: {}",
        text(&out)
    );

    // Only the mode differs: only chmod, the content is not sent again.
    std::fs::write(d.join("playbook.toml"), playbook("0644")).unwrap();
    let out = play_in(d, "playbook.toml", &["--format", "json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let small = doc["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task"] == "small")
        .unwrap();
    assert!(
        small["changes"][0].as_str().unwrap().contains("chmod 0644"),
        "{small}"
    );
    assert_eq!(mode(&work.join("small")), 0o644);

    // --check --diff: the template's diff, nothing written.
    std::fs::write(work.join("app.conf"), "port=1\nname=a 'quoted' $name\n").unwrap();
    let out = play_in(d, "playbook.toml", &["--check", "--diff"]);
    assert!(text(&out).contains("-port=1"), "{}", text(&out));
    assert!(text(&out).contains("+port=8080"), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(work.join("app.conf")).unwrap(),
        "port=1\nname=a 'quoted' $name\n"
    );

    // A link at dest is refused and what it points to is untouched.
    let target = d.join("precious");
    std::fs::write(&target, "keep").unwrap();
    std::fs::remove_file(work.join("small")).unwrap();
    std::os::unix::fs::symlink(&target, work.join("small")).unwrap();
    let out = play_in(d, "playbook.toml", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("symbolic link"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");

    // An undefined variable in the template file: located in it, nothing contacted.
    std::fs::write(
        d.join("templates/app.conf.hbs"),
        "port={{ port }}\nx={{ nope }}\n",
    )
    .unwrap();
    let out = play_in(d, "playbook.toml", &[]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(text(&out).contains("app.conf.hbs:2:"), "{}", text(&out));
    assert!(text(&out).contains("nope"), "{}", text(&out));
}
