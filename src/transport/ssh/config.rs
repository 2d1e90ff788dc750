//! Where and as whom to connect: the inventory's [`ConnectSpec`] merged over ssh config
//! (resolved as `ssh -G` does, see [`super::ssh_config`]), then OpenSSH's defaults.
//!
//! The inventory's fields act as ssh's command line: `port` and `user` as `-p`/`-l` (they
//! win over the files and `Match user`/`%r` see them), `ssh_config` as `-F` (it replaces
//! both the user's and the system's file); `identity_files`, `known_hosts`,
//! `host_key_checking` and `proxy_jump` replace what the files say.

use std::path::PathBuf;

use super::ssh_config::{self, Files, Local, Query, Resolved, Strict};
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
    /// `IdentitiesOnly` (recorded; ferry's agent use does not depend on it yet).
    pub identities_only: bool,
    /// UserKnownHostsFile: host keys are looked up in all of them, new ones appended to
    /// the first.
    pub known_hosts: Vec<PathBuf>,
    /// GlobalKnownHostsFile: looked up, never written.
    pub global_known_hosts: Vec<PathBuf>,
    /// `HashKnownHosts`: record new keys under a hashed name.
    pub hash_known_hosts: bool,
    pub policy: HostKeyPolicy,
    /// `ProxyCommand` with its tokens expanded: the connection is this command's stdin
    /// and stdout.
    pub proxy_command: Option<String>,
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

    /// The file new host keys go to (the first UserKnownHostsFile).
    pub fn known_hosts_file(&self) -> PathBuf {
        self.known_hosts.first().cloned().unwrap_or_default()
    }

    /// Every known_hosts file to look a key up in: the user's, then the global ones.
    pub fn all_known_hosts(&self) -> Vec<PathBuf> {
        self.known_hosts
            .iter()
            .chain(&self.global_known_hosts)
            .cloned()
            .collect()
    }
}

/// The target host and the jump hosts to go through first (in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    pub jumps: Vec<Target>,
    pub target: Target,
    /// ssh config's `ConnectTimeout` (seconds), for when the inventory sets none.
    pub connect_timeout: Option<u64>,
}

/// Resolve `spec` (plus ssh config) into the route to the host.
pub(crate) fn resolve(spec: &ConnectSpec) -> Result<Route, TransportError> {
    resolve_with(spec, &Local::current(), None)
}

/// [`resolve`] for a given local user and, unless the inventory names a file, the given
/// system file instead of `/etc/ssh/ssh_config` (tests).
pub(crate) fn resolve_with(
    spec: &ConnectSpec,
    local: &Local,
    system_file: Option<PathBuf>,
) -> Result<Route, TransportError> {
    let files = match (&spec.ssh_config, system_file) {
        (Some(path), _) => Files::Named(path.clone()),
        (None, Some(system)) => Files::Default {
            user: local.home.join(".ssh").join("config"),
            system,
        },
        (None, None) => Files::standard(local),
    };
    let cfg = ssh_config::resolve(
        &files,
        &Query {
            host: spec.address.clone(),
            user: spec.user.clone(),
            port: spec.port,
        },
        local,
    )?;
    let home = local.home.clone();

    let known_hosts = match &spec.known_hosts {
        Some(path) => vec![path.clone()],
        None => cfg.user_known_hosts.clone(),
    };
    let policy = spec
        .host_key_policy
        .unwrap_or_else(|| policy_from_config(cfg.strict));
    let identity_files = if !spec.identity_files.is_empty() {
        spec.identity_files.clone()
    } else {
        let files = cfg.identity_paths(local)?;
        if files.is_empty() {
            default_identity_files(&home)
        } else {
            files
        }
    };
    let server_alive = ServerAlive {
        interval: if spec.server_alive_set.interval || !cfg.server_alive_interval_set {
            spec.server_alive.interval
        } else if cfg.server_alive_interval == 0 {
            None
        } else {
            Some(std::time::Duration::from_secs(cfg.server_alive_interval))
        },
        count_max: if spec.server_alive_set.count_max || !cfg.server_alive_count_max_set {
            spec.server_alive.count_max
        } else {
            usize::try_from(cfg.server_alive_count_max).unwrap_or(usize::MAX)
        },
    };
    // The inventory's proxy_jump replaces both of ssh config's proxies.
    let (jump_value, proxy_command) = match &spec.proxy_jump {
        Some(j) => (Some(j.clone()), None),
        None => (cfg.proxy_jump.clone(), cfg.proxy_command_line()?),
    };
    let jump_value =
        jump_value.filter(|v| !v.trim().is_empty() && !v.trim().eq_ignore_ascii_case("none"));
    let target = Target {
        alias: spec.address.clone(),
        host: cfg.hostname.clone(),
        port: cfg.port,
        user: cfg.user.clone(),
        identity_files: identity_files.clone(),
        identities_only: cfg.identities_only,
        known_hosts,
        global_known_hosts: cfg.global_known_hosts.clone(),
        hash_known_hosts: cfg.hash_known_hosts,
        policy,
        proxy_command,
        allow_ssh_rsa_sha1: spec.allow_ssh_rsa_sha1,
        server_alive,
    };

    let mut jumps = Vec::new();
    if let Some(value) = jump_value {
        for hop in value.split(',').map(str::trim).filter(|h| !h.is_empty()) {
            jumps.push(resolve_hop(&files, local, hop, &target, &identity_files)?);
        }
    }
    Ok(Route {
        jumps,
        target,
        connect_timeout: cfg.connect_timeout,
    })
}

/// A `ProxyJump` entry `[user@]host[:port]`, resolved through ssh config like OpenSSH does
/// (`ssh -l user -p port host`). Host-key files and policy follow the hop's own config,
/// else the target's.
fn resolve_hop(
    files: &Files,
    local: &Local,
    hop: &str,
    target: &Target,
    target_identities: &[PathBuf],
) -> Result<Target, TransportError> {
    let hop = hop.strip_prefix("ssh://").unwrap_or(hop);
    let (user, rest) = match hop.rsplit_once('@') {
        Some((u, r)) => (Some(u.to_string()), r),
        None => (None, hop),
    };
    let (name, port) = split_host_port(rest)
        .ok_or_else(|| TransportError::Config(format!("bad ProxyJump entry {hop:?}")))?;
    let cfg: Resolved = ssh_config::resolve(
        files,
        &Query {
            host: name.clone(),
            user,
            port,
        },
        local,
    )?;
    let mut identity_files = cfg.identity_paths(local)?;
    for f in target_identities {
        if !identity_files.contains(f) {
            identity_files.push(f.clone());
        }
    }
    if identity_files.is_empty() {
        identity_files = default_identity_files(&local.home);
    }
    let known_hosts = if cfg.user_known_hosts_set {
        cfg.user_known_hosts.clone()
    } else {
        target.known_hosts.clone()
    };
    Ok(Target {
        alias: name.clone(),
        host: cfg.hostname.clone(),
        port: cfg.port,
        user: cfg.user.clone(),
        identity_files,
        identities_only: cfg.identities_only,
        known_hosts,
        global_known_hosts: cfg.global_known_hosts.clone(),
        hash_known_hosts: cfg.hash_known_hosts || target.hash_known_hosts,
        policy: if cfg.strict == Strict::Ask {
            target.policy
        } else {
            policy_from_config(cfg.strict)
        },
        proxy_command: None,
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

/// OpenSSH's `StrictHostKeyChecking`. `ask` has nobody to ask (ferry runs without a
/// TTY prompt for host keys) and so refuses unknown keys, as ssh does in batch mode;
/// `no`/`off` record unknown keys like `accept-new`: ferry never connects to a host whose
/// key changed, whatever the setting.
fn policy_from_config(strict: Strict) -> HostKeyPolicy {
    match strict {
        Strict::Yes | Strict::Ask => HostKeyPolicy::Yes,
        Strict::No | Strict::AcceptNew => HostKeyPolicy::AcceptNew,
    }
}

fn default_identity_files(home: &std::path::Path) -> Vec<PathBuf> {
    ["id_ed25519", "id_ecdsa", "id_rsa"]
        .iter()
        .map(|n| home.join(".ssh").join(n))
        .collect()
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
        assert_eq!(route.target.known_hosts, vec![PathBuf::from("/kh/web")]);
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
