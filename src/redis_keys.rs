//! Keys per Redis database, and how a backup's counts are compared with a Redis read
//! later when some keys have a TTL.
//!
//! Keys with a TTL expire between the backup and its load on the target (Redis drops the
//! ones already past their deadline when it loads the RDB), so exact per-database counts
//! can differ honestly. The comparison is therefore split: keys without a TTL must match
//! exactly; keys with one may only be fewer than the backup had, and no fewer than the
//! backup's TTL census says are still alive. The census is a histogram of the backup's
//! remaining TTLs in powers of two, taken on the old side when the keys were counted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::fingerprint::FingerprintParseError;

/// Keys per Redis database number (databases without keys are absent), and of them how
/// many have a TTL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisKeyCounts {
    pub dbs: BTreeMap<u32, u64>,
    /// Keys with a TTL per database (`expires=` of INFO keyspace; absent: none, or a
    /// journal of an older ferry, which compared totals exactly).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub volatile: BTreeMap<u32, u64>,
    /// When the keys were counted, what their TTLs were (the backup side only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub census: Option<TtlCensus>,
}

/// Remaining TTLs at `counted_at` (unix seconds, the laptop's clock): per database,
/// bucket `b` → how many keys had `2^b - 1 ≤ ttl seconds < 2^(b+1) - 1`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtlCensus {
    pub counted_at: u64,
    pub buckets: BTreeMap<u32, BTreeMap<u32, u64>>,
}

/// Seconds of slack for clocks and rounding: a key whose TTL ends this close to the
/// check may be gone.
const SLACK_SECS: u64 = 2;

/// A Lua script (for `redis-cli -n DB EVAL SCRIPT 0`) that scans the database and returns
/// its TTL histogram as flat `bucket count` pairs, bucket = floor(log2(ttl_secs + 1)).
/// It only reads.
pub const TTL_CENSUS_LUA: &str = "local h = {} local c = '0' repeat \
local r = redis.call('SCAN', c, 'COUNT', 1000) c = r[1] \
for _, k in ipairs(r[2]) do local ms = redis.call('PTTL', k) \
if ms >= 0 then local s = math.floor(ms / 1000) local b = 0 \
while 2 ^ (b + 1) - 1 <= s do b = b + 1 end h[b] = (h[b] or 0) + 1 end end \
until c == '0' local out = {} for b, n in pairs(h) do out[#out + 1] = b out[#out + 1] = n end \
return out";

impl RedisKeyCounts {
    /// Parse `redis-cli INFO keyspace` (`db0:keys=12,expires=3,avg_ttl=0`).
    pub fn parse_info_keyspace(out: &str) -> Result<Self, FingerprintParseError> {
        let mut counts = RedisKeyCounts::default();
        for (i, line) in out.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = || FingerprintParseError {
                what: "a keyspace line",
                line: i + 1,
                text: line.to_string(),
            };
            let (db, fields) = line.split_once(':').ok_or_else(err)?;
            let db: u32 = db
                .strip_prefix("db")
                .and_then(|n| n.parse().ok())
                .ok_or_else(err)?;
            let field = |name: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(name))
                    .map(|n| n.parse::<u64>().map_err(|_| err()))
            };
            let keys = field("keys=").ok_or_else(err)??;
            let expires = field("expires=").transpose()?.unwrap_or(0);
            if keys > 0 {
                counts.dbs.insert(db, keys);
            }
            if expires > 0 {
                counts.volatile.insert(db, expires);
            }
        }
        Ok(counts)
    }

    pub fn total(&self) -> u64 {
        self.dbs.values().sum()
    }

    /// Keys without a TTL in `db`.
    pub fn persistent(&self, db: u32) -> u64 {
        let all = self.dbs.get(&db).copied().unwrap_or(0);
        all.saturating_sub(self.volatile.get(&db).copied().unwrap_or(0))
    }

    /// These counts with database `db` emptied (what the target holds after the
    /// Composer cache, database 5, was flushed).
    pub fn without_db(&self, db: u32) -> Self {
        let mut out = self.clone();
        out.dbs.remove(&db);
        out.volatile.remove(&db);
        if let Some(c) = &mut out.census {
            c.buckets.remove(&db);
        }
        out
    }

    /// Keys with a TTL in `db` that surely still live at `now` (unix seconds): those
    /// whose bucket's shortest TTL outlasts the time since the census. Without a census
    /// (it could not be taken), none can be promised.
    pub fn surely_alive(&self, db: u32, now: u64) -> u64 {
        let Some(census) = &self.census else { return 0 };
        let elapsed = now.saturating_sub(census.counted_at) + SLACK_SECS;
        census
            .buckets
            .get(&db)
            .into_iter()
            .flatten()
            .filter(|(b, _)| (1u64 << (**b).min(62)) - 1 > elapsed)
            .map(|(_, n)| *n)
            .sum()
    }

    /// Human-readable differences from `expected` (a backup's counts) of a Redis read at
    /// `now` (unix seconds); empty when it holds what the backup holds. Keys without a
    /// TTL must match exactly; keys with one may have expired since, but only as many
    /// as the census allows. Counts recorded without TTL information compare totally.
    pub fn diff_at(&self, expected: &RedisKeyCounts, now: u64) -> Vec<String> {
        let dbs: std::collections::BTreeSet<u32> = expected
            .dbs
            .keys()
            .chain(self.dbs.keys())
            .copied()
            .collect();
        let mut out = Vec::new();
        for db in dbs {
            let (e_all, a_all) = (
                expected.dbs.get(&db).copied().unwrap_or(0),
                self.dbs.get(&db).copied().unwrap_or(0),
            );
            if expected.volatile.is_empty() && expected.census.is_none() {
                if e_all != a_all {
                    out.push(format!("db {db}: {a_all} keys, expected {e_all}"));
                }
                continue;
            }
            let (e_persistent, a_persistent) = (expected.persistent(db), self.persistent(db));
            if e_persistent != a_persistent {
                out.push(format!(
                    "db {db}: {a_persistent} keys without a TTL, expected {e_persistent}"
                ));
            }
            let e_volatile = expected.volatile.get(&db).copied().unwrap_or(0);
            let a_volatile = self.volatile.get(&db).copied().unwrap_or(0);
            let alive = expected.surely_alive(db, now).min(e_volatile);
            if a_volatile > e_volatile {
                out.push(format!(
                    "db {db}: {a_volatile} keys with a TTL, more than the {e_volatile} backed up"
                ));
            } else if a_volatile < alive {
                out.push(format!(
                    "db {db}: {a_volatile} keys with a TTL, expected at least {alive} of the \
                     {e_volatile} backed up (the others may have expired since)"
                ));
            }
        }
        out
    }

    /// Record `histogram` (the output of [`TTL_CENSUS_LUA`] for `db`) in the census
    /// taken at `counted_at`.
    pub fn add_census(
        &mut self,
        db: u32,
        counted_at: u64,
        histogram: &str,
    ) -> Result<(), FingerprintParseError> {
        let numbers: Vec<u64> = histogram
            .split_whitespace()
            .enumerate()
            .map(|(i, w)| {
                w.parse().map_err(|_| FingerprintParseError {
                    what: "a TTL census number",
                    line: i + 1,
                    text: w.to_string(),
                })
            })
            .collect::<Result<_, _>>()?;
        if !numbers.len().is_multiple_of(2) {
            return Err(FingerprintParseError {
                what: "TTL census pairs",
                line: numbers.len(),
                text: histogram.trim().to_string(),
            });
        }
        let census = self.census.get_or_insert_with(|| TtlCensus {
            counted_at,
            buckets: BTreeMap::new(),
        });
        let buckets = census.buckets.entry(db).or_default();
        for pair in numbers.chunks(2) {
            *buckets.entry(pair[0] as u32).or_default() += pair[1];
        }
        Ok(())
    }
}

/// Now, in unix seconds (the laptop's clock; TTLs are only compared with it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_keyspace_parses() {
        let info =
            "# Keyspace\r\ndb0:keys=12,expires=0,avg_ttl=0\r\ndb5:keys=3,expires=1,avg_ttl=9\r\n";
        let c = RedisKeyCounts::parse_info_keyspace(info).unwrap();
        assert_eq!(c.dbs, BTreeMap::from([(0, 12), (5, 3)]));
        assert_eq!(c.volatile, BTreeMap::from([(5, 1)]));
        assert_eq!(c.persistent(5), 2);
        assert_eq!(c.without_db(5).dbs, BTreeMap::from([(0, 12)]));
        assert!(c.without_db(5).volatile.is_empty());
        assert!(RedisKeyCounts::parse_info_keyspace("# Keyspace\n")
            .unwrap()
            .dbs
            .is_empty());
        assert!(RedisKeyCounts::parse_info_keyspace("db0:keys=x").is_err());
    }

    /// A backup of db 1 with 10 keys without a TTL and 6 with one: 3 of them had about
    /// 10 s left (bucket 3: 7..14 s), 3 about a day (bucket 16).
    fn backup() -> RedisKeyCounts {
        let mut b = RedisKeyCounts::parse_info_keyspace("db1:keys=16,expires=6").unwrap();
        b.add_census(1, 1000, "3\n3\n16\n3\n").unwrap();
        b
    }

    fn target(keys: u64, expires: u64) -> RedisKeyCounts {
        RedisKeyCounts::parse_info_keyspace(&format!("db1:keys={keys},expires={expires}")).unwrap()
    }

    #[test]
    fn keys_that_expired_since_the_backup_are_not_a_difference() {
        let b = backup();
        // Right after: all present. A minute later: the short ones may be gone.
        assert!(target(16, 6).diff_at(&b, 1001).is_empty());
        assert!(target(13, 3).diff_at(&b, 1060).is_empty());
        assert!(target(14, 4).diff_at(&b, 1060).is_empty());
        // Re-checked on every re-run: still no difference (no restore loop).
        assert!(target(13, 3).diff_at(&b, 5000).is_empty());
    }

    #[test]
    fn a_real_loss_is_still_caught() {
        let b = backup();
        // A key without a TTL lost, or gained.
        assert_eq!(
            target(15, 6).diff_at(&b, 1001),
            vec!["db 1: 9 keys without a TTL, expected 10"]
        );
        assert_eq!(target(17, 6).diff_at(&b, 1001).len(), 1);
        // Long-lived keys with a TTL lost: fewer than are surely alive.
        let d = target(12, 2).diff_at(&b, 1060);
        assert_eq!(
            d,
            vec!["db 1: 2 keys with a TTL, expected at least 3 of the 6 backed up (the others may have expired since)"]
        );
        // Short-lived keys lost right after the backup: caught too.
        assert_eq!(target(13, 3).diff_at(&b, 1001).len(), 1);
        // More keys with a TTL than backed up.
        assert_eq!(target(17, 7).diff_at(&b, 1001).len(), 1);
        // A database missing altogether.
        assert_eq!(RedisKeyCounts::default().diff_at(&b, 1001).len(), 2);
    }

    #[test]
    fn counts_from_an_older_journal_compare_totals() {
        let old: RedisKeyCounts = serde_json::from_str(r#"{"dbs":{"0":12}}"#).unwrap();
        assert_eq!(target(0, 0).diff_at(&old, 0).len(), 1);
        let same = RedisKeyCounts::parse_info_keyspace("db0:keys=12").unwrap();
        assert!(same.diff_at(&old, 0).is_empty());
        assert_eq!(
            RedisKeyCounts::parse_info_keyspace("db0:keys=11")
                .unwrap()
                .diff_at(&old, 0),
            vec!["db 0: 11 keys, expected 12"]
        );
    }

    #[test]
    fn census_output_must_be_pairs_of_numbers() {
        let mut c = RedisKeyCounts::default();
        assert!(c.add_census(0, 1, "1\n2\n3\n").is_err());
        assert!(c.add_census(0, 1, "a\nb\n").is_err());
        assert!(c.add_census(0, 1, "").is_ok());
    }
}
