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
    let s = node_script("/var/openebs/local/pvc-1", &staged, &restore_plan(&p));
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
    let out = sh(&node_script(&d, &staged, &restore_plan(&p)));
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
