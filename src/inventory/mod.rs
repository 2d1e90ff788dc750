//! The inventory: hosts, groups and their variables, read from TOML.
//!
//! Precedence of variables: host vars > group vars (in the order the host lists its
//! groups) > `[defaults]` vars. Unknown keys are errors with `file:line:column`.
//! Relative paths are relative to the inventory file. Environment variables named by
//! `*_env` keys and `{ secret_env = "NAME" }` var values are resolved here, so a missing
//! one is an input error before any host is contacted.
//!
//! Files: this one (the types and the parse), `resolve.rs` (one host's settings and
//! vars resolved against `[defaults]` and its groups), `tests.rs`.

mod resolve;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde::Deserialize;
use serde_json::Value;
use serde_spanned::Spanned;

use crate::playbook::source::{InputError, SourceFile};
use crate::playbook::template::SharedVars;
use crate::secrets::Secrets;
use crate::transport::{ConnectSpec, HostKeyPolicy};

use resolve::Resolver;

/// Settings a host may have; also the shape of `[defaults]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    address: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    identity_file: Option<String>,
    known_hosts: Option<String>,
    ssh_config: Option<String>,
    host_key_checking: Option<HostKeyPolicy>,
    proxy_jump: Option<String>,
    password_env: Option<Spanned<String>>,
    key_passphrase_env: Option<Spanned<String>>,
    #[serde(rename = "become")]
    become_: Option<bool>,
    become_user: Option<String>,
    become_password_env: Option<Spanned<String>>,
    /// Seconds.
    connect_timeout: Option<u64>,
    /// Seconds of silence before a keepalive probe; 0: never (OpenSSH's
    /// ServerAliveInterval).
    server_alive_interval: Option<u64>,
    /// Unanswered probes after which the connection counts as lost (ServerAliveCountMax).
    server_alive_count_max: Option<usize>,
    /// Accept legacy `ssh-rsa` (SHA-1) host key signatures.
    allow_ssh_rsa_sha1: Option<bool>,
    /// POSIX shell to run commands with instead of the login shell.
    shell: Option<String>,
    groups: Option<Vec<String>>,
    #[serde(default)]
    vars: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    secret_vars: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    /// Members, in addition to hosts that list this group.
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    #[serde(default)]
    vars: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    secret_vars: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInventory {
    #[serde(default)]
    defaults: RawHost,
    #[serde(default)]
    hosts: BTreeMap<String, RawHost>,
    #[serde(default)]
    groups: BTreeMap<String, RawGroup>,
}

/// One host, resolved.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    /// Groups this host belongs to, in precedence order (later wins).
    pub groups: Vec<String>,
    /// Merged variables (plus `inventory_hostname`).
    pub vars: serde_json::Map<String, Value>,
    /// Names of this host's secret vars (`secret_vars` of the host, its groups and the
    /// defaults). Everything under them is a secret, also when the value comes from
    /// the playbook's `[vars]`.
    pub secret_vars: BTreeSet<String>,
    pub connect: ConnectSpec,
}

/// A parsed inventory.
#[derive(Debug, Clone)]
pub struct Inventory {
    pub path: PathBuf,
    pub hosts: BTreeMap<String, Host>,
    /// Group name → member host names.
    pub groups: BTreeMap<String, Vec<String>>,
    /// `hostvars` and `groups` for templates, built once (see [`Inventory::shared_vars`]).
    shared_vars: OnceLock<Arc<SharedVars>>,
}

/// A `--limit` or `hosts =` pattern that names nothing (an empty name: the pattern is
/// empty).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", describe_unknown(.0))]
pub struct UnknownTarget(pub String);

fn describe_unknown(name: &str) -> String {
    if name.is_empty() {
        "the host pattern is empty and would select no host; name hosts, groups or `all`"
            .to_string()
    } else {
        format!("no host or group named `{name}` in the inventory")
    }
}

impl Inventory {
    /// Read and resolve an inventory file; secret values are registered in `secrets`.
    pub fn load(path: &Path, secrets: &Secrets) -> Result<Inventory, InputError> {
        let source = SourceFile::read(path)?;
        Inventory::parse(&source, &|name| std::env::var(name).ok(), secrets)
    }

    /// Parse `source`, looking environment variables up with `env`.
    pub fn parse(
        source: &SourceFile,
        env: &dyn Fn(&str) -> Option<String>,
        secrets: &Secrets,
    ) -> Result<Inventory, InputError> {
        let raw: RawInventory = toml::from_str(&source.text).map_err(|e| source.toml_error(&e))?;
        if raw.hosts.is_empty() {
            // An empty (or host-less) file is almost surely the wrong file.
            return Err(source.error_at(
                None,
                None,
                "the inventory has no hosts; add at least one [hosts.NAME] table",
            ));
        }
        let base = source
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let resolver = Resolver {
            source,
            env,
            secrets,
            base: &base,
        };

        // Group membership: hosts listing a group, plus a group's own `hosts`.
        let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, host) in &raw.hosts {
            for g in host
                .groups
                .as_ref()
                .or(raw.defaults.groups.as_ref())
                .into_iter()
                .flatten()
            {
                members.entry(g.clone()).or_default().push(name.clone());
            }
        }
        for (gname, group) in &raw.groups {
            let list = members.entry(gname.clone()).or_default();
            for h in &group.hosts {
                if !raw.hosts.contains_key(h.get_ref()) {
                    return Err(source.error_at(
                        Some(h.span()),
                        Some("hosts".into()),
                        format!("group `{gname}` lists unknown host `{}`", h.get_ref()),
                    ));
                }
                if !list.contains(h.get_ref()) {
                    list.push(h.get_ref().clone());
                }
            }
        }
        for name in members.keys() {
            if raw.hosts.contains_key(name) {
                return Err(source.error_at(
                    None,
                    None,
                    format!("`{name}` is both a host and a group name"),
                ));
            }
        }

        let mut hosts = BTreeMap::new();
        for (name, raw_host) in &raw.hosts {
            let mut groups: Vec<String> = raw_host
                .groups
                .clone()
                .or_else(|| raw.defaults.groups.clone())
                .unwrap_or_default();
            for (g, list) in &members {
                if list.contains(name) && !groups.contains(g) {
                    groups.push(g.clone());
                }
            }
            let host = resolver.host(name, raw_host, &raw.defaults, &groups, &raw.groups)?;
            hosts.insert(name.clone(), host);
        }
        Ok(Inventory {
            path: source.path.clone(),
            hosts,
            groups: members,
            shared_vars: OnceLock::new(),
        })
    }

    /// Host names matched by a pattern, as Ansible's host patterns: terms separated by
    /// `,` or `:`, each a host name, a group name, `all`, or a glob; `&term` keeps only
    /// hosts also in term, `!term` removes term's hosts (`web*:&prod:!web3`). Returned
    /// in name order, without duplicates. An empty pattern (`""`, `" , "`) is an error: it
    /// would silently select nothing; so is a term that names nothing.
    pub fn select(&self, pattern: &str) -> Result<Vec<String>, UnknownTarget> {
        let terms: Vec<&str> = pattern
            .split([',', ':'])
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        if terms.is_empty() {
            return Err(UnknownTarget(String::new()));
        }
        // As Ansible evaluates a pattern: the union of the plain terms (`all` if there
        // are only `&`/`!` terms), then each `&term` intersects, each `!term` removes.
        let mut union = BTreeSet::new();
        let mut intersect: Vec<BTreeSet<String>> = Vec::new();
        let mut exclude = BTreeSet::new();
        let mut any_plain = false;
        for term in terms {
            if let Some(t) = term.strip_prefix('!') {
                exclude.extend(self.term(t)?);
            } else if let Some(t) = term.strip_prefix('&') {
                intersect.push(self.term(t)?);
            } else {
                any_plain = true;
                union.extend(self.term(term)?);
            }
        }
        if !any_plain {
            union.extend(self.hosts.keys().cloned());
        }
        Ok(union
            .into_iter()
            .filter(|h| intersect.iter().all(|i| i.contains(h)))
            .filter(|h| !exclude.contains(h))
            .collect())
    }

    /// The hosts one term of a pattern names: `all` (or `*`), a host, a group, or a glob
    /// (`*`, `?`, `[...]`) over host and group names. A term that names nothing is an
    /// error, so a typo never silently selects fewer hosts.
    fn term(&self, term: &str) -> Result<BTreeSet<String>, UnknownTarget> {
        let term = term.trim();
        if term == "all" || term == "*" {
            return Ok(self.hosts.keys().cloned().collect());
        }
        if self.hosts.contains_key(term) {
            return Ok(BTreeSet::from([term.to_string()]));
        }
        if let Some(list) = self.groups.get(term) {
            return Ok(list.iter().cloned().collect());
        }
        let mut found = BTreeSet::new();
        if term.contains(['*', '?', '[']) {
            let glob = globset::Glob::new(term)
                .map_err(|e| UnknownTarget(format!("{term}` ({e})")))?
                .compile_matcher();
            found.extend(
                self.hosts
                    .keys()
                    .filter(|h| glob.is_match(h.as_str()))
                    .cloned(),
            );
            for (group, members) in &self.groups {
                if glob.is_match(group.as_str()) {
                    found.extend(members.iter().cloned());
                }
            }
            // A glob that names only empty groups still names something.
            if !found.is_empty() || self.groups.keys().any(|g| glob.is_match(g.as_str())) {
                return Ok(found);
            }
        }
        Err(UnknownTarget(term.to_string()))
    }

    /// The variables every host's templates share, `hostvars` and `groups`: built on the
    /// first call and then shared (one allocation for all hosts, however many). Masked
    /// with the secrets known at that first call, which is after the inventory and
    /// playbook were read.
    pub fn shared_vars(&self, secrets: &Secrets) -> Arc<SharedVars> {
        self.shared_vars
            .get_or_init(|| {
                let mut values = serde_json::Map::new();
                values.insert("hostvars".into(), self.hostvars());
                // Group name → member hosts, e.g. for a module whose source is "the old host".
                values.insert(
                    "groups".into(),
                    Value::Object(
                        self.groups
                            .iter()
                            .map(|(g, hosts)| {
                                (
                                    g.clone(),
                                    Value::Array(
                                        hosts.iter().cloned().map(Value::String).collect(),
                                    ),
                                )
                            })
                            .collect(),
                    ),
                );
                Arc::new(SharedVars::new(values, secrets))
            })
            .clone()
    }

    /// The `hostvars` tree: every host's vars by name (for cross-host templates).
    pub fn hostvars(&self) -> Value {
        Value::Object(
            self.hosts
                .iter()
                .map(|(n, h)| (n.clone(), Value::Object(h.vars.clone())))
                .collect(),
        )
    }

    /// Where the journal of `playbook` lives by default:
    /// `<inventory dir>/.ferry/<stem>-<id>.journal.json`, where `<id>` is a digest of
    /// the canonical paths of the playbook and of this inventory: two playbooks of the
    /// same name (in other directories), or one playbook with two inventories, get
    /// journals of their own.
    pub fn default_journal_path(&self, playbook: &Path) -> PathBuf {
        use sha2::Digest;
        let mut id = sha2::Sha256::new();
        id.update(canonical_path(playbook).as_os_str().as_encoded_bytes());
        id.update([0]);
        id.update(canonical_path(&self.path).as_os_str().as_encoded_bytes());
        let id = hex::encode(id.finalize());
        self.journal_dir().join(format!(
            "{}-{}.journal.json",
            journal_stem(playbook),
            id.get(..12).unwrap_or(&id)
        ))
    }

    /// Where ferry before journal version 2 kept the journal of `playbook` by default
    /// (`<inventory dir>/.ferry/<stem>.journal.json`), shared by every playbook of that
    /// file name. Only looked at to tell the operator about it.
    pub fn legacy_journal_path(&self, playbook: &Path) -> PathBuf {
        self.journal_dir()
            .join(format!("{}.journal.json", journal_stem(playbook)))
    }

    fn journal_dir(&self) -> PathBuf {
        self.path.parent().unwrap_or(Path::new(".")).join(".ferry")
    }
}

fn journal_stem(playbook: &Path) -> String {
    playbook
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "playbook".into())
}

/// `path` made absolute with symlinks resolved; a path that cannot be resolved (it does
/// not exist) is made absolute against the working directory as it is.
pub fn canonical_path(path: &Path) -> PathBuf {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()))
}
