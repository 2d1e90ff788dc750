use super::*;

fn counts(s: &str) -> RedisKeyCounts {
    RedisKeyCounts::parse_info_keyspace(s).unwrap()
}

fn facts() -> RedisRestoreFacts {
    RedisRestoreFacts {
        namespace: "default".into(),
        statefulset: "redis".into(),
        pod: "redis-0".into(),
        container: None,
        port: 9869,
        pvc: "redis-data-redis-0".into(),
        pv: Some("pvc-1".into()),
        pv_path: Some("/var/openebs/local/pvc-1".into()),
        pod_ready: true,
        persistence: Some(RedisPersistence {
            appendonly: true,
            ..Default::default()
        }),
        source: Some(counts("db0:keys=5\ndb5:keys=2")),
        current: Some(RedisKeyCounts::default()),
        guard: None,
        source_pending: false,
        interrupted: false,
        now: 0,
    }
}

#[test]
fn interrupted_restore_is_done_again_even_when_the_counts_match() {
    let mut f = facts();
    f.current = f.source.clone();
    assert!(decide(&f).unwrap().is_empty());
    f.interrupted = true;
    let c = decide(&f).unwrap();
    assert_eq!(c.len(), 1);
    assert!(c[0]
        .describe()
        .contains("again: the last restore was interrupted"));
    f.guard = Some("done".into());
    assert!(decide(&f).unwrap().is_empty());
}

#[test]
fn empty_target_is_restored_into_the_pv_from_the_cluster() {
    let c = decide(&facts()).unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].pv_path, "/var/openebs/local/pvc-1");
    assert!(
        c[0].describe()
            .contains("appendonlydir/appendonly.aof.1.base.rdb"),
        "{}",
        c[0].describe()
    );
    assert!(c[0].commands()[0].contains("jsonpath={.spec.volumeName}"));
}

#[test]
fn restored_target_is_ok_even_after_db5_was_flushed() {
    let mut f = facts();
    f.current = Some(counts("db0:keys=5"));
    assert!(decide(&f).unwrap().is_empty());
    f.current = Some(counts("db0:keys=4"));
    assert_eq!(decide(&f).unwrap().len(), 1);
}

#[test]
fn missing_pv_or_source_is_an_error() {
    let mut f = facts();
    f.pv_path = None;
    assert!(decide(&f).is_err());
    let mut f = facts();
    f.source = None;
    assert!(decide(&f).is_err());
}

#[test]
fn node_script_lays_out_files_atomically_and_cleans_up() {
    let p = RedisPersistence {
        appendonly: true,
        ..Default::default()
    };
    let staged = staged_rdb("/var/openebs/local/pvc-1").unwrap();
    assert_eq!(
        staged.part,
        "/var/openebs/local/pvc-1/.ferry/.ferry-restore.rdb.part"
    );
    let s = node_script("/var/openebs/local/pvc-1", &staged, &restore_plan(&p), None);
    let text = s.to_shell();
    let words = shlex::split(&text).unwrap();
    assert_eq!(words[0], "sh");
    let outer = shlex::split(&words[2]).unwrap();
    assert!(outer.iter().any(|w| w == "ferry-check-part"), "{outer:?}");
    let inner = outer.last().unwrap();
    assert!(
        inner.starts_with("set -e ; rm -rf -- /var/openebs/local/pvc-1/appendonlydir"),
        "{inner}"
    );
    assert!(inner.contains("cp /var/openebs/local/pvc-1/.ferry/.ferry-restore.rdb.part /var/openebs/local/pvc-1/.ferry/appendonlydir_appendonly.aof.1.base.rdb.ferry-tmp"), "{inner}");
    assert!(inner.contains("mv -f -T /var/openebs/local/pvc-1/.ferry/appendonlydir_appendonly.aof.1.base.rdb.ferry-tmp /var/openebs/local/pvc-1/appendonlydir/appendonly.aof.1.base.rdb"), "{inner}");
    assert!(
            inner.contains("rm -rf -- /var/openebs/local/pvc-1/.ferry ; chown -R --reference=/var/openebs/local/pvc-1"),
            "{inner}"
        );
}

/// Redis's user owns the volume directory and planted links to a victim at the
/// names the restore writes (the old temporaries, the staged RDB, the RDB itself):
/// run for real here, the victim is untouched and the volume gets the staged RDB.
#[test]
fn node_script_never_writes_through_links_in_the_volume() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("var/openebs/pvc-1");
    std::fs::create_dir_all(&dir).unwrap();
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let p = RedisPersistence {
        appendonly: false,
        ..Default::default()
    };
    let rdb = p.dbfilename.clone();
    for name in [
        format!("{rdb}.ferry-tmp"),
        ".ferry-restore.rdb".to_string(),
        rdb.clone(),
    ] {
        std::os::unix::fs::symlink(&victim, dir.join(name)).unwrap();
    }
    let d = dir.to_string_lossy().into_owned();
    let staged = staged_rdb(&d).unwrap();
    let sh = |c: &Cmd| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(c.to_shell())
            .output()
            .unwrap()
    };
    let out = sh(&staged.prepare_scratch_cmd());
    assert!(out.status.success(), "{out:?}");
    std::fs::write(&staged.part, b"REDIS0011 the backup").unwrap();
    let out = sh(&node_script(&d, &staged, &restore_plan(&p), None));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let placed = dir.join(&rdb);
    assert!(!std::fs::symlink_metadata(&placed).unwrap().is_symlink());
    assert_eq!(std::fs::read(&placed).unwrap(), b"REDIS0011 the backup");
    assert!(!std::path::Path::new(&staged.work).exists());
}

#[test]
fn implausible_pv_paths_are_refused() {
    assert!(checked_pv_path("/").is_err());
    assert!(checked_pv_path("/var").is_err());
    assert!(checked_pv_path("relative/x/y").is_err());
    assert!(checked_pv_path("/var/openebs/../../etc").is_err());
    assert!(checked_pv_path("/var/openebs/local/pvc-1").is_ok());
}

/// Non-root Redis (Part 4, item 6): on a root-owned 0777 volume directory, with the RDB
/// staged 0600 by root, the laid-out files (the AOF directory too, which Redis appends
/// to) become the owner redis-server runs as. Run for real (the tests run as root).
#[test]
fn node_script_gives_the_files_to_the_user_redis_runs_as() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("var/openebs/pvc-2");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let p = RedisPersistence {
        appendonly: true,
        owner: Some(FileOwner { uid: 999, gid: 999 }),
        ..Default::default()
    };
    let d = dir.to_string_lossy().into_owned();
    let staged = staged_rdb(&d).unwrap();
    let sh = |c: &Cmd| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("umask 077; {}", c.to_shell()))
            .output()
            .unwrap()
    };
    assert!(sh(&staged.prepare_scratch_cmd()).status.success());
    std::fs::write(&staged.part, b"REDIS0011 the backup").unwrap();
    let out = sh(&node_script(&d, &staged, &restore_plan(&p), p.owner));
    assert!(out.status.success(), "{out:?}");
    let mut seen = 0;
    for entry in walk(&dir) {
        let meta = std::fs::symlink_metadata(&entry).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (999, 999), "{}", entry.display());
        seen += 1;
    }
    assert!(
        seen >= 4,
        "the directory, appendonlydir, its base and manifest: {seen}"
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn the_redis_process_owner_is_parsed() {
    assert_eq!(
        FileOwner::parse_stat("999:999\n").unwrap(),
        FileOwner { uid: 999, gid: 999 }
    );
    assert!(FileOwner::parse_stat("redis:redis").is_err());
    assert!(FileOwner::parse_stat("").is_err());
    let info = "# Server\r\nredis_version:7.0.15\r\nprocess_id:4242\r\nrun_id:ab\r\n";
    assert_eq!(parse_process_id(info).unwrap(), 4242);
    assert!(parse_process_id("# Server\r\n").is_err());
    // A journal written before the owner was read still loads (owner unknown).
    let old: RedisPersistence = serde_json::from_str(
        r#"{"appendonly":true,"appendfilename":"a.aof","appenddirname":"d","dbfilename":"x.rdb"}"#,
    )
    .unwrap();
    assert_eq!(old.owner, None);
}
