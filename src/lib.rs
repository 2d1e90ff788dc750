//! ferry: idempotent provisioning over SSH.
//!
//! Data flows one way: files on disk (`inventory`, `playbook`) → typed models → a plan
//! per host (`engine`) → commands (`command`) over a `transport` → facts and results →
//! `journal` and `report`. Nothing imports "upwards" along that chain.

/// ferry's version and the commit it was built from (see build.rs): `--version`, and the
/// JSON report's `ferry`.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("FERRY_COMMIT"), ")");

pub mod cli;
pub mod command;
pub mod engine;
pub mod fingerprint;
pub mod inventory;
pub mod journal;
pub mod k8s;
pub mod module;
pub mod modules;
pub mod packagist;
pub mod playbook;
pub mod redis_keys;
pub mod registry;
pub mod report;
pub mod secrets;
pub mod stream;
pub mod transport;

/// Select rustls's process-wide crypto provider (ring). Two TLS clients share rustls:
/// kube's (ring) and the object store's (which also brings aws-lc-rs); with both
/// providers compiled in, rustls picks none by itself and panics at the first
/// handshake. Called before either client is built; calling it again is harmless.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The user's home directory as OpenSSH and kubectl's users expect it: the passwd
/// entry's (ssh ignores `$HOME`), see the ssh transport's `Local::current`.
pub fn home_dir() -> Option<std::path::PathBuf> {
    Some(transport::ssh::local_home())
}
