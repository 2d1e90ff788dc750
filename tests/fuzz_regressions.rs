//! Inputs found by fuzzing (`fuzz/run`) and hand-made edge cases, kept so a fixed parser
//! bug stays fixed: every file under `tests/fixtures/fuzz/{inventory,playbook}/`, and
//! the fuzz seeds, go through the same invariant checks as the fuzz targets
//! (`fuzz/check.rs`): no panic, and either a success or an error located at a real
//! `line:column` of the input.

#[path = "../fuzz/check.rs"]
mod check;

use std::path::{Path, PathBuf};

fn files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no inputs in {}", dir.display());
    found
}

/// Runs `check` on every file that is UTF-8 (the binary reads files as UTF-8 text, so
/// other bytes never reach a parser); returns how many ran.
fn run_all(dirs: &[&str], check: impl Fn(&str)) -> usize {
    let mut ran = 0;
    for dir in dirs {
        for path in files(dir) {
            let bytes = std::fs::read(&path).unwrap();
            let Ok(text) = std::str::from_utf8(&bytes) else {
                continue;
            };
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(text)));
            assert!(outcome.is_ok(), "{} broke an invariant", path.display());
            ran += 1;
        }
    }
    ran
}

#[test]
fn inventory_inputs_keep_the_invariants() {
    let ran = run_all(
        &["tests/fixtures/fuzz/inventory", "fuzz/seeds/inventory"],
        |t| {
            let _ = check::check_inventory(t);
        },
    );
    assert!(ran >= 8, "only {ran} inventories checked");
}

#[test]
fn playbook_inputs_keep_the_invariants() {
    let inventory = check::playbook_inventory();
    let ran = run_all(
        &["tests/fixtures/fuzz/playbook", "fuzz/seeds/playbook"],
        |t| check::check_playbook(t, &inventory),
    );
    assert!(ran >= 12, "only {ran} playbooks checked");
}
