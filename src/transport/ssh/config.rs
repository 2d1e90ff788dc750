//! Where and as whom to connect: the inventory's [`ConnectSpec`] merged over the user's ssh
//! config (`~/.ssh/config` or the file the inventory names), then OpenSSH's defaults.
//!
//! Parsing is russh-config's; this module feeds it text normalised to the forms it reads
//! (`Key=Value`, tabs, options before the first `Host`) and implements what it leaves to
//! the caller (defaults, `accept-new`, `ProxyJump` hops).

use std::path::{Path, PathBuf};

use crate::transport::{ConnectSpec, HostKeyPolicy, ServerAlive, TransportError};

/// One SSH server to connect to, fully resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The name as written (inventory address, ProxyJump entry): used in messages.
    pub alias: String,
    /// The name or address actually connected to (`HostName`).
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Key files to try after the agent.
    pub identity_files: Vec<PathBuf>,
    pub known_hosts: PathBuf,
    pub policy: HostKeyPolicy,
    /// Accept legacy `ssh-rsa` (SHA-1) host key signatures (the inventory's
    /// `allow_ssh_rsa_sha1`; jump hosts inherit the target's).
    pub allow_ssh_rsa_sha1: bool,
    /// Keepalive probes (jump hosts inherit the target's).
    pub server_alive: ServerAlive,
}

impl Target {
    /// `host:port` for messages.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// The target host and the jump hosts to go through first (in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    pub jumps: Vec<Target>,
    pub target: Target,
}

/// Resolve `spec` (plus ssh config) into the route to the host.
pub(crate) fn resolve(spec: &ConnectSpec) -> Result<Route, TransportError> {
    let config_text = read_ssh_config(spec)?;
    let home = dirs::home_dir().unwrap_or_else(|| PathBuf::from("/"));
    let host_cfg = lookup(&config_text, &spec.address)?;

    let default_known_hosts = || home.join(".ssh").join("known_hosts");
    let known_hosts = spec
        .known_hosts
        .clone()
        .or_else(|| host_cfg.user_known_hosts_file.clone())
        .unwrap_or_else(default_known_hosts);
    let policy = spec
        .host_key_policy
        .or(host_cfg.strict_host_key_checking.map(policy_from_config))
        .unwrap_or_default();
    let identity_files = if !spec.identity_files.is_empty() {
        spec.identity_files.clone()
    } else if let Some(files) = host_cfg.identity_file.clone().filter(|f| !f.is_empty()) {
        files
    } else {
        default_identity_files(&home)
    };
    let target = Target {
        alias: spec.address.clone(),
        host: host_cfg
            .hostname
            .clone()
            .unwrap_or_else(|| spec.address.clone()),
        port: spec.port.or(host_cfg.port).unwrap_or(22),
        user: spec
            .user
            .clone()
            .or(host_cfg.user.clone())
            .unwrap_or_else(local_user),
        identity_files: identity_files.clone(),
        known_hosts: known_hosts.clone(),
        policy,
        allow_ssh_rsa_sha1: spec.allow_ssh_rsa_sha1,
        server_alive: spec.server_alive,
    };

    let jump_value = spec
        .proxy_jump
        .clone()
        .or(host_cfg.proxy_jump.clone())
        .filter(|v| !v.trim().is_empty() && !v.trim().eq_ignore_ascii_case("none"));
    let mut jumps = Vec::new();
    if let Some(value) = jump_value {
        for hop in value.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            jumps.push(resolve_hop(
                &config_text,
                hop,
                &target,
                &identity_files,
                &home,
            )?);
        }
    }
    Ok(Route { jumps, target })
}

/// A `ProxyJump` entry `[user@]host[:port]`, resolved through ssh config like OpenSSH does.
/// Host-key file and policy follow the hop's own config, else the target's.
fn resolve_hop(
    config_text: &str,
    hop: &str,
    target: &Target,
    target_identities: &[PathBuf],
    home: &Path,
) -> Result<Target, TransportError> {
    let hop = hop.strip_prefix("ssh://").unwrap_or(hop);
    let (user, rest) = match hop.rsplit_once('@') {
        Some((u, r)) => (Some(u.to_string()), r),
        None => (None, hop),
    };
    let (name, port) = split_host_port(rest)
        .ok_or_else(|| TransportError::Config(format!("bad ProxyJump entry {hop:?}")))?;
    let cfg = lookup(config_text, &name)?;
    let mut identity_files = cfg.identity_file.clone().unwrap_or_default();
    for f in target_identities {
        if !identity_files.contains(f) {
            identity_files.push(f.clone());
        }
    }
    if identity_files.is_empty() {
        identity_files = default_identity_files(home);
    }
    Ok(Target {
        alias: name.clone(),
        host: cfg.hostname.clone().unwrap_or_else(|| name.clone()),
        port: port.or(cfg.port).unwrap_or(22),
        user: user.or(cfg.user.clone()).unwrap_or_else(local_user),
        identity_files,
        known_hosts: cfg
            .user_known_hosts_file
            .clone()
            .unwrap_or_else(|| target.known_hosts.clone()),
        policy: cfg
            .strict_host_key_checking
            .map(policy_from_config)
            .unwrap_or(target.policy),
        allow_ssh_rsa_sha1: target.allow_ssh_rsa_sha1,
        server_alive: target.server_alive,
    })
}

/// `host`, `host:port`, `[v6addr]:port`.
fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        return Some((host.to_string(), port));
    }
    match s.split_once(':') {
        Some((h, p)) if !p.contains(':') => Some((h.to_string(), Some(p.parse().ok()?))),
        _ if !s.is_empty() => Some((s.to_string(), None)),
        _ => None,
    }
}

/// OpenSSH's `StrictHostKeyChecking`: russh-config keeps only "no" (false) vs anything else.
/// `accept-new` is mapped to "no" by [`normalise`], and "no" is treated as accept-new:
/// ferry never connects to a host whose key changed.
fn policy_from_config(strict: bool) -> HostKeyPolicy {
    if strict {
        HostKeyPolicy::Yes
    } else {
        HostKeyPolicy::AcceptNew
    }
}

fn default_identity_files(home: &Path) -> Vec<PathBuf> {
    ["id_ed25519", "id_ecdsa", "id_rsa"]
        .iter()
        .map(|n| home.join(".ssh").join(n))
        .collect()
}

fn local_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "root".to_string())
}

/// The ssh config text: the inventory's file (which must exist), else `~/.ssh/config` if
/// present, else nothing.
fn read_ssh_config(spec: &ConnectSpec) -> Result<String, TransportError> {
    match &spec.ssh_config {
        Some(path) => std::fs::read_to_string(path).map_err(|e| {
            TransportError::Config(format!("cannot read ssh config {}: {e}", path.display()))
        }),
        None => {
            let Some(path) = dirs::home_dir().map(|h| h.join(".ssh").join("config")) else {
                return Ok(String::new());
            };
            match std::fs::read_to_string(&path) {
                Ok(text) => Ok(text),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
                Err(e) => Err(TransportError::Config(format!(
                    "cannot read ssh config {}: {e}",
                    path.display()
                ))),
            }
        }
    }
}

/// Settings of ssh config for `host`.
fn lookup(config_text: &str, host: &str) -> Result<russh_config::HostConfig, TransportError> {
    let text = normalise(config_text);
    russh_config::parse(&text, host)
        .map(|c| c.host_config)
        .map_err(|e| TransportError::Config(format!("ssh config: {e}")))
}

/// Rewrite ssh config text into the subset russh-config reads:
/// - `Key=Value`, `Key = Value` and tab separators become `Key Value`;
/// - options before the first `Host` line are wrapped in `Host *` (OpenSSH applies them to
///   every host; russh-config rejects them);
/// - `Match` blocks are not supported: their options are parked under a host pattern that
///   never matches, rather than applied to every host;
/// - `StrictHostKeyChecking accept-new` becomes `no` (see [`policy_from_config`]).
fn normalise(text: &str) -> String {
    let mut out = String::new();
    let mut seen_host = false;
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let split_at = line
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(line.len());
        let (key, rest) = line.split_at(split_at);
        let value = rest
            .trim_start()
            .strip_prefix('=')
            .unwrap_or(rest.trim_start())
            .trim();
        let lower = key.to_ascii_lowercase();
        match lower.as_str() {
            "host" => {
                seen_host = true;
                out.push_str(&format!("Host {value}\n"));
            }
            "match" => {
                seen_host = true;
                tracing::debug!("ssh config: `Match` blocks are not supported; ignoring one");
                out.push_str("Host !* ferry-unsupported-match-block\n");
            }
            "include" => {
                tracing::debug!("ssh config: `Include` is not supported; ignoring {value}");
            }
            _ => {
                if !seen_host {
                    seen_host = true;
                    out.push_str("Host *\n");
                }
                let value = if lower == "stricthostkeychecking"
                    && value.eq_ignore_ascii_case("accept-new")
                {
                    "no"
                } else {
                    value
                };
                out.push_str(&format!("{key} {value}\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec_with(config: &str, address: &str) -> (tempfile::TempDir, ConnectSpec) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config");
        std::fs::write(&path, config).unwrap();
        let spec = ConnectSpec {
            name: "h".into(),
            address: address.into(),
            ssh_config: Some(path),
            ..Default::default()
        };
        (dir, spec)
    }

    #[test]
    fn config_values_apply_and_spec_wins() {
        let (_d, mut spec) = spec_with(
            "User globaluser\n\
             Host web*  !web-bad\n\
             \tHostName=10.0.0.5\n\
             \tPort 2202\n\
             \tIdentityFile /keys/web\n\
             \tUserKnownHostsFile /kh/web\n\
             \tStrictHostKeyChecking accept-new\n\
             \tProxyJump jumpuser@bastion:2022,second\n\
             Host bastion\n\
             \tHostName 10.9.9.9\n\
             \tIdentityFile /keys/bastion\n\
             Host *\n\
             \tUser fallback\n",
            "web1",
        );
        let route = resolve(&spec).unwrap();
        assert_eq!(route.target.host, "10.0.0.5");
        assert_eq!(route.target.port, 2202);
        assert_eq!(route.target.user, "globaluser");
        assert_eq!(
            route.target.identity_files,
            vec![PathBuf::from("/keys/web")]
        );
        assert_eq!(route.target.known_hosts, PathBuf::from("/kh/web"));
        assert_eq!(route.target.policy, HostKeyPolicy::AcceptNew);
        assert_eq!(route.jumps.len(), 2);
        assert_eq!(route.jumps[0].host, "10.9.9.9");
        assert_eq!(route.jumps[0].port, 2022);
        assert_eq!(route.jumps[0].user, "jumpuser");
        assert_eq!(
            route.jumps[0].identity_files,
            vec![PathBuf::from("/keys/bastion"), PathBuf::from("/keys/web")]
        );
        assert_eq!(route.jumps[1].host, "second");
        assert_eq!(route.jumps[1].user, "globaluser");

        spec.port = Some(2999);
        spec.user = Some("inv".into());
        spec.host_key_policy = Some(HostKeyPolicy::Yes);
        spec.proxy_jump = Some("none".into());
        spec.identity_files = vec![PathBuf::from("/inv/key")];
        let route = resolve(&spec).unwrap();
        assert_eq!(route.target.port, 2999);
        assert_eq!(route.target.user, "inv");
        assert_eq!(route.target.policy, HostKeyPolicy::Yes);
        assert_eq!(route.target.identity_files, vec![PathBuf::from("/inv/key")]);
        assert!(route.jumps.is_empty());

        // Negated pattern: the block does not apply.
        spec.address = "web-bad".into();
        spec.port = None;
        let route = resolve(&spec).unwrap();
        assert_eq!(route.target.host, "web-bad");
        assert_eq!(route.target.port, 22);
    }

    #[test]
    fn missing_named_config_is_an_error() {
        let spec = ConnectSpec {
            address: "x".into(),
            ssh_config: Some(PathBuf::from("/nonexistent/ferry/config")),
            ..Default::default()
        };
        assert!(matches!(resolve(&spec), Err(TransportError::Config(_))));
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(split_host_port("h"), Some(("h".into(), None)));
        assert_eq!(split_host_port("h:22"), Some(("h".into(), Some(22))));
        assert_eq!(split_host_port("[::1]:22"), Some(("::1".into(), Some(22))));
        assert_eq!(split_host_port("h:x"), None);
    }
}
