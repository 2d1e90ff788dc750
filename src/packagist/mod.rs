//! The Packagist Self-Hosted migration's steps (Replicated Native on Docker → the
//! Kubernetes install), each a module on the contract of [`crate::module`], and the
//! helpers only they use: the completed-migration guard, Redis in a pod, the storage
//! import, interrupted attempts.

pub mod attempt;
pub mod blob_store;
pub mod completed;
pub mod import_target;
pub mod memos;
pub mod migration_marker;
pub mod pg_dump;
pub mod pg_restore_k8s;
pub mod preflight;
pub mod redis;
pub mod redis_backup;
pub mod redis_flushdb;
pub mod redis_layout;
pub mod redis_restore_openebs;
pub mod storage;
pub mod storage_export;
pub mod storage_import;
pub mod storage_stage;
pub mod storage_stream;
