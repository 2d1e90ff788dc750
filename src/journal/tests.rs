use super::file::{is_temp_file_of, temp_prefix};
use super::*;

#[test]
fn second_open_is_refused_while_locked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.journal.json");
    let first = Journal::open(&path, "pb", Secrets::new(), true).unwrap();
    let second = Journal::open(&path, "pb", Secrets::new(), true);
    assert!(
        matches!(second, Err(JournalError::Locked { .. })),
        "{second:?}"
    );
    drop(first);
    Journal::open(&path, "pb", Secrets::new(), true).unwrap();
}

#[test]
fn records_survive_reopen_are_0600_and_masked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.journal.json");
    let secrets = Secrets::new();
    secrets.add("hunter2");
    let j = Journal::open(&path, "pb", secrets.clone(), true).unwrap();
    j.task_started("old", "Dump").unwrap();
    j.record_artifact(
        "old",
        "Dump",
        Artifact {
            name: "db".into(),
            host: "old".into(),
            path: "/tmp/db.sql".into(),
            sha256: "ab".into(),
            size: 3,
        },
    )
    .unwrap();
    j.task_finished(
        "old",
        "Dump",
        RecordStatus::Changed,
        &["dumped with hunter2".into()],
        None,
    )
    .unwrap();
    drop(j);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(!text.contains("hunter2"));
    let data = Journal::read(&path).unwrap();
    let rec = &data.hosts["old"]["Dump"];
    assert_eq!(rec.status, RecordStatus::Changed);
    assert_eq!(rec.artifacts["db"].size, 3);
    assert_eq!(rec.changes, vec!["dumped with ********"]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // No temp files left beside it.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
}

/// A short secret is masked in the text fields only: ferry's statuses, the keys,
/// names and digests stay as they are, so the journal still reads and resumes.
#[test]
fn short_secret_masks_text_not_the_journal_structure() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.journal.json");
    let secrets = Secrets::new();
    for short in ["ok", "a", "hosts", "2"] {
        secrets.add(short);
    }
    let j = Journal::open(&path, "pb", secrets.clone(), true).unwrap();
    j.task_started("old", "Dump").unwrap();
    j.record_artifact(
        "old",
        "Dump",
        Artifact {
            name: "db".into(),
            host: "old".into(),
            path: "/tmp/db.sql".into(),
            sha256: "a2b4".into(),
            size: 3,
        },
    )
    .unwrap();
    j.task_finished(
        "old",
        "Dump",
        RecordStatus::Ok,
        &["it's ok".into()],
        Some("a"),
    )
    .unwrap();
    drop(j);
    let data = Journal::read(&path).unwrap();
    let rec = &data.hosts["old"]["Dump"];
    assert_eq!(rec.status, RecordStatus::Ok);
    assert_eq!(rec.artifacts["db"].sha256, "a2b4");
    assert_eq!(rec.changes, vec!["it's ********"]);
    assert_eq!(rec.error.as_deref(), Some("********"));
}

#[test]
fn atomic_write_replaces_whole_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.json");
    write_atomic(&path, b"{\"a\": 1}").unwrap();
    write_atomic(&path, b"{}").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"{}");
}

#[test]
fn read_only_journal_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.journal.json");
    let j = Journal::open(&path, "pb", Secrets::new(), false).unwrap();
    j.task_started("h", "t").unwrap();
    assert!(!path.exists());
}

fn owner(pb: &str, inv: &str, tasks: &[(&str, &str, &str)]) -> JournalOwner {
    JournalOwner {
        playbook_name: "migrate".into(),
        paths: Some((PathBuf::from(pb), PathBuf::from(inv))),
        tasks_digest: "all".into(),
        tasks: tasks
            .iter()
            .map(|(name, module, digest)| {
                (
                    name.to_string(),
                    TaskDefinition {
                        module: module.to_string(),
                        digest: digest.to_string(),
                    },
                )
            })
            .collect(),
    }
}

fn record_done(j: &Journal, host: &str, task: &str) {
    j.task_started(host, task).unwrap();
    j.task_finished(host, task, RecordStatus::Changed, &[], None)
        .unwrap();
}

#[test]
fn a_journal_of_another_playbook_or_inventory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.journal.json");
    let a = owner("/a/migrate.toml", "/inv.toml", &[("t", "command", "d1")]);
    let j = Journal::open_for(&path, &a, Secrets::new(), true).unwrap();
    record_done(&j, "old", "t");
    drop(j);
    let data = Journal::read(&path).unwrap();
    assert_eq!(data.version, JOURNAL_VERSION);
    assert_eq!(
        data.owner.as_ref().map(|o| o.playbook.clone()),
        Some(PathBuf::from("/a/migrate.toml"))
    );
    // Same file name, other directory: another playbook.
    let b = owner("/b/migrate.toml", "/inv.toml", &[("t", "command", "d1")]);
    let err = Journal::open_for(&path, &b, Secrets::new(), true).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, JournalError::OtherOwner { .. }), "{msg}");
    assert!(
        msg.contains("/a/migrate.toml") && msg.contains("/b/migrate.toml"),
        "{msg}"
    );
    // Same playbook, other inventory.
    let c = owner(
        "/a/migrate.toml",
        "/other-inv.toml",
        &[("t", "command", "d1")],
    );
    let msg = Journal::open_for(&path, &c, Secrets::new(), true)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("/inv.toml") && msg.contains("/other-inv.toml"),
        "{msg}"
    );
    // The owner is welcome.
    Journal::open_for(&path, &a, Secrets::new(), true).unwrap();
}

#[test]
fn a_version_1_journal_is_adopted_by_the_playbook_that_opens_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.journal.json");
    std::fs::write(
        &path,
        r#"{"version": 1, "playbook": "migrate", "hosts": {"old": {"t": {
            "status": "changed", "started": "2025-01-01T00:00:00Z", "finished": null,
            "changes": [], "artifacts": {}, "fingerprints": {}, "error": null}}}}"#,
    )
    .unwrap();
    let a = owner("/a/migrate.toml", "/inv.toml", &[("t", "command", "d1")]);
    let j = Journal::open_for(&path, &a, Secrets::new(), true).unwrap();
    let rec = j.record("old", "t").unwrap();
    assert!(rec.succeeded());
    // Made before definitions were recorded: trusted as the current one.
    assert!(j.is_current("t", &rec));
    drop(j);
    let data = Journal::read(&path).unwrap();
    assert_eq!(data.version, JOURNAL_VERSION);
    assert!(data.owner.is_some());
    // From now on it is a's.
    let b = owner("/b/migrate.toml", "/inv.toml", &[]);
    assert!(Journal::open_for(&path, &b, Secrets::new(), true).is_err());
}

#[test]
fn a_journal_from_a_newer_ferry_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.journal.json");
    std::fs::write(&path, r#"{"version": 99, "playbook": "p", "hosts": {}}"#).unwrap();
    let err = Journal::open(&path, "p", Secrets::new(), true).unwrap_err();
    assert!(
        matches!(err, JournalError::TooNew { version: 99, .. }),
        "{err}"
    );
}

#[test]
fn records_follow_the_task_definition() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.journal.json");
    // The journal of a playbook whose tasks are (name, module, digest).
    let open = |tasks: &[(&str, &str, &str)]| {
        let owner = owner("/a/migrate.toml", "/inv.toml", tasks);
        Journal::open_for(&path, &owner, Secrets::new(), true).unwrap()
    };
    let j = open(&[
        ("same", "command", "d1"),
        ("edited", "command", "d2"),
        ("remade", "command", "d3"),
    ]);
    for t in ["same", "edited", "remade"] {
        record_done(&j, "old", t);
    }
    drop(j);
    let j = open(&[
        ("same", "command", "d1"),
        ("edited", "command", "d2b"),
        ("remade", "transfer", "d4"),
    ]);
    let same = j.record("old", "same").unwrap();
    assert!(j.is_current("same", &same));
    // Same module, other arguments: the record still applies, but it is not the
    // current definition's.
    let edited = j.record("old", "edited").unwrap();
    assert!(!j.is_current("edited", &edited));
    // Another module under the same name: the record is about something else.
    assert!(j.record("old", "remade").is_none());
    // Running the edited task records the new definition.
    record_done(&j, "old", "edited");
    let edited = j.record("old", "edited").unwrap();
    assert!(j.is_current("edited", &edited));
    assert_eq!(edited.definition.as_deref(), Some("d2b"));
}

#[test]
fn a_journal_named_like_its_lock_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.lock");
    let err = Journal::open(&path, "pb", Secrets::new(), true).unwrap_err();
    assert!(matches!(err, JournalError::BadPath { .. }), "{err}");
    assert!(err.to_string().contains("its own lock"), "{err}");
    assert!(!path.exists());
    // Nor another journal's lock file.
    let other = dir.path().join("pb.journal.json");
    let _held = Journal::open(&other, "pb", Secrets::new(), true).unwrap();
    let err = Journal::open(&lock_path(&other), "pb", Secrets::new(), true).unwrap_err();
    assert!(matches!(err, JournalError::BadPath { .. }), "{err}");
}

#[test]
fn a_symlinked_journal_is_refused_and_its_target_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("real.json");
    std::fs::write(&target, "precious").unwrap();
    let link = dir.path().join("j.journal.json");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let err = Journal::open(&link, "pb", Secrets::new(), true).unwrap_err();
    assert!(matches!(err, JournalError::BadPath { .. }), "{err}");
    assert!(err.to_string().contains("symlink"), "{err}");
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
    // A dangling one too.
    let dangling = dir.path().join("d.journal.json");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
    assert!(Journal::open(&dangling, "pb", Secrets::new(), true).is_err());
    assert!(!dir.path().join("nowhere").exists());
}

#[test]
fn temp_files_left_by_a_killed_run_are_removed_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j.journal.json");
    // What write_atomic names its temp files, as a SIGKILL would leave them.
    let leftover = dir.path().join(".j.journal.json.a1B2c3.tmp");
    std::fs::write(&leftover, "half").unwrap();
    let keep = [
        ".other.journal.json.a1B2c3.tmp", // another journal's (maybe mid-write)
        ".j.journal.json.a1B2c3",         // not ferry's name
        ".j.journal.json.toolong1.tmp",
        "j.journal.json.a1B2c3.tmp",
        "notes.tmp",
    ];
    for k in keep {
        std::fs::write(dir.path().join(k), "x").unwrap();
    }
    let j = Journal::open(&path, "pb", Secrets::new(), true).unwrap();
    assert!(!leftover.exists());
    for k in keep {
        assert!(dir.path().join(k).exists(), "{k} was removed");
    }
    // The temp names write_atomic uses are the ones cleaned up.
    record_done(&j, "h", "t");
    let prefix = temp_prefix(&path);
    assert!(is_temp_file_of(".j.journal.json.Zz09aa.tmp", &prefix));
    drop(j);
}
