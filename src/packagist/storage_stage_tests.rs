//! Facts in, changes out: when the storage is staged on the node again.

use super::*;
use crate::packagist::storage_stream::parse_listing;

fn stamp(mtime: &str) -> FileStamp {
    FileStamp {
        size: 100,
        mtime: mtime.into(),
    }
}

fn facts() -> StorageStageFacts {
    StorageStageFacts {
        source_host: "old".into(),
        data_dir: "/data/packagist".into(),
        dest: "/var/tmp/ferry/packagist_storage.tar.gz".into(),
        tree: parse_listing("f\t3\t1.0\tcomposer/a.zip\n"),
        recorded: None,
        current: None,
        taken: Vec::new(),
        partial: 0,
        guard: None,
    }
}

fn staged(f: &StorageStageFacts, mtime: &str) -> StagedRecord {
    StagedRecord {
        tree_stamp: f.tree.stamp.clone(),
        stamp: stamp(mtime),
    }
}

#[test]
fn first_run_streams_into_the_part_and_renames_it() {
    let c = decide(&facts()).unwrap();
    assert_eq!(c.len(), 1);
    assert!(
        c[0].describe()
            .contains("1 files) from old into /var/tmp/ferry/"),
        "{}",
        c[0].describe()
    );
    let cmd = &c[0].commands()[0];
    assert!(
        cmd.starts_with("ssh old cd /data/packagist && mkdir -p composer artifacts && tar -cf -"),
        "{cmd}"
    );
    assert!(
        cmd.ends_with(
            "tee /var/tmp/ferry/.ferry/packagist_storage.tar.gz.part | sha256sum; mv \
             /var/tmp/ferry/.ferry/packagist_storage.tar.gz.part \
             /var/tmp/ferry/packagist_storage.tar.gz"
        ),
        "{cmd}"
    );
}

/// The archive this task made of the unchanged source is kept; a changed source, a
/// changed or missing archive, or no record streams again.
#[test]
fn a_rerun_keeps_the_staged_archive_only_while_both_ends_are_unchanged() {
    let mut f = facts();
    f.recorded = Some(staged(&f, "1.5"));
    f.current = Some(stamp("1.5"));
    assert!(decide(&f).unwrap().is_empty());
    f.current = Some(stamp("2.5"));
    assert_eq!(
        decide(&f).unwrap().len(),
        1,
        "the archive was touched since"
    );
    f.current = None;
    assert_eq!(decide(&f).unwrap().len(), 1, "the archive is gone");
    f.current = Some(stamp("1.5"));
    f.tree = parse_listing("f\t4\t2.0\tcomposer/a.zip\n");
    assert_eq!(decide(&f).unwrap().len(), 1, "the source changed");
    f.recorded = None;
    assert_eq!(decide(&f).unwrap().len(), 1, "no record");
}

#[test]
fn a_name_ferry_did_not_create_fails_and_a_completed_migration_is_left_alone() {
    let mut f = facts();
    f.taken = vec![
        "/var/tmp/ferry/packagist_storage.tar.gz exists and was not created by ferry (a symlink)"
            .into(),
    ];
    let e = decide(&f).unwrap_err().to_string();
    assert!(e.contains("a symlink"), "{e}");
    f.guard = Some("the migration already completed".into());
    assert!(decide(&f).unwrap().is_empty());
}

/// A part a cut stream left is resumed after; a finished archive is not re-sent.
#[test]
fn a_kept_part_is_resumed_after() {
    let mut f = facts();
    f.partial = 4096;
    let c = decide(&f).unwrap();
    assert_eq!(c[0].resume_from, 4096);
    assert!(
        c[0].describe().contains("resuming after 4096 bytes"),
        "{}",
        c[0].describe()
    );
    assert!(
        c[0].commands()[0].contains("(skip the first 4096 bytes) | tee -a"),
        "{:?}",
        c[0].commands()
    );
    f.recorded = Some(staged(&f, "1.5"));
    f.current = Some(stamp("1.5"));
    assert!(decide(&f).unwrap().is_empty());
}
