use std::collections::BTreeMap;
use std::io::Read;

use sha2::{Digest, Sha256};

use super::*;

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[tokio::test]
async fn one_pass_gives_a_valid_gzip_and_the_files_hashes() {
    let big: Vec<u8> = (0..3 * crate::stream::CHUNK + 5)
        .map(|i| (i % 253) as u8)
        .collect();
    let long = format!("dist/{}/pkg.zip", "x".repeat(150));
    let tar = tar_of(&[
        ("dist/acme/a.zip", b"aaa"),
        (&long, &big),
        ("artifact/1/upload.zip", b""),
    ]);
    let mut src = &tar[..];
    let mut out = Vec::new();
    let p = pump_tar_as_gzip(&mut src, &mut out, None::<&mut Vec<u8>>, |_| {})
        .await
        .unwrap();
    assert_eq!(p.tar_bytes, tar.len() as u64);
    assert_eq!(p.bytes, out.len() as u64);
    assert_eq!(p.sha256, hex::encode(Sha256::digest(&out)));
    // What the pod gets unpacks to the same tar.
    let mut unpacked = Vec::new();
    flate2::read::GzDecoder::new(&out[..])
        .read_to_end(&mut unpacked)
        .unwrap();
    assert_eq!(unpacked, tar);
    // Hashes under the storage's own names, as the pod's sha256sum lists them.
    let expected = StorageFingerprint::parse_sha256sum(&format!(
        "{}  ./composer/acme/a.zip\n{}  ./composer/{}/pkg.zip\n{}  ./artifacts/1/upload.zip\n",
        hex::encode(Sha256::digest(b"aaa")),
        hex::encode(Sha256::digest(&big)),
        "x".repeat(150),
        hex::encode(Sha256::digest(b"")),
    ))
    .unwrap();
    assert_eq!(p.fingerprint, expected);
}

#[tokio::test]
async fn a_broken_tar_is_an_error_not_a_hang() {
    let mut tar = tar_of(&[("dist/a.zip", b"aaa")]);
    tar[100] ^= 0xff; // header checksum no longer matches
    let mut src = &tar[..];
    let mut out = Vec::new();
    let e = pump_tar_as_gzip(&mut src, &mut out, None::<&mut Vec<u8>>, |_| {})
        .await
        .unwrap_err();
    assert!(matches!(e, TarStreamError::Archive(_)), "{e}");
}

fn facts() -> StorageStreamFacts {
    StorageStreamFacts {
        source_host: "old".into(),
        data_dir: "/data/packagist".into(),
        target: crate::packagist::import_target::ImportTarget {
            namespace: "default".into(),
            pod: Some("ui-abc".into()),
            container: "ui".into(),
            archive: "/data/packagist/.a.tar.gz".into(),
            verify_dir: Some("/data/packagist".into()),
            bucket: None,
            staging_free: None,
        },
        tree: parse_listing("f\t3\t1.0\tcomposer/a.zip\n"),
        recorded: None,
        current: None,
        guard: None,
    }
}

/// The pod's files as `facts` reads them, by digest only.
fn pod_files(digest: &str) -> StorageFingerprint {
    StorageFingerprint {
        files: 1,
        digest: digest.into(),
        hashes: BTreeMap::new(),
    }
}

fn streamed(f: &StorageStreamFacts, digest: &str) -> StreamedRecord {
    StreamedRecord {
        tree_stamp: f.tree.stamp.clone(),
        digest: digest.into(),
        files: 1,
    }
}

#[test]
fn first_run_streams_imports_and_cleans_up() {
    let c = decide(&facts()).unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].files, 1);
    let cmds = c[0].commands();
    assert!(
        cmds[0]
            .starts_with("ssh old cd /data/packagist && mkdir -p composer artifacts && tar -cf -"),
        "{cmds:?}"
    );
    assert!(
        cmds[0].contains("tee /data/packagist/.ferry/.a.tar.gz.part | sha256sum"),
        "{cmds:?}"
    );
    assert!(
        cmds[1].ends_with("migrate-storage import /data/packagist/.a.tar.gz"),
        "{cmds:?}"
    );
    assert!(
        cmds[2].ends_with("rm /data/packagist/.a.tar.gz"),
        "{cmds:?}"
    );
}

/// With an unchanged source, what the import left (`current`) decides: the same files
/// are ok; other files (changed, or a half-done import) or unreadable ones import again.
fn assert_the_imported_files_decide(mut f: StorageStreamFacts) -> StorageStreamFacts {
    f.recorded = Some(streamed(&f, "d1"));
    f.current = Some(pod_files("d1"));
    assert!(decide(&f).unwrap().is_empty());
    f.current.as_mut().unwrap().digest = "d2".into();
    assert_eq!(decide(&f).unwrap().len(), 1);
    f.current = None;
    assert_eq!(decide(&f).unwrap().len(), 1);
    f
}

#[test]
fn rerun_with_unchanged_source_and_same_files_is_ok() {
    let mut f = assert_the_imported_files_decide(facts());
    // Without a directory to check, the journal record decides.
    f.target.verify_dir = None;
    assert!(decide(&f).unwrap().is_empty());
}

/// A staging path without room for the archive fails before anything is sent, naming
/// the pod, the path, what is needed and what is free.
#[test]
fn a_full_staging_path_fails_before_streaming() {
    let mut f = facts();
    f.target.staging_free = Some(f.tree.tar_bytes - 1);
    let e = decide(&f).unwrap_err().to_string();
    assert!(e.contains("pod ui-abc"), "{e}");
    assert!(e.contains("/data/packagist has"), "{e}");
    assert!(
        e.contains(&format!("needs about {}", f.tree.tar_bytes)),
        "{e}"
    );
    f.target.staging_free = Some(f.tree.tar_bytes);
    assert_eq!(decide(&f).unwrap().len(), 1);
}

/// With the object store, the bucket's contents decide as the pod's files do.
#[test]
fn rerun_against_an_object_store_checks_the_bucket() {
    let mut f = facts();
    f.target.verify_dir = None;
    f.target.bucket = Some(crate::packagist::blob_store::testbed_target());
    // The bucket's objects decide: one missing since, or unreadable, imports again.
    assert_the_imported_files_decide(f);
}

#[test]
fn changed_source_streams_again() {
    let mut f = facts();
    f.recorded = Some(streamed(&f, "d1"));
    f.current = Some(pod_files("d1"));
    f.tree = parse_listing("f\t4\t2.0\tcomposer/a.zip\n");
    assert_eq!(decide(&f).unwrap().len(), 1);
}

#[test]
fn completed_migration_is_left_alone_and_missing_pod_is_clear() {
    let mut f = facts();
    f.guard = Some("the migration already completed".into());
    f.target.pod = None;
    assert!(decide(&f).unwrap().is_empty());
    f.guard = None;
    let e = decide(&f).unwrap_err().to_string();
    assert!(e.contains("scale it to 1"), "{e}");
}

#[test]
fn member_paths_map_back_to_storage_paths() {
    assert_eq!(source_path("dist/a/b.zip"), "composer/a/b.zip");
    assert_eq!(source_path("./artifact/x"), "artifacts/x");
    assert_eq!(source_path("distant/x"), "distant/x");
}

#[test]
fn listing_gives_stamp_count_and_tar_size() {
    let t = parse_listing(
        "d\t4096\t1.0\tcomposer\nf\t3\t1.0\tcomposer/a.zip\nf\t513\t1.0\tcomposer/b.zip\n",
    );
    assert_eq!(t.files, 2);
    // 3 headers + 512 + 1024 of data + 1024 end = 4096 → one 10240 record.
    assert_eq!(t.tar_bytes, 10240);
    assert_ne!(parse_listing("f\t3\t2.0\tcomposer/a.zip\n").stamp, t.stamp);
}

/// A resumed pump regenerates the archive, checks the kept prefix and writes only the
/// rest: kept part + what it writes = the archive a fresh pump makes, byte for byte.
#[tokio::test]
async fn a_resumed_pump_writes_only_what_follows_the_kept_prefix() {
    let big: Vec<u8> = (0..200_000).map(|i| (i % 241) as u8).collect();
    let tar = tar_of(&[("dist/a.zip", &big), ("artifact/b", b"bbb")]);
    let mut whole = Vec::new();
    let fresh = pump_tar_as_gzip(&mut &tar[..], &mut whole, None::<&mut Vec<u8>>, |_| {})
        .await
        .unwrap();
    for cut in [1usize, 10, 70_000, whole.len() - 1] {
        let kept = KeptPrefix {
            bytes: cut as u64,
            sha256: hex::encode(Sha256::digest(&whole[..cut])),
        };
        let mut rest = Vec::new();
        let mut copy = Vec::new();
        let p = pump_tar_as_gzip_after(
            &mut &tar[..],
            &mut rest,
            Some(&mut copy),
            |_| {},
            Some(&kept),
        )
        .await
        .unwrap();
        assert_eq!(rest, whole[cut..], "cut at {cut}");
        assert_eq!(copy, whole, "the laptop's copy is whole");
        assert_eq!((p.bytes, &p.sha256), (fresh.bytes, &fresh.sha256));
        assert_eq!(p.sent_sha256, hex::encode(Sha256::digest(&rest)));
        assert_eq!(p.fingerprint, fresh.fingerprint);
    }
    // A kept part that is not this archive's beginning: nothing is written.
    let mut other = whole[..1000].to_vec();
    other[500] ^= 1;
    let kept = KeptPrefix {
        bytes: 1000,
        sha256: hex::encode(Sha256::digest(&other)),
    };
    let mut rest = Vec::new();
    let e = pump_tar_as_gzip_after(
        &mut &tar[..],
        &mut rest,
        None::<&mut Vec<u8>>,
        |_| {},
        Some(&kept),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, TarStreamError::PrefixMismatch { .. }), "{e}");
    assert!(rest.is_empty());
    // Longer than the archive now is: a mismatch too.
    let kept = KeptPrefix {
        bytes: whole.len() as u64 + 1,
        sha256: "x".into(),
    };
    let e = pump_tar_as_gzip_after(
        &mut &tar[..],
        &mut Vec::new(),
        None::<&mut Vec<u8>>,
        |_| {},
        Some(&kept),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("do not exist"), "{e}");
}

/// The source's tar, run for real twice over the same tree: the same bytes (names sorted,
/// so a resumed stream can regenerate what the far end kept).
#[test]
fn the_source_tar_is_the_same_every_time() {
    let dir = tempfile::tempdir().unwrap();
    for (i, name) in [
        "composer/z.zip",
        "composer/a/b.zip",
        "artifacts/m",
        "composer/c.zip",
    ]
    .iter()
    .enumerate()
    {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, vec![i as u8; 1000 + i]).unwrap();
    }
    let cmd = source_tar_cmd(dir.path().to_str().unwrap());
    assert!(
        cmd.display().contains("&& tar -cf - --transform"),
        "{}",
        cmd.display()
    );
    let run = || crate::module::testing::run_sh(&cmd).unwrap();
    let (one, two) = (run(), run());
    assert!(one.status.success(), "{one:?}");
    assert_eq!(one.stdout, two.stdout);
    let names: Vec<String> = tar::Archive::new(&one.stdout[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    // The two dirs in the vendor's order, each one's names sorted.
    for dir in ["dist/", "artifact/"] {
        let inside: Vec<&String> = names.iter().filter(|n| n.starts_with(dir)).collect();
        let mut sorted = inside.clone();
        sorted.sort();
        assert_eq!(inside, sorted, "names in sorted order: {names:?}");
    }
    assert_eq!(names[0], "dist/");
}
