//! Unit tests of `preflight`'s parsing helpers.

use super::probe::{parse_used_memory, DF_SCRIPT};
use super::*;
use crate::module::units::human;

#[test]
fn df_output_parses_with_nearest_parent() {
    let out = "/var\nFilesystem     1-blocks      Used Available Capacity Mounted on\n\
               /dev/sda1 100000 40000 60000 40% /var lib\n";
    let d = parse_df("/var/openebs/local", out).unwrap();
    assert_eq!(d.existing, "/var");
    assert_eq!(d.available, 60000);
    assert_eq!(d.mount, "/var lib");
    assert!(parse_df("/x", "/x\n").is_err());
}

#[test]
fn df_script_finds_the_nearest_existing_parent_with_a_real_shell() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("not yet/created dir/x");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(DF_SCRIPT)
        .arg("ferry-df")
        .arg(&missing)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let d = parse_df("p", &String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(d.existing, dir.path().to_string_lossy());
    assert!(d.available > 0);
}

#[test]
fn used_memory_and_human_sizes() {
    assert_eq!(
        parse_used_memory("# Memory\r\nused_memory:1234\r\nused_memory_human:1K\r\n"),
        Some(1234)
    );
    assert_eq!(human(512), "512 B");
    assert_eq!(human(3 << 20), "3.0 MiB");
}
