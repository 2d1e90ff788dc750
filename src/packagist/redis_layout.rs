//! Where an RDB must be put on a Redis data directory so that Redis really loads it.
//!
//! The trap (see testbed-notes): Redis 7 with `appendonly yes` ignores `dump.rdb` when
//! there is no AOF; it starts empty, writes an empty AOF base, and its save points then
//! overwrite `dump.rdb` with the empty dataset. It loads an AOF in preference to the
//! RDB when one exists. So with `appendonly yes` the RDB becomes the AOF's base file
//! (`<appenddirname>/<appendfilename>.1.base.rdb` plus a manifest naming it); with
//! `appendonly no` it is `dump.rdb` (`dbfilename`), and any AOF is removed either way.
//!
//! Everything here is pure: live settings in, file operations out.

use serde::{Deserialize, Serialize};

/// The persistence settings of a running Redis (`CONFIG GET ...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RedisPersistence {
    pub appendonly: bool,
    pub appendfilename: String,
    pub appenddirname: String,
    pub dbfilename: String,
    /// Who redis-server runs as (read off its process: images commonly start as root and
    /// drop to uid 999, so an exec's own `id` would say root). What the restore lays out
    /// is made this owner's; `None` (a journal from before this was read) keeps the
    /// volume directory's owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<FileOwner>,
}

/// A numeric file owner, `uid:gid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOwner {
    pub uid: u32,
    pub gid: u32,
}

impl FileOwner {
    /// Parse `stat -c %u:%g` output.
    pub fn parse_stat(out: &str) -> Result<Self, ConfigParseError> {
        let bad = || ConfigParseError(format!("owner {:?} is not uid:gid", out.trim()));
        let (uid, gid) = out.trim().split_once(':').ok_or_else(bad)?;
        Ok(FileOwner {
            uid: uid.parse().map_err(|_| bad())?,
            gid: gid.parse().map_err(|_| bad())?,
        })
    }
}

impl std::fmt::Display for FileOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

/// `process_id` of `redis-cli INFO server` output.
pub fn parse_process_id(info: &str) -> Result<u32, ConfigParseError> {
    info.lines()
        .find_map(|l| l.trim().strip_prefix("process_id:"))
        .and_then(|p| p.trim().parse().ok())
        .ok_or_else(|| ConfigParseError("no process_id in INFO server".into()))
}

impl Default for RedisPersistence {
    fn default() -> Self {
        RedisPersistence {
            appendonly: false,
            appendfilename: "appendonly.aof".into(),
            appenddirname: "appendonlydir".into(),
            dbfilename: "dump.rdb".into(),
            owner: None,
        }
    }
}

/// The `redis-cli` arguments whose output [`RedisPersistence::parse_config_get`] reads.
pub const CONFIG_GET_ARGS: [&str; 6] = [
    "CONFIG",
    "GET",
    "appendonly",
    "appendfilename",
    "appenddirname",
    "dbfilename",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unexpected CONFIG GET output ({0}); is this Redis 7 or newer?")]
pub struct ConfigParseError(pub String);

impl RedisPersistence {
    /// Parse `redis-cli CONFIG GET ...`: alternating name and value lines.
    pub fn parse_config_get(out: &str) -> Result<Self, ConfigParseError> {
        let lines: Vec<&str> = out.lines().map(|l| l.trim_end_matches('\r')).collect();
        if !lines.len().is_multiple_of(2) {
            return Err(ConfigParseError(format!("{} lines", lines.len())));
        }
        let mut p = RedisPersistence::default();
        let mut seen = 0;
        for pair in lines.chunks(2) {
            let (k, v) = (pair[0], pair[1].to_string());
            match k {
                "appendonly" => p.appendonly = v == "yes",
                "appendfilename" => p.appendfilename = v,
                "appenddirname" => p.appenddirname = v,
                "dbfilename" => p.dbfilename = v,
                _ => continue,
            }
            seen += 1;
        }
        // appenddirname only exists since Redis 7.0: without it the layout is unknown.
        if seen < 4 {
            return Err(ConfigParseError(format!("{seen} of 4 settings present")));
        }
        for name in [&p.appendfilename, &p.appenddirname, &p.dbfilename] {
            if name.is_empty() || name.contains('/') || name == ".." || name == "." {
                return Err(ConfigParseError(format!("unsafe file name {name:?}")));
            }
        }
        Ok(p)
    }

    /// The files Redis will load from, relative to its data dir.
    pub fn load_path(&self) -> String {
        if self.appendonly {
            format!("{}/{}", self.appenddirname, self.base_rdb_name())
        } else {
            self.dbfilename.clone()
        }
    }

    fn base_rdb_name(&self) -> String {
        format!("{}.1.base.rdb", self.appendfilename)
    }

    /// The manifest Redis 7 reads to find the AOF's base file.
    pub fn manifest(&self) -> String {
        format!("file {} seq 1 type b\n", self.base_rdb_name())
    }
}

/// One operation on the PV's directory, relative to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FileOp {
    /// Remove a file or a directory tree if present.
    Remove { path: String },
    /// Create a directory (and parents).
    MakeDir { path: String },
    /// Write the backup's bytes here (through a temporary name, then rename).
    WriteRdb { path: String },
    /// Write this small text file (through a temporary name, then rename).
    WriteText { path: String, content: String },
}

/// The operations that make Redis load the RDB on its next start, in order.
///
/// The RDB is always written to the final name last-but-one through a rename, so an
/// interrupted run leaves either the old state or the complete new file, never a
/// truncated one; and nothing here ever writes an empty `dump.rdb`.
pub fn restore_plan(p: &RedisPersistence) -> Vec<FileOp> {
    let mut ops = vec![
        // Any AOF left behind would be loaded instead of our RDB (appendonly yes), or
        // would resurrect the new install's empty dataset if appendonly is switched on
        // later. Both the Redis 7 directory and a pre-7 single file go.
        FileOp::Remove {
            path: p.appenddirname.clone(),
        },
        FileOp::Remove {
            path: p.appendfilename.clone(),
        },
    ];
    if p.appendonly {
        ops.push(FileOp::MakeDir {
            path: p.appenddirname.clone(),
        });
        ops.push(FileOp::WriteRdb {
            path: p.load_path(),
        });
        ops.push(FileOp::WriteText {
            path: format!("{}/{}.manifest", p.appenddirname, p.appendfilename),
            content: p.manifest(),
        });
        // A stale dump.rdb would be harmless while appendonly stays yes, but it holds
        // the new install's (empty) data: replace it with the backup too.
        ops.push(FileOp::WriteRdb {
            path: p.dbfilename.clone(),
        });
    } else {
        ops.push(FileOp::WriteRdb {
            path: p.dbfilename.clone(),
        });
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    const YES: &str = "appendonly\nyes\nappendfilename\nappendonly.aof\nappenddirname\nappendonlydir\ndbfilename\ndump.rdb\n";

    #[test]
    fn parses_config_get() {
        let p = RedisPersistence::parse_config_get(YES).unwrap();
        assert!(p.appendonly);
        assert_eq!(p.load_path(), "appendonlydir/appendonly.aof.1.base.rdb");
        let no = YES.replace("\nyes\n", "\nno\n");
        assert_eq!(
            RedisPersistence::parse_config_get(&no).unwrap().load_path(),
            "dump.rdb"
        );
    }

    #[test]
    fn refuses_pre_7_and_unsafe_names() {
        assert!(RedisPersistence::parse_config_get("appendonly\nyes\n").is_err());
        let evil = YES.replace("appendonlydir\n", "../etc\n");
        assert!(RedisPersistence::parse_config_get(&evil).is_err());
    }

    #[test]
    fn appendonly_yes_makes_the_rdb_the_aof_base() {
        let p = RedisPersistence::parse_config_get(YES).unwrap();
        let plan = restore_plan(&p);
        assert_eq!(
            plan,
            vec![
                FileOp::Remove {
                    path: "appendonlydir".into()
                },
                FileOp::Remove {
                    path: "appendonly.aof".into()
                },
                FileOp::MakeDir {
                    path: "appendonlydir".into()
                },
                FileOp::WriteRdb {
                    path: "appendonlydir/appendonly.aof.1.base.rdb".into()
                },
                FileOp::WriteText {
                    path: "appendonlydir/appendonly.aof.manifest".into(),
                    content: "file appendonly.aof.1.base.rdb seq 1 type b\n".into()
                },
                FileOp::WriteRdb {
                    path: "dump.rdb".into()
                },
            ]
        );
    }

    #[test]
    fn appendonly_no_writes_dump_rdb_and_removes_any_aof() {
        let p = RedisPersistence {
            appendonly: false,
            ..Default::default()
        };
        let plan = restore_plan(&p);
        assert!(plan.contains(&FileOp::Remove {
            path: "appendonlydir".into()
        }));
        assert_eq!(
            plan.last(),
            Some(&FileOp::WriteRdb {
                path: "dump.rdb".into()
            })
        );
    }
}
