//! OpenSSH `known_hosts` files: lookup (plain, wildcard, negated and hashed `|1|salt|hash`
//! host patterns; `[host]:port` names for non-standard ports; `@revoked` and
//! `@cert-authority` markers) over several files, and appending a newly accepted key
//! (plain or hashed, as `HashKnownHosts`).
//!
//! russh ships a known_hosts helper, but it splits on single spaces only, ignores markers
//! and wildcards, and treats a key of another algorithm as "unknown". ssh-key's
//! `known_hosts` module parses markers and hashed names but also splits on single spaces
//! only (a tab-separated line written by hand, or by older tools, fails) and matches no
//! host, so the lines are parsed and matched here. Certificates are checked with ssh-key
//! ([`russh::keys::Certificate::validate`]: CA signature and validity window).
//! This module mirrors OpenSSH's behaviour closely enough that a file written by `ssh` or
//! `ssh-keyscan` works.

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use hmac::{KeyInit, Mac};
use russh::keys::{Algorithm, Certificate, HashAlg, PublicKey};

type HmacSha1 = hmac::Hmac<sha1::Sha1>;

/// The name OpenSSH looks up (and records) for `host` on `port`.
pub(crate) fn host_token(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_ascii_lowercase()
    } else {
        format!("[{}]:{port}", host.to_ascii_lowercase())
    }
}

/// What a known_hosts file says about a server key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostKeyStatus {
    /// The key is recorded for this host.
    Known,
    /// No key at all is recorded for this host.
    Unknown,
    /// A different key of the same algorithm is recorded (line number, 1-based).
    Changed { line: usize },
    /// Only keys of other algorithms are recorded: as OpenSSH, this is a changed
    /// identity, not a new host (first such line, 1-based; the recorded algorithms).
    OtherType { line: usize, known: Vec<String> },
    /// The key is marked `@revoked` (line number, 1-based).
    Revoked { line: usize },
}

/// One usable line of a known_hosts file.
struct Entry {
    line: usize,
    revoked: bool,
    /// `@cert-authority`: the key signs host certificates; it is no host key itself.
    authority: bool,
    key: PublicKey,
}

/// Entries whose host patterns match `token`. A missing file has no entries.
fn matching_entries(path: &Path, token: &str) -> std::io::Result<Vec<Entry>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let mut first = fields.next().unwrap_or_default();
        let mut revoked = false;
        let mut authority = false;
        if let Some(marker) = first.strip_prefix('@') {
            match marker {
                "revoked" => revoked = true,
                "cert-authority" => authority = true,
                _ => continue,
            }
            first = fields.next().unwrap_or_default();
        }
        let (Some(key_type), Some(key_b64)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !patterns_match(first, token) {
            continue;
        }
        match PublicKey::from_openssh(&format!("{key_type} {key_b64}")) {
            Ok(key) => out.push(Entry {
                line: idx + 1,
                revoked,
                authority,
                key,
            }),
            Err(e) => {
                tracing::debug!(
                    "ignoring unparsable key on line {} of {}: {e}",
                    idx + 1,
                    path.display()
                );
            }
        }
    }
    Ok(out)
}

/// Whether a comma-separated host pattern list matches `token`, as OpenSSH does: a negated
/// pattern that matches rejects the line whatever else matches.
fn patterns_match(list: &str, token: &str) -> bool {
    let mut matched = false;
    for pattern in list.split(',') {
        if let Some(hashed) = pattern.strip_prefix("|1|") {
            if hashed_matches(hashed, token) {
                matched = true;
            }
        } else if let Some(negated) = pattern.strip_prefix('!') {
            if glob_match(&negated.to_ascii_lowercase(), token) {
                return false;
            }
        } else if glob_match(&pattern.to_ascii_lowercase(), token) {
            matched = true;
        }
    }
    matched
}

/// `salt|hash` (both base64) of a hashed entry against `token`.
fn hashed_matches(salt_and_hash: &str, token: &str) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let Some((salt, hash)) = salt_and_hash.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (b64.decode(salt), b64.decode(hash)) else {
        return false;
    };
    let Ok(mut mac) = HmacSha1::new_from_slice(&salt) else {
        return false;
    };
    mac.update(token.as_bytes());
    mac.verify_slice(&hash).is_ok()
}

/// OpenSSH wildcard matching: `*` any run of characters, `?` exactly one.
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == '?' || Some(&c) == t.get(ti) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p.get(pi..)
        .is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

/// Check `key` presented by `host:port` against the file at `path`.
pub(crate) fn check(
    path: &Path,
    host: &str,
    port: u16,
    key: &PublicKey,
) -> std::io::Result<HostKeyStatus> {
    let token = host_token(host, port);
    let mut entries = matching_entries(path, &token)?;
    entries.retain(|e| !e.authority);
    if let Some(e) = entries
        .iter()
        .find(|e| e.revoked && e.key.key_data() == key.key_data())
    {
        return Ok(HostKeyStatus::Revoked { line: e.line });
    }
    if entries
        .iter()
        .any(|e| !e.revoked && e.key.key_data() == key.key_data())
    {
        return Ok(HostKeyStatus::Known);
    }
    if let Some(e) = entries
        .iter()
        .find(|e| !e.revoked && e.key.algorithm() == key.algorithm())
    {
        return Ok(HostKeyStatus::Changed { line: e.line });
    }
    // A host with any recorded key must present one of them: a server that suddenly
    // shows a key of another type is as suspect as one that shows another key.
    let others: Vec<&Entry> = entries.iter().filter(|e| !e.revoked).collect();
    if let Some(first) = others.first() {
        let mut known: Vec<String> = Vec::new();
        for e in &others {
            let name = e.key.algorithm().to_string();
            if !known.contains(&name) {
                known.push(name);
            }
        }
        return Ok(HostKeyStatus::OtherType {
            line: first.line,
            known,
        });
    }
    Ok(HostKeyStatus::Unknown)
}

/// [`check`] over several files (UserKnownHostsFile then GlobalKnownHostsFile), as ssh
/// reads them together: a key revoked in any file is revoked, a key recorded in any file is
/// known; otherwise the first file that records other keys for the host says how. The
/// file the status comes from is returned with it.
pub(crate) fn check_all(
    paths: &[PathBuf],
    host: &str,
    port: u16,
    key: &PublicKey,
) -> std::io::Result<(HostKeyStatus, Option<PathBuf>)> {
    let mut statuses = Vec::new();
    for path in paths {
        statuses.push((check(path, host, port, key)?, path.clone()));
    }
    if let Some((s, p)) = statuses
        .iter()
        .find(|(s, _)| matches!(s, HostKeyStatus::Revoked { .. }))
    {
        return Ok((s.clone(), Some(p.clone())));
    }
    if let Some((s, p)) = statuses.iter().find(|(s, _)| *s == HostKeyStatus::Known) {
        return Ok((s.clone(), Some(p.clone())));
    }
    match statuses
        .into_iter()
        .find(|(s, _)| *s != HostKeyStatus::Unknown)
    {
        Some((s, p)) => Ok((s, Some(p))),
        None => Ok((HostKeyStatus::Unknown, None)),
    }
}

/// What the `@cert-authority` and `@revoked` lines say about a host certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CertStatus {
    /// Signed by an authority recorded for the host, a host certificate naming the host
    /// (or every host: no principals), valid now.
    Trusted,
    /// The certificate's key or its CA is `@revoked` (file, line).
    Revoked { path: PathBuf, line: usize },
    /// No authority for the host signed it, or the certificate is not valid for the host:
    /// as ssh, the caller falls back to checking the certificate's plain key.
    NotTrusted(String),
}

/// Check host certificate `cert` presented by `host:port` against `paths`, as ssh's
/// `check_host_key` with a certificate: revocation of the key or its CA first, then an
/// `@cert-authority` line matching the host whose key signed it, then
/// `sshkey_cert_check_host` (host type, principal, validity). `host` is the principal
/// looked for (OpenSSH uses the host name without the port).
pub(crate) fn check_certificate(
    paths: &[PathBuf],
    host: &str,
    port: u16,
    cert: &Certificate,
) -> std::io::Result<CertStatus> {
    let token = host_token(host, port);
    let mut authorities = Vec::new();
    for path in paths {
        for e in matching_entries(path, &token)? {
            if e.revoked
                && (e.key.key_data() == cert.public_key()
                    || e.key.key_data() == cert.signature_key())
            {
                return Ok(CertStatus::Revoked {
                    path: path.clone(),
                    line: e.line,
                });
            }
            if e.authority && e.key.key_data() == cert.signature_key() {
                authorities.push(e.key.fingerprint(HashAlg::Sha256));
            }
        }
    }
    if authorities.is_empty() {
        return Ok(CertStatus::NotTrusted(format!(
            "no @cert-authority line for {token} names the certificate's CA {}",
            cert.signature_key().fingerprint(HashAlg::Sha256)
        )));
    }
    if cert.cert_type() != russh::keys::ssh_key::certificate::CertType::Host {
        return Ok(CertStatus::NotTrusted(
            "the server presented a user certificate as its host key".into(),
        ));
    }
    // ssh-keygen: "By default, generated certificates are valid for all users or hosts".
    let principals = cert.valid_principals();
    if !principals.is_empty() && !principals.iter().any(|p| p.eq_ignore_ascii_case(host)) {
        return Ok(CertStatus::NotTrusted(format!(
            "the host certificate is for {} and not {host}",
            principals.join(", ")
        )));
    }
    if let Err(e) = cert.validate(authorities.iter()) {
        return Ok(CertStatus::NotTrusted(format!(
            "the host certificate does not validate (signature or validity period): {e}"
        )));
    }
    Ok(CertStatus::Trusted)
}

/// Algorithms of the keys recorded for `host:port`, so the client can ask the server for a
/// key it can verify (as OpenSSH orders `HostKeyAlgorithms`).
pub(crate) fn known_algorithms(path: &Path, host: &str, port: u16) -> Vec<Algorithm> {
    let token = host_token(host, port);
    let mut algs: Vec<Algorithm> = Vec::new();
    for e in matching_entries(path, &token).unwrap_or_default() {
        let alg = e.key.algorithm();
        if !e.revoked && !e.authority && !algs.contains(&alg) {
            algs.push(alg);
        }
    }
    algs
}

/// Whether any of `paths` has an `@cert-authority` line for `host:port` (the client then
/// asks for host certificates first).
pub(crate) fn has_authority(paths: &[PathBuf], host: &str, port: u16) -> bool {
    let token = host_token(host, port);
    paths.iter().any(|p| {
        matching_entries(p, &token)
            .unwrap_or_default()
            .iter()
            .any(|e| e.authority)
    })
}

/// `|1|salt|hash` for `token` with a fresh 20-byte salt (ssh's `host_hash`).
fn hash_token(token: &str) -> std::io::Result<String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut salt = [0u8; 20];
    getrandom::getrandom(&mut salt).map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut mac =
        HmacSha1::new_from_slice(&salt).map_err(|e| std::io::Error::other(e.to_string()))?;
    mac.update(token.as_bytes());
    let hash = mac.finalize().into_bytes();
    Ok(format!("|1|{}|{}", b64.encode(salt), b64.encode(hash)))
}

/// Append `host:port key` to the file at `path` (creating it and its directory); the
/// name hashed when `hashed` (`HashKnownHosts yes`).
pub(crate) fn append(
    path: &Path,
    host: &str,
    port: u16,
    key: &PublicKey,
    hashed: bool,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            // Like ~/.ssh made by OpenSSH: private to the user.
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    let needs_newline = match std::fs::read(path) {
        Ok(bytes) => !bytes.is_empty() && bytes.last() != Some(&b'\n'),
        Err(_) => false,
    };
    let mut plain = key.clone();
    plain.set_comment("");
    let encoded = plain
        .to_openssh()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let mut line = String::new();
    if needs_newline {
        line.push('\n');
    }
    let token = host_token(host, port);
    if hashed {
        line.push_str(&hash_token(&token)?);
    } else {
        line.push_str(&token);
    }
    line.push(' ');
    line.push_str(encoded.trim());
    line.push('\n');
    file.write_all(line.as_bytes())?;
    file.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILIG2T/B0l0gaqj3puu510tu9N1OkQ4znY3LYuEm5zCF";

    fn key(s: &str) -> PublicKey {
        PublicKey::from_openssh(s).unwrap()
    }

    fn hashed(token: &str, salt: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut mac = HmacSha1::new_from_slice(salt).unwrap();
        mac.update(token.as_bytes());
        let hash = mac.finalize().into_bytes();
        format!("|1|{}|{}", b64.encode(salt), b64.encode(hash))
    }

    #[test]
    fn tokens_use_brackets_for_other_ports() {
        assert_eq!(host_token("Example.COM", 22), "example.com");
        assert_eq!(host_token("127.0.0.1", 2222), "[127.0.0.1]:2222");
    }

    #[test]
    fn globs_and_negation() {
        assert!(glob_match("*.example.com", "a.example.com"));
        assert!(glob_match("[10.0.0.?]:22*", "[10.0.0.5]:2222"));
        assert!(!glob_match("*.example.com", "example.org"));
        assert!(patterns_match(
            "*.example.com,!bad.example.com",
            "ok.example.com"
        ));
        assert!(!patterns_match(
            "*.example.com,!bad.example.com",
            "bad.example.com"
        ));
    }

    #[test]
    fn plain_hashed_port_changed_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        let hashed_entry = hashed("[10.1.1.1]:2200", b"0123456789abcdefghij");
        std::fs::write(
            &path,
            format!(
                "# comment\n\
                 [127.0.0.1]:2222\t{KEY_A}\n\
                 {hashed_entry} {KEY_B}\n\
                 other.host {KEY_B}\n\
                 @revoked revoked.host {KEY_A}\n\
                 @cert-authority *.ca.host {KEY_A}\n"
            ),
        )
        .unwrap();
        for (host, port, shown, want) in [
            ("127.0.0.1", 2222, KEY_A, HostKeyStatus::Known),
            ("127.0.0.1", 2222, KEY_B, HostKeyStatus::Changed { line: 2 }),
            ("127.0.0.1", 22, KEY_A, HostKeyStatus::Unknown),
            ("10.1.1.1", 2200, KEY_B, HostKeyStatus::Known),
            ("10.1.1.1", 2201, KEY_B, HostKeyStatus::Unknown),
            (
                "revoked.host",
                22,
                KEY_A,
                HostKeyStatus::Revoked { line: 5 },
            ),
            ("x.ca.host", 22, KEY_A, HostKeyStatus::Unknown),
        ] {
            assert_eq!(
                check(&path, host, port, &key(shown)).unwrap(),
                want,
                "{host}:{port} showing {shown}"
            );
        }
        assert_eq!(
            known_algorithms(&path, "127.0.0.1", 2222),
            vec![Algorithm::Ed25519]
        );
    }

    const KEY_RSA: &str =
        "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC3hCT/iBxNtqr0V3byiSzb/q4zZWTQs0RFC1+skD97Yauj2JH5jyaNSrSq3ZPLplD9tWrIsbcIuSpiq3HI0P7fXCURnppTDEXg/uZYKBaNwQguqI0f+dsGnOih2Ay/iMj+wAv4axzTFDon7R+4DYFMCE1Dn8tre7UJShusLia18CqBFAwH7xrtqfcAFUforbkzO3j/4YqXbeOJyCtVi9NbYmZlt6K16Tri6mDBU5qepktFFPtvrrjh38XVi93o0+GTOfyv1qmDjbxx2iglRrz7+icUW1hPu1IvJkvONZFbbDrtJW0jFs4iz6QJy7G+IEMsr8HikSDIOAWTMA3oYgPD";

    #[test]
    fn a_key_of_another_type_is_a_changed_identity_and_revoked_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        std::fs::write(
            &path,
            format!(
                "[h]:2222 {KEY_A}\n\
                 @revoked [r]:2222 {KEY_B}\n\
                 [r]:2222 {KEY_A}\n"
            ),
        )
        .unwrap();
        // ed25519 recorded, the server shows RSA: not a new host.
        assert_eq!(
            check(&path, "h", 2222, &key(KEY_RSA)).unwrap(),
            HostKeyStatus::OtherType {
                line: 1,
                known: vec!["ssh-ed25519".into()]
            }
        );
        // A revoked key is reported as revoked, even though another key is recorded.
        assert_eq!(
            check(&path, "r", 2222, &key(KEY_B)).unwrap(),
            HostKeyStatus::Revoked { line: 2 }
        );
        // Only revoked keys recorded: a new key of another type is unknown, not changed.
        std::fs::write(&path, format!("@revoked [o]:2222 {KEY_A}\n")).unwrap();
        assert_eq!(
            check(&path, "o", 2222, &key(KEY_RSA)).unwrap(),
            HostKeyStatus::Unknown
        );
    }

    #[test]
    fn several_files_revoked_anywhere_known_anywhere() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&a, format!("h {KEY_B}\n")).unwrap();
        std::fs::write(&b, format!("h {KEY_A}\n@revoked r {KEY_A}\n")).unwrap();
        let both = [a.clone(), b.clone(), dir.path().join("absent")];
        assert_eq!(
            check_all(&both, "h", 22, &key(KEY_A)).unwrap(),
            (HostKeyStatus::Known, Some(b.clone()))
        );
        assert_eq!(
            check_all(&both, "r", 22, &key(KEY_A)).unwrap(),
            (HostKeyStatus::Revoked { line: 2 }, Some(b))
        );
        assert_eq!(
            check_all(&both[..1], "h", 22, &key(KEY_A)).unwrap(),
            (HostKeyStatus::Changed { line: 1 }, Some(a))
        );
        assert_eq!(
            check_all(&both, "new", 22, &key(KEY_A)).unwrap(),
            (HostKeyStatus::Unknown, None)
        );
    }

    #[test]
    fn append_then_known() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/known_hosts");
        append(&path, "h", 2022, &key(KEY_A), false).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"x.host ssh-ed25519 AAAA")
            .unwrap();
        append(&path, "h2", 22, &key(KEY_B), false).unwrap();
        append(&path, "h3", 2200, &key(KEY_B), true).unwrap();
        assert_eq!(
            check(&path, "h", 2022, &key(KEY_A)).unwrap(),
            HostKeyStatus::Known
        );
        assert_eq!(
            check(&path, "h2", 22, &key(KEY_B)).unwrap(),
            HostKeyStatus::Known
        );
        assert_eq!(
            check(&path, "h3", 2200, &key(KEY_B)).unwrap(),
            HostKeyStatus::Known
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("[h]:2022 ssh-ed25519 AAAA"), "{text}");
        let last = text.lines().last().unwrap();
        assert!(last.starts_with("|1|") && !last.contains("h3"), "{text}");
    }
}
