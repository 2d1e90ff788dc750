//! The inventory: hosts, groups and their variables, read from TOML.
//!
//! Precedence of variables: host vars > group vars (in the order the host lists its
//! groups) > `[defaults]` vars. Unknown keys are errors with `file:line:column`.
//! Relative paths are relative to the inventory file. Environment variables named by
//! `*_env` keys and `{ secret_env = "NAME" }` var values are resolved here, so a missing
//! one is an input error before any host is contacted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use serde_spanned::Spanned;

use crate::playbook::check_user_var;
use crate::playbook::source::{InputError, SourceFile};
use crate::playbook::template::SharedVars;
use crate::secrets::Secrets;
use crate::transport::{BecomeSpec, ConnectSpec, HostKeyPolicy};

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

    /// Host names matched by a pattern: comma-separated host names, group names or `all`.
    /// Returned in inventory order, without duplicates.
    /// An empty pattern (`""`, `" , "`) is an error: it would silently select nothing.
    pub fn select(&self, pattern: &str) -> Result<Vec<String>, UnknownTarget> {
        if pattern.split(',').all(|p| p.trim().is_empty()) {
            return Err(UnknownTarget(String::new()));
        }
        let mut chosen = BTreeSet::new();
        for part in pattern.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part == "all" {
                chosen.extend(self.hosts.keys().cloned());
            } else if self.hosts.contains_key(part) {
                chosen.insert(part.to_string());
            } else if let Some(list) = self.groups.get(part) {
                chosen.extend(list.iter().cloned());
            } else {
                return Err(UnknownTarget(part.to_string()));
            }
        }
        Ok(chosen.into_iter().collect())
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

struct Resolver<'a> {
    source: &'a SourceFile,
    env: &'a dyn Fn(&str) -> Option<String>,
    secrets: &'a Secrets,
    base: &'a Path,
}

/// `host`'s value for a setting, else the default's.
fn pick<T: Clone>(host: &Option<T>, default: &Option<T>) -> Option<T> {
    host.clone().or_else(|| default.clone())
}

impl Resolver<'_> {
    /// The value of the environment variable a `*_env` key names; registered as a secret.
    fn env_secret(
        &self,
        host: &str,
        var: Option<Spanned<String>>,
        field: &str,
    ) -> Result<Option<String>, InputError> {
        let Some(var) = var else { return Ok(None) };
        match (self.env)(var.get_ref()) {
            Some(value) => {
                self.secrets.add(value.clone());
                Ok(Some(value))
            }
            None => Err(self.source.error_at(
                Some(var.span()),
                Some(field.to_string()),
                format!(
                    "environment variable `{}` is not set (needed by host `{host}`)",
                    var.get_ref()
                ),
            )),
        }
    }

    /// A path relative to the inventory file; `~/` is the home directory.
    fn path(&self, p: &str) -> PathBuf {
        if let Some(rest) = p.strip_prefix("~/") {
            if let Some(home) = dirs::home_dir() {
                return home.join(rest);
            }
        }
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    /// Merge one level of vars into `out`; `{ secret_env = "NAME" }` values, at any
    /// depth of a table or array, are read from the environment and registered as
    /// secrets.
    fn merge_vars(
        &self,
        host: &str,
        vars: &BTreeMap<String, Spanned<toml::Value>>,
        out: &mut serde_json::Map<String, Value>,
    ) -> Result<(), InputError> {
        for (key, value) in vars {
            check_user_var(self.source, key, value)?;
            let resolved = self.resolve_value(host, key, value.span(), value.get_ref())?;
            out.insert(key.clone(), resolved);
        }
        Ok(())
    }

    /// One var value as JSON, with its `{ secret_env = … }` tables resolved (errors
    /// are located at the var, the closest span TOML keeps for nested values).
    fn resolve_value(
        &self,
        host: &str,
        key: &str,
        span: std::ops::Range<usize>,
        value: &toml::Value,
    ) -> Result<Value, InputError> {
        match value {
            toml::Value::Table(t) if t.contains_key("secret_env") => {
                let Some(toml::Value::String(name)) = t.get("secret_env").filter(|_| t.len() == 1)
                else {
                    return Err(self.source.error_at(
                        Some(span),
                        Some(key.to_string()),
                        "expected `{ secret_env = \"ENV_NAME\" }`",
                    ));
                };
                let secret = self.env_secret(host, Some(Spanned::new(span, name.clone())), key)?;
                Ok(Value::String(secret.unwrap_or_default()))
            }
            toml::Value::Table(t) => {
                let mut m = serde_json::Map::new();
                for (k, v) in t {
                    m.insert(k.clone(), self.resolve_value(host, key, span.clone(), v)?);
                }
                Ok(Value::Object(m))
            }
            toml::Value::Array(a) => a
                .iter()
                .map(|v| self.resolve_value(host, key, span.clone(), v))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            other => serde_json::to_value(other).map_err(|e| {
                self.source
                    .error_at(Some(span), Some(key.to_string()), e.to_string())
            }),
        }
    }

    fn host(
        &self,
        name: &str,
        h: &RawHost,
        d: &RawHost,
        groups: &[String],
        raw_groups: &BTreeMap<String, RawGroup>,
    ) -> Result<Host, InputError> {
        let password =
            self.env_secret(name, pick(&h.password_env, &d.password_env), "password_env")?;
        let key_passphrase = self.env_secret(
            name,
            pick(&h.key_passphrase_env, &d.key_passphrase_env),
            "key_passphrase_env",
        )?;
        let become_password = self.env_secret(
            name,
            pick(&h.become_password_env, &d.become_password_env),
            "become_password_env",
        )?;
        let become_ = pick(&h.become_, &d.become_)
            .unwrap_or(false)
            .then(|| BecomeSpec {
                user: pick(&h.become_user, &d.become_user).unwrap_or_else(|| "root".into()),
                password: become_password,
            });

        let mut vars = serde_json::Map::new();
        let mut secret_names: BTreeSet<String> = d.secret_vars.iter().cloned().collect();
        self.merge_vars(name, &d.vars, &mut vars)?;
        for g in groups {
            if let Some(group) = raw_groups.get(g) {
                self.merge_vars(name, &group.vars, &mut vars)?;
                secret_names.extend(group.secret_vars.iter().cloned());
            }
        }
        self.merge_vars(name, &h.vars, &mut vars)?;
        secret_names.extend(h.secret_vars.iter().cloned());
        // Every value under a secret var, of any type, nested or not.
        for s in &secret_names {
            if let Some(v) = vars.get(s) {
                self.secrets.add_value(v);
            }
        }
        vars.insert("inventory_hostname".into(), Value::String(name.into()));

        let connect = ConnectSpec {
            name: name.to_string(),
            address: pick(&h.address, &d.address).unwrap_or_else(|| name.to_string()),
            port: pick(&h.port, &d.port),
            user: pick(&h.user, &d.user),
            identity_files: pick(&h.identity_file, &d.identity_file)
                .map(|p| vec![self.path(&p)])
                .unwrap_or_default(),
            key_passphrase,
            password,
            known_hosts: pick(&h.known_hosts, &d.known_hosts).map(|p| self.path(&p)),
            host_key_policy: pick(&h.host_key_checking, &d.host_key_checking),
            ssh_config: pick(&h.ssh_config, &d.ssh_config).map(|p| self.path(&p)),
            proxy_jump: pick(&h.proxy_jump, &d.proxy_jump),
            connect_timeout: Duration::from_secs(
                pick(&h.connect_timeout, &d.connect_timeout).unwrap_or(10),
            ),
            become_,
            allow_prompt: false,
            allow_ssh_rsa_sha1: pick(&h.allow_ssh_rsa_sha1, &d.allow_ssh_rsa_sha1).unwrap_or(false),
            shell: pick(&h.shell, &d.shell),
        };
        Ok(Host {
            name: name.to_string(),
            groups: groups.to_vec(),
            vars,
            secret_vars: secret_names,
            connect,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Inventory, InputError> {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let source = SourceFile::new("/inv/hosts.toml", text);
        Inventory::parse(&source, &|n| env.get(n).cloned(), &Secrets::new())
    }

    const GOOD: &str = r#"
[defaults]
user = "root"
identity_file = "keys/id"
[defaults.vars]
level = "defaults"
only_default = 1

[hosts.old]
address = "127.0.0.1"
port = 2201
groups = ["docker"]
become = true
[hosts.old.vars]
level = "host"

[hosts.new]
address = "10.0.0.2"
known_hosts = "/abs/known_hosts"
groups = ["k8s"]

[groups.docker.vars]
level = "group"
only_group = true
[groups.k8s.vars]
level = "group-k8s"
"#;

    #[test]
    fn precedence_host_over_group_over_defaults() {
        let inv = parse(GOOD, &[]).unwrap();
        let old = &inv.hosts["old"];
        assert_eq!(old.vars["level"], "host");
        assert_eq!(old.vars["only_group"], true);
        assert_eq!(old.vars["only_default"], 1);
        assert_eq!(inv.hosts["new"].vars["level"], "group-k8s");
        assert_eq!(old.vars["inventory_hostname"], "old");
    }

    #[test]
    fn connect_spec_resolves_paths_and_defaults() {
        let inv = parse(GOOD, &[]).unwrap();
        let old = &inv.hosts["old"].connect;
        assert_eq!(old.port, Some(2201));
        assert_eq!(old.user.as_deref(), Some("root"));
        assert_eq!(old.identity_files, vec![PathBuf::from("/inv/keys/id")]);
        assert_eq!(old.become_.as_ref().map(|b| b.user.as_str()), Some("root"));
        let new = &inv.hosts["new"].connect;
        assert_eq!(new.known_hosts, Some(PathBuf::from("/abs/known_hosts")));
        assert!(new.become_.is_none());
        let journal = inv.default_journal_path(Path::new("/pb/migrate.toml"));
        assert_eq!(journal.parent(), Some(Path::new("/inv/.ferry")));
        let name = journal.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with("migrate-") && name.ends_with(".journal.json"),
            "{name}"
        );
        // A playbook of the same name elsewhere has a journal of its own.
        assert_ne!(
            journal,
            inv.default_journal_path(Path::new("/other/migrate.toml"))
        );
        assert_eq!(
            inv.legacy_journal_path(Path::new("/pb/migrate.toml")),
            PathBuf::from("/inv/.ferry/migrate.journal.json")
        );
    }

    #[test]
    fn select_hosts_groups_and_all() {
        let inv = parse(GOOD, &[]).unwrap();
        assert_eq!(inv.select("all").unwrap(), vec!["new", "old"]);
        assert_eq!(inv.select("docker").unwrap(), vec!["old"]);
        assert_eq!(inv.select("new,docker").unwrap(), vec!["new", "old"]);
        assert_eq!(inv.select("nope").unwrap_err().0, "nope");
    }

    #[test]
    fn unknown_key_is_located() {
        let e = parse("[hosts.a]\naddress = \"x\"\nprot = 22\n", &[]).unwrap_err();
        assert_eq!((e.location.line, e.location.column), (3, 1));
        assert_eq!(e.field.as_deref(), Some("prot"));
        assert!(e.message.contains("unknown field `prot`"), "{}", e.message);
    }

    #[test]
    fn wrong_type_is_located() {
        let e = parse("[hosts.a]\nport = \"22\"\n", &[]).unwrap_err();
        assert_eq!((e.location.line, e.location.column), (2, 8));
        assert_eq!(e.field.as_deref(), Some("port"));
    }

    /// Every value under a secret var is a secret (numbers, nested tables and arrays),
    /// and `{ secret_env = … }` works inside a table too.
    #[test]
    fn secret_vars_cover_every_value_under_them() {
        let text = "[defaults]\nsecret_vars = [\"pin\"]\n[hosts.a]\nsecret_vars = [\"db\"]\n[hosts.a.vars]\npin = 918273\ndb = { user = \"dbuser-x1\", more = [\"arr-pw-1\", 4455], pw = { secret_env = \"DB_PW\" } }\nplain = 918\n";
        let env: BTreeMap<String, String> = [("DB_PW".to_string(), "env-pw-77".to_string())].into();
        let secrets = Secrets::new();
        let inv = Inventory::parse(
            &SourceFile::new("inv.toml", text),
            &|n| env.get(n).cloned(),
            &secrets,
        )
        .unwrap();
        assert_eq!(inv.hosts["a"].vars["db"]["pw"], "env-pw-77");
        assert_eq!(
            secrets.mask("918273 dbuser-x1 arr-pw-1 4455 env-pw-77 918"),
            "******** ******** ******** ******** ******** 918"
        );
        let names: Vec<_> = inv.hosts["a"].secret_vars.iter().cloned().collect();
        assert_eq!(names, ["db", "pin"]);
    }

    #[test]
    fn secret_env_and_secret_vars_are_registered() {
        let text = "[hosts.a]\nsecret_vars = [\"pw2\"]\n[hosts.a.vars]\npw = { secret_env = \"DB_PW\" }\npw2 = \"hunter22\"\n";
        let env: BTreeMap<String, String> =
            [("DB_PW".to_string(), "sup3rsecret".to_string())].into();
        let secrets = Secrets::new();
        let inv = Inventory::parse(
            &SourceFile::new("i.toml", text),
            &|n| env.get(n).cloned(),
            &secrets,
        )
        .unwrap();
        assert_eq!(inv.hosts["a"].vars["pw"], "sup3rsecret");
        assert_eq!(secrets.mask("sup3rsecret hunter22"), "******** ********");
    }

    #[test]
    fn missing_env_is_an_error_at_its_key() {
        let e = parse("[hosts.a]\n\npassword_env = \"NOPE_X\"\n", &[]).unwrap_err();
        assert_eq!((e.location.line, e.location.column), (3, 16));
        assert_eq!(e.field.as_deref(), Some("password_env"));
        assert!(e.message.contains("NOPE_X"));
    }
}
