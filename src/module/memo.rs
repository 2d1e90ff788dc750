//! Typed journal memos: what one task records (a database's fingerprint, the old side's
//! data sizes, a restore's attempt) and another task reads, named once as a
//! `Memo<T>` constant next to the type it holds. Reading through the key checks the
//! recorded value against `T`: a memo that does not parse is an error naming the key and
//! the task that recorded it, never silently taken for "not recorded".

use std::marker::PhantomData;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::journal::TaskRecord;

/// A journal memo's name and the type of its value.
pub struct Memo<T> {
    pub name: &'static str,
    value: PhantomData<fn() -> T>,
}

impl<T> Memo<T> {
    pub const fn new(name: &'static str) -> Self {
        Memo {
            name,
            value: PhantomData,
        }
    }
}

/// A memo value ready to be recorded (the engine records what `Module::memos` returns).
#[derive(Debug, Clone, PartialEq)]
pub struct MemoValue {
    pub name: &'static str,
    pub value: Value,
}

/// A recorded memo that is not what its key says.
#[derive(Debug, thiserror::Error)]
#[error("the journal's `{name}` of task `{task}` on {host} is not what this version of ferry records ({reason}); the journal was edited or written by another version: remove that task's record (or the journal) to let it run again")]
pub struct MemoMismatch {
    pub name: &'static str,
    pub host: String,
    pub task: String,
    pub reason: String,
}

impl<T: Serialize + DeserializeOwned> Memo<T> {
    /// `value`, to record under this key.
    pub fn of(&self, value: &T) -> MemoValue {
        MemoValue {
            name: self.name,
            value: serde_json::to_value(value).unwrap_or(Value::Null),
        }
    }

    /// This memo in `record` (of `task` on `host`): `None` when not recorded.
    pub fn read(
        &self,
        host: &str,
        task: &str,
        record: &TaskRecord,
    ) -> Result<Option<T>, MemoMismatch> {
        let Some(v) = record.fingerprints.get(self.name) else {
            return Ok(None);
        };
        serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| MemoMismatch {
                name: self.name,
                host: host.to_string(),
                task: task.to_string(),
                reason: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COUNT: Memo<u64> = Memo::new("count");

    #[test]
    fn a_memo_of_another_shape_is_an_error_not_a_missing_value() {
        let mut record: TaskRecord =
            serde_json::from_value(serde_json::json!({"status": "ok", "started": "now"})).unwrap();
        assert!(COUNT.read("h", "t", &record).unwrap().is_none());
        record
            .fingerprints
            .insert("count".into(), COUNT.of(&7).value);
        assert_eq!(COUNT.read("h", "t", &record).unwrap(), Some(7));
        record
            .fingerprints
            .insert("count".into(), Value::String("seven".into()));
        let err = COUNT.read("h", "t", &record).unwrap_err().to_string();
        assert!(err.contains("`count` of task `t` on h"), "{err}");
    }
}
