//! ssh_config(5) as OpenSSH 9 reads it: the user file (or the one file `-F`/the inventory
//! names) then the system file, first value wins per keyword (IdentityFile accumulates),
//! `Include` with globs, `Host` and `Match` blocks, and the `%` tokens ssh expands.
//!
//! [`resolve`] is what `ssh -G` prints for the keywords ferry uses; `tests/ssh_config_oracle.rs`
//! compares the two on a table of files.

use std::path::{Path, PathBuf};

use super::known_hosts::glob_match;
use crate::transport::TransportError;

/// OpenSSH's `READCONF_MAX_DEPTH`: nested `Include`s deeper than this are an error.
const MAX_INCLUDE_DEPTH: usize = 16;

/// Who and where the local side is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Local {
    /// The home directory of the passwd entry (see [`Local::current`]).
    pub home: PathBuf,
    /// The passwd entry's name.
    pub user: String,
    pub uid: u32,
    /// This machine's host name (`%l`).
    pub hostname: String,
}

impl Local {
    /// The user ferry runs as. Home and name come from the passwd entry of the real uid,
    /// as ssh takes them from `getpwuid(getuid())` and never from `$HOME`: a `sudo -E` or
    /// a service manager that leaves another user's `$HOME` behind must not make ferry
    /// read that user's ssh config and keys. `$HOME`/`$USER` only when the uid has no
    /// passwd entry (a container started with an arbitrary uid).
    pub fn current() -> Local {
        let uid = rustix::process::getuid().as_raw();
        let (user, home) = passwd_user(uid);
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".to_string());
        Local {
            home,
            user,
            uid,
            hostname,
        }
    }
}

/// Name and home directory of `uid` as ssh takes them (see [`Local::current`]).
pub(crate) fn passwd_user(uid: u32) -> (String, PathBuf) {
    let entry = std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| passwd_entry(&text, uid));
    match entry {
        Some((name, home)) => (name, PathBuf::from(home)),
        None => (
            std::env::var("USER")
                .or_else(|_| std::env::var("LOGNAME"))
                .unwrap_or_else(|_| uid.to_string()),
            std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/")),
        ),
    }
}

/// Name and home directory of `uid` in passwd-format `text`.
fn passwd_entry(text: &str, uid: u32) -> Option<(String, String)> {
    text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        match f.as_slice() {
            [name, _, id, _, _, home, ..] if id.parse::<u32>().ok() == Some(uid) => {
                Some((name.to_string(), home.to_string()))
            }
            _ => None,
        }
    })
}

/// Which files to read, as ssh does: `-F file` (the inventory's `ssh_config`) replaces
/// both the user and the system file.
#[derive(Debug, Clone)]
pub(crate) enum Files {
    /// One file, which must exist (read as a user file: relative `Include`s are under
    /// `~/.ssh`).
    Named(PathBuf),
    /// `~/.ssh/config` if present, then the system file (`/etc/ssh/ssh_config`) if present.
    Default { user: PathBuf, system: PathBuf },
}

impl Files {
    pub fn standard(local: &Local) -> Files {
        Files::Default {
            user: local.home.join(".ssh").join("config"),
            system: PathBuf::from("/etc/ssh/ssh_config"),
        }
    }
}

/// What the command line fixes before any file is read (`ssh -l user -p port host`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Query {
    pub host: String,
    pub user: Option<String>,
    pub port: Option<u16>,
}

/// `StrictHostKeyChecking`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Strict {
    Yes,
    No,
    Ask,
    AcceptNew,
}

impl Strict {
    /// The name `ssh -G` prints.
    pub fn dump(self) -> &'static str {
        match self {
            Strict::Yes => "true",
            Strict::No => "false",
            Strict::Ask => "ask",
            Strict::AcceptNew => "accept-new",
        }
    }
}

/// The values set by the config files (before defaults and token expansion).
#[derive(Debug, Clone, Default)]
struct Values {
    hostname: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    identity_files: Vec<String>,
    identities_only: Option<bool>,
    user_known_hosts: Option<Vec<String>>,
    global_known_hosts: Option<Vec<String>>,
    strict: Option<Strict>,
    hash_known_hosts: Option<bool>,
    proxy_jump: Option<String>,
    proxy_command: Option<String>,
    connect_timeout: Option<Option<u64>>,
    server_alive_interval: Option<u64>,
    server_alive_count_max: Option<u64>,
    host_key_alias: Option<String>,
}

/// A host's settings, with ssh's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    /// The name given (`%n`).
    pub original: String,
    /// `HostName` with `%h` expanded, lowercased as ssh does (`%h`).
    pub hostname: String,
    pub port: u16,
    pub user: String,
    /// As written (`ssh -G` prints them unexpanded); see [`Resolved::identity_paths`].
    pub identity_files: Vec<String>,
    pub identities_only: bool,
    /// Expanded (`~` and tokens).
    pub user_known_hosts: Vec<PathBuf>,
    /// Whether the files set UserKnownHostsFile (else the defaults above).
    pub user_known_hosts_set: bool,
    pub global_known_hosts: Vec<PathBuf>,
    pub strict: Strict,
    pub hash_known_hosts: bool,
    /// `None` also when the value is `none`.
    pub proxy_jump: Option<String>,
    /// As written; see [`Resolved::proxy_command_line`].
    pub proxy_command: Option<String>,
    pub connect_timeout: Option<u64>,
    pub server_alive_interval: u64,
    pub server_alive_count_max: u64,
    /// Set by the config (not defaults): whether ferry's own defaults may apply instead.
    pub server_alive_interval_set: bool,
    pub server_alive_count_max_set: bool,
    tokens: Tokens,
}

impl Resolved {
    /// IdentityFile entries with `~` and tokens expanded.
    pub fn identity_paths(&self, local: &Local) -> Result<Vec<PathBuf>, TransportError> {
        self.identity_files
            .iter()
            .map(|f| {
                Ok(PathBuf::from(
                    self.tokens.expand(&tilde(f, local), "IdentityFile")?,
                ))
            })
            .collect()
    }

    /// ProxyCommand with `%h %n %p %r %%` expanded (what ssh runs through the shell).
    pub fn proxy_command_line(&self) -> Result<Option<String>, TransportError> {
        match &self.proxy_command {
            None => Ok(None),
            Some(c) => Ok(Some(self.tokens.expand_only(c, "hnpr", "ProxyCommand")?)),
        }
    }

    /// The keywords of `ssh -G` this resolver covers, in its spelling.
    pub fn dump(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = vec![
            ("hostname".into(), self.hostname.clone()),
            ("port".into(), self.port.to_string()),
            ("user".into(), self.user.clone()),
        ];
        for f in &self.identity_files {
            out.push(("identityfile".into(), f.clone()));
        }
        let join = |v: &[PathBuf]| {
            v.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        };
        out.push(("identitiesonly".into(), yes_no(self.identities_only).into()));
        out.push(("userknownhostsfile".into(), join(&self.user_known_hosts)));
        out.push((
            "globalknownhostsfile".into(),
            join(&self.global_known_hosts),
        ));
        out.push(("stricthostkeychecking".into(), self.strict.dump().into()));
        out.push((
            "hashknownhosts".into(),
            yes_no(self.hash_known_hosts).into(),
        ));
        if let Some(j) = &self.proxy_jump {
            out.push(("proxyjump".into(), j.clone()));
        }
        if let Some(c) = &self.proxy_command {
            out.push(("proxycommand".into(), c.clone()));
        }
        out.push((
            "connecttimeout".into(),
            self.connect_timeout
                .map(|t| t.to_string())
                .unwrap_or_else(|| "none".into()),
        ));
        out.push((
            "serveraliveinterval".into(),
            self.server_alive_interval.to_string(),
        ));
        out.push((
            "serveralivecountmax".into(),
            self.server_alive_count_max.to_string(),
        ));
        out
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Resolve `query` through `files` as `ssh -G` does (without hostname canonicalisation).
pub(crate) fn resolve(
    files: &Files,
    query: &Query,
    local: &Local,
) -> Result<Resolved, TransportError> {
    let mut values = Values {
        user: query.user.clone(),
        port: query.port,
        ..Default::default()
    };
    let mut want_final = false;
    read_files(
        files,
        query,
        local,
        &query.host,
        false,
        &mut want_final,
        &mut values,
    )?;
    // As ssh.c: the host is now HostName (with `%h` expanded), lowercased.
    let host = match &values.hostname {
        Some(h) => expand_hostname(h, &query.host)?,
        None => query.host.clone(),
    }
    .to_ascii_lowercase();
    if want_final {
        // `Match final` somewhere: ssh reads every file again with the final host name,
        // `final` (and `canonical`) now matching; values set on the first pass stay.
        values.hostname = Some(host.clone());
        let mut ignored = false;
        read_files(files, query, local, &host, true, &mut ignored, &mut values)?;
    }
    finish(values, query, local, host)
}

/// Expand `%h` (and `%%`) in a HostName value.
fn expand_hostname(value: &str, host: &str) -> Result<String, TransportError> {
    let t = Tokens {
        pairs: vec![('h', host.to_string())],
    };
    t.expand(value, "HostName")
}

fn finish(
    v: Values,
    query: &Query,
    local: &Local,
    host: String,
) -> Result<Resolved, TransportError> {
    let port = v.port.unwrap_or(22);
    let user = v.user.clone().unwrap_or_else(|| local.user.clone());
    let jump_host = v
        .proxy_jump
        .as_deref()
        .filter(|j| !j.eq_ignore_ascii_case("none"))
        .and_then(|j| j.rsplit(',').next())
        .map(|last| {
            let last = last.rsplit_once('@').map(|(_, h)| h).unwrap_or(last);
            last.split(':').next().unwrap_or(last).to_string()
        })
        .unwrap_or_default();
    let tokens = Tokens::client(local, &host, &query.host, port, &user, &jump_host, &v);
    let expand_files = |files: &[String]| -> Result<Vec<PathBuf>, TransportError> {
        files
            .iter()
            .map(|f| {
                Ok(PathBuf::from(
                    tokens.expand(&tilde(f, local), "UserKnownHostsFile")?,
                ))
            })
            .collect()
    };
    let user_known_hosts_set = v.user_known_hosts.is_some();
    let user_known_hosts = expand_files(&v.user_known_hosts.clone().unwrap_or_else(|| {
        vec![
            "~/.ssh/known_hosts".to_string(),
            "~/.ssh/known_hosts2".to_string(),
        ]
    }))?;
    let global_known_hosts = v
        .global_known_hosts
        .clone()
        .unwrap_or_else(|| {
            vec![
                "/etc/ssh/ssh_known_hosts".to_string(),
                "/etc/ssh/ssh_known_hosts2".to_string(),
            ]
        })
        .into_iter()
        .map(PathBuf::from)
        .collect();
    Ok(Resolved {
        original: query.host.clone(),
        hostname: host,
        port,
        user,
        identity_files: v.identity_files,
        identities_only: v.identities_only.unwrap_or(false),
        user_known_hosts,
        user_known_hosts_set,
        global_known_hosts,
        strict: v.strict.unwrap_or(Strict::Ask),
        hash_known_hosts: v.hash_known_hosts.unwrap_or(false),
        proxy_jump: v.proxy_jump.filter(|j| !j.eq_ignore_ascii_case("none")),
        proxy_command: v.proxy_command.filter(|c| !c.eq_ignore_ascii_case("none")),
        connect_timeout: v.connect_timeout.flatten(),
        server_alive_interval: v.server_alive_interval.unwrap_or(0),
        server_alive_count_max: v.server_alive_count_max.unwrap_or(3),
        server_alive_interval_set: v.server_alive_interval.is_some(),
        server_alive_count_max_set: v.server_alive_count_max.is_some(),
        tokens,
    })
}

/// `~` and `~/...` → the passwd home (ssh's `tilde_expand_filename`).
fn tilde(path: &str, local: &Local) -> String {
    if path == "~" {
        local.home.display().to_string()
    } else if let Some(rest) = path.strip_prefix("~/") {
        local.home.join(rest).display().to_string()
    } else {
        path.to_string()
    }
}

/// The `%` tokens of one expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tokens {
    pairs: Vec<(char, String)>,
}

impl Tokens {
    /// ssh's `DEFAULT_CLIENT_PERCENT_EXPAND_ARGS` (IdentityFile, UserKnownHostsFile).
    fn client(
        local: &Local,
        host: &str,
        original: &str,
        port: u16,
        user: &str,
        jump_host: &str,
        v: &Values,
    ) -> Tokens {
        let short = local
            .hostname
            .split('.')
            .next()
            .unwrap_or_default()
            .to_string();
        let port = port.to_string();
        Tokens {
            pairs: vec![
                (
                    'C',
                    connection_hash(&local.hostname, host, &port, user, jump_host),
                ),
                ('L', short),
                ('i', local.uid.to_string()),
                (
                    'k',
                    v.host_key_alias.clone().unwrap_or_else(|| host.to_string()),
                ),
                ('l', local.hostname.clone()),
                ('n', original.to_string()),
                ('p', port),
                ('d', local.home.display().to_string()),
                ('h', host.to_string()),
                ('r', user.to_string()),
                ('u', local.user.clone()),
                ('j', jump_host.to_string()),
            ],
        }
    }

    /// Expand every `%x`; an unknown token is an error, as in ssh.
    fn expand(&self, text: &str, keyword: &str) -> Result<String, TransportError> {
        let all: String = self.pairs.iter().map(|(c, _)| *c).collect();
        self.expand_only(text, &all, keyword)
    }

    fn expand_only(
        &self,
        text: &str,
        allowed: &str,
        keyword: &str,
    ) -> Result<String, TransportError> {
        let mut out = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c != '%' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('%') => out.push('%'),
                Some(t) => match self.pairs.iter().find(|(k, _)| *k == t) {
                    Some((_, v)) if allowed.contains(t) => out.push_str(v),
                    _ => {
                        return Err(TransportError::Config(format!(
                            "ssh config: unknown token %{t} in {keyword} {text:?}"
                        )))
                    }
                },
                None => {
                    return Err(TransportError::Config(format!(
                        "ssh config: a lone % at the end of {keyword} {text:?}"
                    )))
                }
            }
        }
        Ok(out)
    }
}

/// `%C`: SHA-1 (hex) of local host name, host, port, user and jump host, as ssh's
/// `ssh_connection_hash`.
fn connection_hash(local_host: &str, host: &str, port: &str, user: &str, jump: &str) -> String {
    use sha1::Digest;
    let mut h = sha1::Sha1::new();
    for part in [local_host, host, port, user, jump] {
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

/// State of one pass over the files.
struct Pass<'a> {
    query: &'a Query,
    local: &'a Local,
    /// What `Host` matches: the name given on the first pass, HostName on the final one.
    host: &'a str,
    final_pass: bool,
    want_final: &'a mut bool,
    values: &'a mut Values,
}

fn read_files(
    files: &Files,
    query: &Query,
    local: &Local,
    host: &str,
    final_pass: bool,
    want_final: &mut bool,
    values: &mut Values,
) -> Result<(), TransportError> {
    let mut pass = Pass {
        query,
        local,
        host,
        final_pass,
        want_final,
        values,
    };
    match files {
        Files::Named(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                TransportError::Config(format!("cannot read ssh config {}: {e}", path.display()))
            })?;
            pass.read_text(&text, path, true, false, 0)
        }
        Files::Default { user, system } => {
            for (path, user_conf) in [(user, true), (system, false)] {
                match std::fs::read_to_string(path) {
                    Ok(text) => pass.read_text(&text, path, user_conf, false, 0)?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(TransportError::Config(format!(
                            "cannot read ssh config {}: {e}",
                            path.display()
                        )))
                    }
                }
            }
            Ok(())
        }
    }
}

impl Pass<'_> {
    /// One file. `never_match`: included from an inactive block, so nothing in it applies.
    fn read_text(
        &mut self,
        text: &str,
        path: &Path,
        user_conf: bool,
        never_match: bool,
        depth: usize,
    ) -> Result<(), TransportError> {
        let mut active = !never_match;
        for (idx, raw) in text.lines().enumerate() {
            let at = || format!("{} line {}", path.display(), idx + 1);
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let split_at = line
                .find(|c: char| c.is_whitespace() || c == '=')
                .unwrap_or(line.len());
            let (key, rest) = line.split_at(split_at);
            let rest = rest.trim_start();
            let rest = rest.strip_prefix('=').unwrap_or(rest).trim_start();
            let key = key.to_ascii_lowercase();
            let args = split_args(rest)
                .map_err(|e| TransportError::Config(format!("ssh config {}: {e}", at())))?;
            match key.as_str() {
                "host" => {
                    active = !never_match && self.host_matches(&args);
                }
                "match" => {
                    let m = self
                        .match_line(&args)
                        .map_err(|e| TransportError::Config(format!("ssh config {}: {e}", at())))?;
                    active = !never_match && m;
                }
                "include" => {
                    if depth >= MAX_INCLUDE_DEPTH {
                        return Err(TransportError::Config(format!(
                            "ssh config {}: too many nested Include files",
                            at()
                        )));
                    }
                    for arg in &args {
                        for file in self.include_paths(arg, user_conf) {
                            let text = match std::fs::read_to_string(&file) {
                                Ok(t) => t,
                                // As ssh: an unreadable match of the glob is skipped.
                                Err(e) => {
                                    tracing::debug!("ssh config: skipping {}: {e}", file.display());
                                    continue;
                                }
                            };
                            self.read_text(&text, &file, user_conf, !active, depth + 1)?;
                        }
                    }
                }
                _ if !active => {}
                _ => self
                    .set(&key, rest, &args)
                    .map_err(|e| TransportError::Config(format!("ssh config {}: {e}", at())))?,
            }
        }
        Ok(())
    }

    /// `Host` patterns against the host (case-sensitive, as ssh's `match_pattern`); a
    /// matching `!pattern` rejects the block.
    fn host_matches(&self, patterns: &[String]) -> bool {
        let mut matched = false;
        for p in patterns {
            if let Some(neg) = p.strip_prefix('!') {
                if glob_match(neg, self.host) {
                    return false;
                }
            } else if glob_match(p, self.host) {
                matched = true;
            }
        }
        matched
    }

    /// The files an `Include` argument names (sorted glob matches, as glob(3)).
    fn include_paths(&self, arg: &str, user_conf: bool) -> Vec<PathBuf> {
        let path = if user_conf && arg.starts_with('~') {
            tilde(arg, self.local)
        } else if arg.starts_with('/') {
            arg.to_string()
        } else if user_conf {
            self.local.home.join(".ssh").join(arg).display().to_string()
        } else {
            format!("/etc/ssh/{arg}")
        };
        let mut out = glob_paths(&path);
        out.sort();
        out
    }

    /// A `Match` line's criteria, all of which must hold.
    fn match_line(&mut self, args: &[String]) -> Result<bool, String> {
        let host_arg = self.query.host.as_str();
        let port = self.values.port.unwrap_or(22);
        let ruser = self
            .values
            .user
            .clone()
            .unwrap_or_else(|| self.local.user.clone());
        // ssh's match_cfg_line: HostName as known so far.
        let host = if self.final_pass {
            self.values
                .hostname
                .clone()
                .unwrap_or_else(|| host_arg.into())
        } else {
            match &self.values.hostname {
                Some(h) => expand_hostname(h, host_arg).map_err(|e| e.to_string())?,
                None => host_arg.to_string(),
            }
        };
        let mut result = true;
        let mut iter = args.iter();
        if args.is_empty() {
            return Err("Match needs criteria".into());
        }
        while let Some(raw) = iter.next() {
            let (negate, attrib) = match raw.strip_prefix('!') {
                Some(a) => (true, a),
                None => (false, raw.as_str()),
            };
            let attrib = attrib.to_ascii_lowercase();
            let r = match attrib.as_str() {
                "all" => {
                    if args.len() > 1
                        && !args.iter().all(|a| {
                            let a = a.trim_start_matches('!').to_ascii_lowercase();
                            matches!(a.as_str(), "all" | "canonical" | "final")
                        })
                    {
                        return Err("`Match all` must stand alone".into());
                    }
                    true
                }
                "canonical" | "final" => {
                    if attrib == "final" {
                        *self.want_final = true;
                    }
                    self.final_pass
                }
                _ => {
                    let Some(arg) = iter.next() else {
                        return Err(format!("Match {attrib} needs an argument"));
                    };
                    match attrib.as_str() {
                        "host" => pattern_list(&host, arg, true),
                        "originalhost" => pattern_list(host_arg, arg, true),
                        "user" => pattern_list(&ruser, arg, false),
                        "localuser" => pattern_list(&self.local.user, arg, false),
                        "exec" => {
                            if !result {
                                // As ssh: no command runs once the line cannot match.
                                false
                            } else {
                                let jump = String::new();
                                let mut t = Tokens::client(
                                    self.local,
                                    &host,
                                    host_arg,
                                    port,
                                    &ruser,
                                    &jump,
                                    self.values,
                                );
                                t.pairs.retain(|(c, _)| *c != 'i' && *c != 'j');
                                let cmd = t.expand(arg, "Match exec").map_err(|e| e.to_string())?;
                                run_exec(&cmd)
                            }
                        }
                        other => {
                            // localnetwork, tagged, ...: not supported by ferry.
                            tracing::warn!(
                                "ssh config: `Match {other}` is not supported by ferry; \
                                 the block does not apply"
                            );
                            return Ok(false);
                        }
                    }
                }
            };
            if r == negate {
                result = false;
            }
        }
        Ok(result)
    }

    /// One keyword of an active block: the first value wins.
    fn set(&mut self, key: &str, rest: &str, args: &[String]) -> Result<(), String> {
        let v = &mut *self.values;
        let first = || {
            args.first()
                .cloned()
                .ok_or_else(|| format!("{key} needs a value"))
        };
        let number = |s: String| {
            s.parse::<u64>()
                .map_err(|_| format!("{key}: {s:?} is not a number"))
        };
        let boolean = |s: String| match s.to_ascii_lowercase().as_str() {
            "yes" | "true" => Ok(true),
            "no" | "false" => Ok(false),
            _ => Err(format!("{key}: {s:?} is not yes or no")),
        };
        match key {
            "hostname" => {
                let value = first()?;
                v.hostname.get_or_insert(value);
            }
            "port" => {
                let value = first()?;
                let port = value
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("bad port {value:?}"))?;
                v.port.get_or_insert(port);
            }
            "user" => {
                let value = first()?;
                v.user.get_or_insert(value);
            }
            "identityfile" => {
                let value = first()?;
                if !v.identity_files.contains(&value) {
                    v.identity_files.push(value);
                }
            }
            "identitiesonly" => {
                let b = boolean(first()?)?;
                v.identities_only.get_or_insert(b);
            }
            "userknownhostsfile" => {
                if args.is_empty() {
                    return Err(format!("{key} needs a value"));
                }
                v.user_known_hosts.get_or_insert(args.to_vec());
            }
            "globalknownhostsfile" => {
                if args.is_empty() {
                    return Err(format!("{key} needs a value"));
                }
                v.global_known_hosts.get_or_insert(args.to_vec());
            }
            "stricthostkeychecking" => {
                let value = first()?;
                let s = match value.to_ascii_lowercase().as_str() {
                    "yes" | "true" => Strict::Yes,
                    "no" | "false" | "off" => Strict::No,
                    "ask" => Strict::Ask,
                    "accept-new" => Strict::AcceptNew,
                    _ => return Err(format!("{key}: unknown value {value:?}")),
                };
                v.strict.get_or_insert(s);
            }
            "hashknownhosts" => {
                let b = boolean(first()?)?;
                v.hash_known_hosts.get_or_insert(b);
            }
            // ProxyJump and ProxyCommand: whichever comes first wins (readconf.c).
            "proxyjump" => {
                let value = first()?;
                if v.proxy_jump.is_none() && v.proxy_command.is_none() {
                    v.proxy_jump = Some(value);
                }
            }
            "proxycommand" => {
                // The rest of the line as written (ssh does not split it into words).
                if rest.is_empty() {
                    return Err(format!("{key} needs a value"));
                }
                if v.proxy_jump.is_none() && v.proxy_command.is_none() {
                    v.proxy_command = Some(rest.to_string());
                }
            }
            "connecttimeout" => {
                let value = first()?;
                let t = if value.eq_ignore_ascii_case("none") {
                    None
                } else {
                    Some(number(value)?)
                };
                v.connect_timeout.get_or_insert(t);
            }
            "serveraliveinterval" => {
                let n = number(first()?)?;
                v.server_alive_interval.get_or_insert(n);
            }
            "serveralivecountmax" => {
                let n = number(first()?)?;
                v.server_alive_count_max.get_or_insert(n);
            }
            "hostkeyalias" => {
                let value = first()?;
                v.host_key_alias.get_or_insert(value);
            }
            other => tracing::trace!("ssh config: ignoring {other}"),
        }
        Ok(())
    }
}

/// Run a `Match exec` command as ssh does (`$SHELL -c`, stdin and stdout on /dev/null):
/// exit status 0 matches.
fn run_exec(cmd: &str) -> bool {
    let shell = std::env::var("SHELL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "/bin/sh".into());
    std::process::Command::new(shell)
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// ssh's `match_pattern_list`: comma-separated globs; a matching `!pattern` rejects.
fn pattern_list(text: &str, list: &str, lower: bool) -> bool {
    let mut got = false;
    for p in list.split(',') {
        let p = if lower {
            p.to_ascii_lowercase()
        } else {
            p.to_string()
        };
        if let Some(neg) = p.strip_prefix('!') {
            if glob_match(neg, text) {
                return false;
            }
        } else if glob_match(&p, text) {
            got = true;
        }
    }
    got
}

/// Split a value into words as ssh's `argv_split`: whitespace separates, `"..."` and
/// `'...'` quote, a backslash escapes a quote, a backslash or (unquoted) a space, and a
/// `#` starting a word ends the line.
fn split_args(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.peek() {
            None | Some('#') => break,
            _ => {}
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        while let Some(&c) = chars.peek() {
            if quote.is_none() && c.is_whitespace() {
                break;
            }
            chars.next();
            match c {
                '\\' => match chars.peek() {
                    Some(&n)
                        if n == '"' || n == '\'' || n == '\\' || (quote.is_none() && n == ' ') =>
                    {
                        word.push(n);
                        chars.next();
                    }
                    _ => word.push(c),
                },
                '"' | '\'' if quote.is_none() => quote = Some(c),
                _ if Some(c) == quote => quote = None,
                _ => word.push(c),
            }
        }
        if quote.is_some() {
            return Err("unterminated quote".into());
        }
        out.push(word);
    }
    Ok(out)
}

/// Expand `*`, `?` in the path's components against the file system (glob(3) for
/// `Include`); a path without wildcards is returned as is if it exists.
fn glob_paths(path: &str) -> Vec<PathBuf> {
    let mut found = vec![PathBuf::from("/")];
    let relative = !path.starts_with('/');
    if relative {
        found = vec![PathBuf::from(".")];
    }
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        let mut next = Vec::new();
        for base in &found {
            if comp.contains(['*', '?']) {
                let Ok(entries) = std::fs::read_dir(base) else {
                    continue;
                };
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if name.starts_with('.') && !comp.starts_with('.') {
                        continue;
                    }
                    if glob_match(comp, &name) {
                        next.push(base.join(name));
                    }
                }
            } else {
                next.push(base.join(comp));
            }
        }
        found = next;
    }
    found.retain(|p| p.exists());
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(home: &Path) -> Local {
        Local {
            home: home.to_path_buf(),
            user: "me".into(),
            uid: 1000,
            hostname: "box.example.org".into(),
        }
    }

    fn query(host: &str) -> Query {
        Query {
            host: host.into(),
            ..Default::default()
        }
    }

    #[test]
    fn passwd_lines() {
        let text = "root:x:0:0:root:/root:/bin/bash\nme:x:1000:1000::/home/me:/bin/sh\n";
        assert_eq!(
            passwd_entry(text, 1000),
            Some(("me".into(), "/home/me".into()))
        );
        assert_eq!(passwd_entry(text, 5), None);
    }

    #[test]
    fn words_quotes_and_comments() {
        assert_eq!(
            split_args(r#"a "b c" 'd e'f g\ h # tail"#).unwrap(),
            vec!["a", "b c", "d ef", "g h"]
        );
        assert_eq!(split_args("x#y").unwrap(), vec!["x#y"]);
        assert!(split_args("\"open").is_err());
    }

    #[test]
    fn user_file_then_system_file_first_value_wins() {
        let dir = tempfile::tempdir().unwrap();
        let user = dir.path().join("user");
        let system = dir.path().join("system");
        std::fs::write(
            &user,
            "Host web\n  Port 2200\n  IdentityFile ~/.ssh/web\nHost *\n  IdentityFile ~/.ssh/all\n",
        )
        .unwrap();
        std::fs::write(
            &system,
            "Include sys.d/none-*.conf\nHost *\n  Port 22\n  User sysuser\n  IdentityFile /etc/k\n  HashKnownHosts yes\n  StrictHostKeyChecking accept-new\n",
        )
        .unwrap();
        let files = Files::Default {
            user: user.clone(),
            system: system.clone(),
        };
        let l = local(dir.path());
        let r = resolve(&files, &query("web"), &l).unwrap();
        assert_eq!(r.port, 2200);
        assert_eq!(r.user, "sysuser");
        assert_eq!(r.identity_files, vec!["~/.ssh/web", "~/.ssh/all", "/etc/k"]);
        assert!(r.hash_known_hosts);
        assert_eq!(r.strict, Strict::AcceptNew);
        assert_eq!(
            r.user_known_hosts,
            vec![
                dir.path().join(".ssh/known_hosts"),
                dir.path().join(".ssh/known_hosts2")
            ]
        );
        // A missing user file: the system file alone.
        let files = Files::Default {
            user: dir.path().join("absent"),
            system,
        };
        let r = resolve(&files, &query("web"), &l).unwrap();
        assert_eq!(r.port, 22);
        // -F (Named): the system file is not read.
        let r = resolve(&Files::Named(user), &query("db"), &l).unwrap();
        assert_eq!(r.user, "me");
        assert!(!r.hash_known_hosts);
    }

    #[test]
    fn match_final_second_pass_and_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("config");
        std::fs::write(
            &cfg,
            "Host alias\n  HostName real.%h\n  IdentityFile %d/%u/%r@%h:%p-%n\n\
             Match final host real.alias\n  User finaluser\n\
             Host real.alias\n  Port 2022\n",
        )
        .unwrap();
        let l = local(dir.path());
        let r = resolve(&Files::Named(cfg), &query("alias"), &l).unwrap();
        assert_eq!(r.hostname, "real.alias");
        assert_eq!(r.user, "finaluser");
        assert_eq!(r.port, 2022);
        assert_eq!(
            r.identity_paths(&l).unwrap(),
            vec![PathBuf::from(format!(
                "{}/me/finaluser@real.alias:2022-alias",
                dir.path().display()
            ))]
        );
    }
}
