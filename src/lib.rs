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
/// entry of the effective uid (ssh ignores `$HOME`: under `sudo -E` or a stale
/// environment `$HOME` may name another user's home), else `$HOME`. libc's getpwuid
/// would need `unsafe` (or `nix`); the passwd file is what it reads on the hosts ferry
/// runs from, and NSS-only users (LDAP) fall back to `$HOME`.
pub fn home_dir() -> Option<std::path::PathBuf> {
    let uid = rustix::process::geteuid().as_raw();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    home_in_passwd(&passwd, uid).or_else(dirs::home_dir)
}

/// The home field of `uid`'s line in a passwd file.
fn home_in_passwd(passwd: &str, uid: u32) -> Option<std::path::PathBuf> {
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.as_slice() {
            [_, _, id, _, _, home, ..] if id.parse() == Ok(uid) && !home.is_empty() => {
                Some(std::path::PathBuf::from(home))
            }
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn home_comes_from_the_passwd_line_of_the_uid() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      # a comment\n\
                      op:x:1000:1000:Op,,,:/home/op:/bin/zsh\n\
                      nohome:x:1001:1001::::\n";
        assert_eq!(super::home_in_passwd(passwd, 1000), Some("/home/op".into()));
        assert_eq!(super::home_in_passwd(passwd, 0), Some("/root".into()));
        assert_eq!(super::home_in_passwd(passwd, 1001), None);
        assert_eq!(super::home_in_passwd(passwd, 7), None);
    }
}
