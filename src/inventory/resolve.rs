//! One host resolved: its connection settings (host > `[defaults]`), its vars (host >
//! groups > defaults), `*_env` and `secret_env` values read from the environment.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use serde_spanned::Spanned;

use crate::playbook::check_user_var;
use crate::playbook::source::{InputError, SourceFile};
use crate::secrets::Secrets;
use crate::transport::{BecomeSpec, ConnectSpec, ServerAlive};

use super::{Host, RawGroup, RawHost};

pub(super) struct Resolver<'a> {
    pub(super) source: &'a SourceFile,
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
    pub(super) secrets: &'a Secrets,
    pub(super) base: &'a Path,
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
            if let Some(home) = crate::home_dir() {
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

    pub(super) fn host(
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
            // Unset: zero, so that ssh config's ConnectTimeout (else 10 s) applies.
            connect_timeout: Duration::from_secs(
                pick(&h.connect_timeout, &d.connect_timeout).unwrap_or(0),
            ),
            become_,
            allow_prompt: false,
            allow_ssh_rsa_sha1: pick(&h.allow_ssh_rsa_sha1, &d.allow_ssh_rsa_sha1).unwrap_or(false),
            shell: pick(&h.shell, &d.shell),
            server_alive: server_alive(
                pick(&h.server_alive_interval, &d.server_alive_interval),
                pick(&h.server_alive_count_max, &d.server_alive_count_max),
            ),
            server_alive_set: crate::transport::ServerAliveSet {
                interval: pick(&h.server_alive_interval, &d.server_alive_interval).is_some(),
                count_max: pick(&h.server_alive_count_max, &d.server_alive_count_max).is_some(),
            },
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

/// The inventory's keepalive settings over ferry's defaults; interval 0 turns the probes
/// off, as `ServerAliveInterval 0` does for ssh.
fn server_alive(interval: Option<u64>, count_max: Option<usize>) -> ServerAlive {
    let default = ServerAlive::default();
    ServerAlive {
        interval: match interval {
            Some(0) => None,
            Some(s) => Some(Duration::from_secs(s)),
            None => default.interval,
        },
        count_max: count_max.unwrap_or(default.count_max),
    }
}
