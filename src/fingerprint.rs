//! Fingerprints of the three data stores, so that a step can tell "the target already
//! holds exactly the source's data" (skip) from "it differs" (act), and so that a
//! finished migration can be proven. Each fingerprint is computed on the host by one
//! command whose output is parsed here; parsing is pure and tested as data.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Why an output could not be read as a fingerprint.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("could not read {what} from line {line}: {text:?}")]
pub struct FingerprintParseError {
    pub what: &'static str,
    pub line: usize,
    pub text: String,
}

/// One table: row count and a digest of its rows, independent of physical row order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableFingerprint {
    pub rows: u64,
    pub digest: String,
}

/// Every base table of the `public` schema, and what a dump restores after the rows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PgFingerprint {
    pub tables: BTreeMap<String, TableFingerprint>,
    /// The schema objects a plain dump creates *after* its COPYs (constraints, indexes,
    /// triggers) and the sequences' positions it sets: their count and a digest of their
    /// names. The rows alone cannot tell a complete restore from one cut after its data.
    /// `None` in journals written before it was fingerprinted (such a journal then never
    /// matches, so the step runs again: the safe direction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<TableFingerprint>,
}

/// The name [`PG_FINGERPRINT_SQL`] gives its schema line (no table name lacks a dot).
const SCHEMA_LINE: &str = ":schema";

/// psql script (run with `psql -X -At -v ON_ERROR_STOP=1 -f -` or `-c`) printing one
/// `schema.table|rows|digest` line per base table of `public`.
///
/// The digest is the md5 of the sorted per-row md5s, not of the rows themselves: the
/// aggregate stays 32 bytes a row, far below PostgreSQL's 1 GB value limit even for
/// large tables, and sorting makes it independent of physical order.
pub const PG_FINGERPRINT_SQL: &str = r#"SELECT format(
  'SELECT %L, count(*), md5(coalesce(string_agg(h, '''' ORDER BY h), '''')) FROM (SELECT md5(t::text) AS h FROM %I.%I t) s',
  table_schema || '.' || table_name, table_schema, table_name)
FROM information_schema.tables
WHERE table_schema = 'public' AND table_type = 'BASE TABLE'
ORDER BY table_name
\gexec
SELECT ':schema', count(*), md5(coalesce(string_agg(d, E'\n' ORDER BY d), ''))
FROM (
  SELECT 'constraint ' || coalesce(cl.relname::text, '-') || ' ' || co.conname || ' ' || co.contype::text AS d
    FROM pg_constraint co
    JOIN pg_namespace n ON n.oid = co.connamespace
    LEFT JOIN pg_class cl ON cl.oid = co.conrelid
   WHERE n.nspname = 'public' AND co.contype::text <> 'n'
  UNION ALL
  SELECT 'index ' || tablename || ' ' || indexname
    FROM pg_indexes WHERE schemaname = 'public'
  UNION ALL
  SELECT 'sequence ' || sequencename || ' ' || coalesce(last_value::text, '-')
    FROM pg_sequences WHERE schemaname = 'public'
  UNION ALL
  SELECT 'trigger ' || cl.relname || ' ' || t.tgname
    FROM pg_trigger t
    JOIN pg_class cl ON cl.oid = t.tgrelid
    JOIN pg_namespace n ON n.oid = cl.relnamespace
   WHERE n.nspname = 'public' AND NOT t.tgisinternal
) s;
"#;

impl PgFingerprint {
    /// Parse the output of [`PG_FINGERPRINT_SQL`].
    pub fn parse(out: &str) -> Result<Self, FingerprintParseError> {
        let mut tables = BTreeMap::new();
        let mut schema = None;
        for (i, line) in out.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let err = || FingerprintParseError {
                what: "a table fingerprint",
                line: i + 1,
                text: line.to_string(),
            };
            // From the right: a table name may itself contain `|`.
            let mut parts = line.rsplitn(3, '|');
            let (Some(digest), Some(rows), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(err());
            };
            let rows = rows.parse().map_err(|_| err())?;
            let fingerprint = TableFingerprint {
                rows,
                digest: digest.to_string(),
            };
            if name == SCHEMA_LINE {
                schema = Some(fingerprint);
            } else {
                tables.insert(name.to_string(), fingerprint);
            }
        }
        Ok(PgFingerprint { tables, schema })
    }

    /// Total rows over all tables.
    pub fn rows(&self) -> u64 {
        self.tables.values().map(|t| t.rows).sum()
    }

    /// Human-readable differences from `expected` (empty when equal).
    pub fn diff(&self, expected: &PgFingerprint) -> Vec<String> {
        let mut out = diff_maps(&expected.tables, &self.tables, |name, e, a| {
            if e.rows != a.rows {
                Some(format!(
                    "table {name}: {} rows, expected {}",
                    a.rows, e.rows
                ))
            } else if e.digest != a.digest {
                Some(format!("table {name}: same row count, different content"))
            } else {
                None
            }
        });
        const WHAT: &str = "constraints, indexes, triggers and sequence positions";
        match (&expected.schema, &self.schema) {
            (Some(e), Some(a)) if e.rows != a.rows => out.push(format!(
                "schema: {} {WHAT}, expected {} (a restore cut after its rows?)",
                a.rows, e.rows
            )),
            (Some(e), Some(a)) if e.digest != a.digest => out.push(format!(
                "schema: same number of {WHAT}, different names or values"
            )),
            (Some(_), None) => out.push(format!("schema: {WHAT} not fingerprinted")),
            (None, Some(_)) => out.push(format!(
                "schema: the source's {WHAT} were not fingerprinted (journal of an older ferry)"
            )),
            _ => {}
        }
        out
    }
}

pub use crate::redis_keys::RedisKeyCounts;

/// A tree of files: how many, how large, and a digest of the sorted `sha256  path` list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageFingerprint {
    pub files: u64,
    pub digest: String,
    /// Per-file hashes, kept so a difference can be named.
    #[serde(skip_serializing_if = "BTreeMap::is_empty", default)]
    pub hashes: BTreeMap<String, String>,
}

impl StorageFingerprint {
    /// Parse `sha256sum` lines (`<hex>  ./relative/path`), in any order.
    pub fn parse_sha256sum(out: &str) -> Result<Self, FingerprintParseError> {
        let mut hashes = BTreeMap::new();
        for (i, line) in out.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let err = || FingerprintParseError {
                what: "a sha256sum line",
                line: i + 1,
                text: line.to_string(),
            };
            let (hash, path) = line.split_once("  ").ok_or_else(err)?;
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            let path = path.strip_prefix("./").unwrap_or(path);
            hashes.insert(path.to_string(), hash.to_ascii_lowercase());
        }
        Ok(Self::from_hashes(hashes))
    }

    /// The fingerprint of `path → sha256 hex` (lowercase), e.g. hashed from a stream.
    pub fn from_hashes(hashes: BTreeMap<String, String>) -> Self {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for (path, hash) in &hashes {
            h.update(hash.as_bytes());
            h.update(b"  ");
            h.update(path.as_bytes());
            h.update(b"\n");
        }
        StorageFingerprint {
            files: hashes.len() as u64,
            digest: hex::encode(h.finalize()),
            hashes,
        }
    }

    /// Human-readable differences from `expected` (empty when equal), at most `limit`.
    pub fn diff(&self, expected: &StorageFingerprint, limit: usize) -> Vec<String> {
        let mut out = diff_maps(&expected.hashes, &self.hashes, |p, _, _| {
            Some(format!("{p}: content differs"))
        });
        if out.is_empty() && self.digest != expected.digest {
            out.push(format!(
                "{} files, expected {} (digest differs)",
                self.files, expected.files
            ));
        }
        out.truncate(limit);
        out
    }
}

/// Differences between two maps: keys missing, unexpected keys, and values that
/// `differ` reports. `differ` is only called when both sides hold the key.
fn diff_maps<K: Ord + std::fmt::Display, V: PartialEq>(
    expected: &BTreeMap<K, V>,
    actual: &BTreeMap<K, V>,
    differ: impl Fn(&K, &V, &V) -> Option<String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (k, e) in expected {
        match actual.get(k) {
            None => out.push(format!("{k}: missing")),
            Some(a) if a != e => out.extend(differ(k, e, a)),
            Some(_) => {}
        }
    }
    for k in actual.keys() {
        if !expected.contains_key(k) {
            out.push(format!("{k}: not in the source"));
        }
    }
    out
}

/// A dotted version such as `1.12.10`, compared numerically.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Version(pub Vec<u64>);

impl Version {
    /// Parse `1.12.10`, `v1.12.10`, or the version part of an image reference
    /// (`registry/packagist/ui:1.12.10`, `...:1.12.10-abc`).
    pub fn parse(text: &str) -> Option<Version> {
        let text = text.trim();
        let tag = match text.rsplit_once(':') {
            Some((_, t)) if !t.contains('/') => t,
            _ => text,
        };
        let tag = tag.strip_prefix('v').unwrap_or(tag);
        let core = tag.split(['-', '+']).next()?;
        let parts: Option<Vec<u64>> = core.split('.').map(|p| p.parse().ok()).collect();
        parts.filter(|p| !p.is_empty()).map(Version)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s: Vec<String> = self.0.iter().map(u64::to_string).collect();
        f.write_str(&s.join("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_fingerprint_parses_and_diffs() {
        let src = PgFingerprint::parse("public.orgs|3|abc\npublic.packages|10|def\n").unwrap();
        let odd = PgFingerprint::parse("public.a|b|0|d41d").unwrap();
        assert_eq!(odd.tables["public.a|b"].rows, 0);
        assert_eq!(src.rows(), 13);
        let same = PgFingerprint::parse("public.packages|10|def\npublic.orgs|3|abc").unwrap();
        assert!(same.diff(&src).is_empty());
        let other = PgFingerprint::parse("public.orgs|2|abc\npublic.extra|1|x").unwrap();
        assert_eq!(
            other.diff(&src),
            vec![
                "table public.orgs: 2 rows, expected 3",
                "public.packages: missing",
                "public.extra: not in the source"
            ]
        );
        // The schema line is not a table, and a difference there is named.
        let with_schema = |n: u64, d: &str| {
            PgFingerprint::parse(&format!(
                "public.orgs|3|abc\npublic.packages|10|def\n:schema|{n}|{d}\n"
            ))
            .unwrap()
        };
        let complete = with_schema(7, "s1");
        assert_eq!(complete.tables.len(), 2);
        assert_eq!(complete.rows(), 13);
        assert!(with_schema(7, "s1").diff(&complete).is_empty());
        assert_ne!(
            src, complete,
            "a fingerprint without schema never matches one with"
        );
        let cut = with_schema(0, "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(
            cut.diff(&complete),
            vec![
                "schema: 0 constraints, indexes, triggers and sequence positions, expected 7 (a restore cut after its rows?)"
            ]
        );
        assert_eq!(
            with_schema(7, "s2").diff(&complete),
            vec!["schema: same number of constraints, indexes, triggers and sequence positions, different names or values"]
        );
        assert_eq!(src.diff(&complete).len(), 1);
        assert_eq!(
            PgFingerprint::parse("garbage").unwrap_err().line,
            1,
            "bad lines are errors, not silently dropped"
        );
    }

    #[test]
    fn storage_fingerprint_is_order_independent() {
        let a = format!(
            "{}  ./dist/a.zip\n{}  ./artifact/b\n",
            "a".repeat(64),
            "b".repeat(64)
        );
        let b = format!(
            "{}  artifact/b\n{}  dist/a.zip\n",
            "b".repeat(64),
            "a".repeat(64)
        );
        let fa = StorageFingerprint::parse_sha256sum(&a).unwrap();
        let fb = StorageFingerprint::parse_sha256sum(&b).unwrap();
        assert_eq!(fa.digest, fb.digest);
        assert_eq!(fa.files, 2);
        let c = format!("{}  dist/a.zip\n", "c".repeat(64));
        let fc = StorageFingerprint::parse_sha256sum(&c).unwrap();
        assert_eq!(
            fc.diff(&fa, 10),
            vec!["artifact/b: missing", "dist/a.zip: content differs"]
        );
    }

    #[test]
    fn versions_compare_numerically() {
        let v = |s| Version::parse(s).unwrap();
        assert!(v("1.12.10") > v("1.12.9"));
        assert!(v("registry.example:5000/packagist/ui:1.12.10") >= v("1.12.10"));
        assert!(v("v1.13.0-rc1") > v("1.12.10"));
        assert_eq!(Version::parse("latest"), None);
        assert_eq!(v("1.12.10").to_string(), "1.12.10");
    }
}
