//! Facts in, changes out: when the storage is staged on the node again.

use super::*;
use crate::module::direct_route::DirectProbe;
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
        direct: direct_route::DirectFacts::new(RouteSetting::Controller),
    }
}

fn plan(c: &[StageChange]) -> &StreamPlan {
    match c.last() {
        Some(StageChange::Stream(p)) => p,
        other => panic!("no stream: {other:?}"),
    }
}

fn node() -> direct_route::DirectTarget {
    direct_route::DirectTarget {
        addr: "172.17.0.3".into(),
        port: 22,
        user: "root".into(),
        host_key: "ssh-ed25519 AAAAnode".into(),
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
    assert_eq!(plan(&c).resume_from, 4096);
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

/// `auto` streams directly when the probe found the node, and says why not otherwise;
/// `direct` without a way there fails before anything is touched.
#[test]
fn the_route_follows_the_setting_and_the_probe() {
    let mut f = facts();
    f.direct.route = RouteSetting::Auto;
    f.direct.probe = DirectProbe::Reachable(node());
    let c = decide(&f).unwrap();
    assert_eq!(plan(&c).route, Route::Direct(node()));
    assert!(plan(&c).may_fall_back);
    assert!(
        c[0].describe()
            .contains("route direct: old → 172.17.0.3:22"),
        "{}",
        c[0].describe()
    );
    assert!(
        c[0].commands()[0].starts_with("on old: cd /data/packagist"),
        "{:?}",
        c[0].commands()
    );
    f.direct.probe =
        DirectProbe::Unavailable("host old cannot reach new's sshd (tried 10.0.0.9:22)".into());
    let c = decide(&f).unwrap();
    assert!(matches!(
        plan(&c).route,
        Route::Controller { reason: Some(_) }
    ));
    assert!(
        c[0].describe()
            .contains("auto fell back, host old cannot reach"),
        "{}",
        c[0].describe()
    );
    f.direct.route = RouteSetting::Direct;
    let e = decide(&f).unwrap_err().to_string();
    assert!(e.contains("route = \"direct\" cannot be used"), "{e}");
}

/// A temporary key an earlier run left (a crash mid-stream) is removed first, also when
/// the archive itself is already staged.
#[test]
fn a_key_left_by_a_crash_is_removed_first() {
    let mut f = facts();
    let left = direct_route::plan_record(
        "ferry-direct-0a0b",
        "old",
        "/root",
        "/var/tmp/ferry/.ferry/direct-ferry-direct-0a0b.sh",
    );
    f.direct.trust_left = Some(left.clone());
    let c = decide(&f).unwrap();
    assert_eq!(c.len(), 2);
    assert_eq!(c[0], StageChange::RemoveTrust(left.clone()));
    assert!(
        c[0].describe().contains("ferry-direct-0a0b"),
        "{}",
        c[0].describe()
    );
    f.recorded = Some(staged(&f, "1.5"));
    f.current = Some(stamp("1.5"));
    assert_eq!(decide(&f).unwrap(), vec![StageChange::RemoveTrust(left)]);
    f.direct.trust_left = None;
    assert!(decide(&f).unwrap().is_empty());
}
