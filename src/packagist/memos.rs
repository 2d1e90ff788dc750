//! The journal memos the migration's steps hand each other, one typed key each. A step
//! that records one and a step that reads it name the same constant, so a rename or a
//! type change is a compile error, not a silently missing value.
//!
//! | key | recorded by | read by |
//! |---|---|---|
//! | [`PG`] | `pg_dump` (with its artifact) | `pg_restore_k8s`, `migration_marker` |
//! | [`REDIS_KEYS`] | `redis_backup` (with its artifact) | `redis_restore_openebs`, `redis_flushdb`, `migration_marker` |
//! | [`STORAGE`] | `storage_export`, `storage_stage` (with their artifacts) | `storage_import`, `migration_marker` |
//! | [`TREE_STAMP`] | `storage_export` | itself, on a re-run |
//! | [`IMPORTED_DIGEST`] | `storage_import` | itself, on a re-run |
//! | [`STREAMED`] | `storage_stream` | itself, on a re-run |
//! | [`STAGED`] | `storage_stage` | itself, on a re-run |
//! | [`PERSISTENCE`] | `redis_restore_openebs` | itself, on a re-run |
//! | [`ATTEMPT`] | the restores | themselves, after an interruption |
//! | [`OLD_SIZES`] | `preflight` (old) | `preflight` (new) |

use crate::fingerprint::{PgFingerprint, RedisKeyCounts, StorageFingerprint};
use crate::module::memo::Memo;
use crate::packagist::redis_layout::RedisPersistence;
use crate::packagist::storage_stream::StreamedRecord;

pub use crate::packagist::storage_stage::STAGED;

pub use crate::packagist::preflight::OLD_SIZES;

/// Row fingerprint of the dumped database.
pub const PG: Memo<PgFingerprint> = Memo::new("pg");
/// Key counts per database of the backed-up Redis.
pub const REDIS_KEYS: Memo<RedisKeyCounts> = Memo::new("redis_keys");
/// sha256 of every exported storage file.
pub const STORAGE: Memo<StorageFingerprint> = Memo::new("storage");
/// Digest of the storage tree's listing when it was exported.
pub const TREE_STAMP: Memo<String> = Memo::new("tree_stamp");
/// Digest of the imported storage's fingerprint.
pub const IMPORTED_DIGEST: Memo<String> = Memo::new("imported_digest");
/// What the storage stream streamed and proved.
pub const STREAMED: Memo<StreamedRecord> = Memo::new("streamed_storage");
/// The new Redis's persistence settings, as read before its restore.
pub const PERSISTENCE: Memo<RedisPersistence> = Memo::new("persistence");
/// A restore's last destructive attempt: `started` until proven, then `proven`.
pub const ATTEMPT: Memo<String> = Memo::new("attempt");
