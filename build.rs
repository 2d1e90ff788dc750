//! Records the commit ferry is built from for `ferry --version` (FERRY_COMMIT): the short
//! hash, or "unknown commit" outside a git checkout (a crate tarball).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    let commit = match git(&["rev-parse", "--short=7", "HEAD"]) {
        Some(hash) if !hash.is_empty() => format!("commit {hash}"),
        _ => "unknown commit".to_string(),
    };
    println!("cargo:rustc-env=FERRY_COMMIT={commit}");
    // A new commit or a checkout changes HEAD or the ref it points at.
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        println!("cargo:rerun-if-changed={path}");
    }
}
