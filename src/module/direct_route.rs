//! The route a cross-host stream takes: through the laptop (`controller`, the path every
//! stream had), or straight from the old host to the new node (`direct`), with `auto`
//! choosing direct when the old host is seen to reach the new node's sshd.
//!
//! The direct route's trust is ephemeral and narrow:
//! - the old host makes a fresh ed25519 key pair for this one stream, in a 0700
//!   directory of ferry's (`/var/tmp/ferry-direct-<tag>`): the private key never leaves
//!   the host it was made on;
//! - the new node authorizes its public key for exactly one command, the receiver ferry
//!   wrote for this stream (`restrict,from="<the old host's addresses>",command="…"`);
//! - the old host's ssh checks the node's host key strictly against a private
//!   known_hosts holding only the key ferry itself verified on its own connection to the
//!   node (never `StrictHostKeyChecking=no`);
//! - what was installed is in the journal (memo [`DIRECT_TRUST`]) before anything is
//!   installed, so a re-run after a crash anywhere removes it first; it is removed
//!   after the stream either way.
//!
//! `auto`'s probe is read-only: `ssh-keyscan` on the old host towards each candidate
//! address of the node (`direct_address`, or the node's own addresses), taken only when
//! the key it answers with is the key ferry verified. An address that answers with
//! another key (the old host's own docker0, a different machine) is not the node.

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::command::Cmd;
use crate::module::memo::Memo;
use crate::module::{HostReader, ModuleError, VarDecl, VarKind};
use crate::transport::{ExecOutput, Transport};

/// The old host's sender (`direct_send.py`, Python's standard library only): frames
/// the storage's archive (`send`), or sends a file (`send-file`), to its ssh.
pub const SENDER: &str = include_str!("direct_send.py");

/// Host var of the receiving host: the address (`host` or `host:port`) the old host
/// reaches its sshd at. Unset: the node's own addresses (`hostname -I`), port 22.
pub const DIRECT_ADDRESS: VarDecl = VarDecl::new("direct_address", VarKind::Str);

/// What the task asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RouteSetting {
    #[default]
    Auto,
    Direct,
    Controller,
}

impl FromStr for RouteSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(RouteSetting::Auto),
            "direct" => Ok(RouteSetting::Direct),
            "controller" => Ok(RouteSetting::Controller),
            other => Err(format!(
                "route must be \"auto\", \"direct\" or \"controller\", not {other:?}"
            )),
        }
    }
}

/// The node's sshd as the old host reaches it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectTarget {
    pub addr: String,
    pub port: u16,
    /// The user the receiver runs as on the node (ferry's user there).
    pub user: String,
    /// The node's host key as ferry verified it (`ssh-ed25519 AAAA…`).
    pub host_key: String,
}

impl DirectTarget {
    /// `addr:port` for messages.
    pub fn endpoint(&self) -> String {
        match self.addr.parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => format!("[{}]:{}", self.addr, self.port),
            _ => format!("{}:{}", self.addr, self.port),
        }
    }

    /// The private known_hosts line pinning the node's key at this address.
    pub fn known_hosts_line(&self) -> String {
        let host = if self.port == 22 {
            self.addr.clone()
        } else {
            format!("[{}]:{}", self.addr, self.port)
        };
        format!("{host} {}\n", self.host_key)
    }

    /// OpenSSH's `HostKeyAlgorithms` for the pinned key's type.
    fn host_key_algorithms(&self) -> &str {
        match self.host_key.split_whitespace().next().unwrap_or("") {
            "ssh-rsa" => "rsa-sha2-512,rsa-sha2-256",
            other => other,
        }
    }
}

/// What the facts found about the direct route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum DirectProbe {
    /// Not looked at (`route = "controller"`).
    NotAsked,
    Reachable(DirectTarget),
    /// Why not (said in the report when `auto` falls back).
    Unavailable(String),
}

/// The route a stream takes, as decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Route {
    Direct(DirectTarget),
    /// Through the laptop; `reason` when `auto` fell back.
    Controller {
        reason: Option<String>,
    },
}

impl Route {
    /// For the change's description.
    pub fn describe(&self, source_host: &str) -> String {
        match self {
            Route::Direct(t) => format!("route direct: {source_host} → {}", t.endpoint()),
            Route::Controller { reason: None } => "route controller (through the laptop)".into(),
            Route::Controller { reason: Some(r) } => {
                format!("route controller (through the laptop): auto fell back, {r}")
            }
        }
    }
}

/// Pure: the route `setting` takes given the probe.
pub fn choose(setting: RouteSetting, probe: &DirectProbe) -> Result<Route, ModuleError> {
    match (setting, probe) {
        (RouteSetting::Controller, _) => Ok(Route::Controller { reason: None }),
        (_, DirectProbe::Reachable(t)) => Ok(Route::Direct(t.clone())),
        (RouteSetting::Direct, DirectProbe::Unavailable(why)) => {
            Err(ModuleError::Precondition(format!(
                "route = \"direct\" cannot be used: {why}; set route = \"auto\" or \"controller\""
            )))
        }
        (_, DirectProbe::Unavailable(why)) => Ok(Route::Controller {
            reason: Some(why.clone()),
        }),
        (_, DirectProbe::NotAsked) => Ok(Route::Controller {
            reason: Some("the direct route was not probed".into()),
        }),
    }
}

/// `sh -c SCRIPT NAME`, to which the script's positional arguments are added.
fn sh_c(script: &str, name: &str) -> Cmd {
    Cmd::new("sh").arg("-c").arg(script).arg(name)
}

/// The tools the old host's side of the direct route runs.
const SOURCE_TOOLS: [&str; 4] = ["ssh", "ssh-keygen", "ssh-keyscan", "python3"];

/// Read-only: whether `source` reaches this host's sshd, and as what.
pub async fn probe_direct(
    probe: &HostReader,
    source_host: &str,
    source: &Arc<dyn Transport>,
) -> Result<DirectProbe, ModuleError> {
    let Some(host_key) = probe.transport.verified_host_key() else {
        return Ok(DirectProbe::Unavailable(format!(
            "ferry verified no SSH host key of {} to pin",
            probe.host
        )));
    };
    let missing = source
        .exec(
            &sh_c(
                "for t in \"$@\"; do command -v \"$t\" >/dev/null 2>&1 || echo \"$t\"; done",
                "ferry-tools",
            )
            .args(SOURCE_TOOLS),
            None,
        )
        .await?;
    let missing: Vec<String> = missing
        .stdout_str()
        .split_whitespace()
        .map(String::from)
        .collect();
    if !missing.is_empty() {
        return Ok(DirectProbe::Unavailable(format!(
            "host {source_host} has no {} (the direct route's sender needs OpenSSH's client and python3)",
            missing.join(", ")
        )));
    }
    let candidates = match probe.var_str_of(&DIRECT_ADDRESS)? {
        Some(given) => vec![parse_address(given).map_err(|e| {
            ModuleError::Precondition(format!("host var direct_address of {}: {e}", probe.host))
        })?],
        None => {
            let own = probe.exec(&Cmd::new("hostname").arg("-I")).await?;
            own.stdout_str()
                .split_whitespace()
                .filter(|a| a.parse::<IpAddr>().is_ok_and(|ip| !ip.is_loopback()))
                .map(|a| (a.to_string(), 22))
                .collect()
        }
    };
    if candidates.is_empty() {
        return Ok(DirectProbe::Unavailable(format!(
            "{} has no address other than loopback (set host var direct_address)",
            probe.host
        )));
    }
    let mut answered = Vec::new();
    let mut ports: Vec<u16> = candidates.iter().map(|c| c.1).collect();
    ports.dedup();
    for port in ports {
        let hosts: Vec<&str> = candidates
            .iter()
            .filter(|c| c.1 == port)
            .map(|c| c.0.as_str())
            .collect();
        let out = source
            .exec(
                &Cmd::new("ssh-keyscan")
                    .args(["-T", "3", "-p"])
                    .arg(port.to_string().as_str())
                    .args(hosts.iter().copied()),
                None,
            )
            .await?;
        answered.extend(parse_keyscan(&out.stdout_str(), port));
    }
    let tried = candidates
        .iter()
        .map(|(a, p)| format!("{a}:{p}"))
        .collect::<Vec<_>>()
        .join(", ");
    let Some((addr, port)) = pick(&candidates, &answered, &host_key) else {
        let other = answered.iter().any(|a| !same_key(&a.2, &host_key));
        return Ok(DirectProbe::Unavailable(if other {
            format!(
                "host {source_host} reaches an sshd at {tried} but not with {}'s host key \
                 (another machine answers there; set host var direct_address)",
                probe.host
            )
        } else {
            format!(
                "host {source_host} cannot reach {}'s sshd (tried {tried})",
                probe.host
            )
        }));
    };
    let user = probe.exec_ok(&Cmd::new("id").arg("-un")).await?;
    Ok(DirectProbe::Reachable(DirectTarget {
        addr,
        port,
        user: user.stdout_str().trim().to_string(),
        host_key,
    }))
}

/// Pure: `host` or `host:port` (`[v6]:port`).
pub fn parse_address(given: &str) -> Result<(String, u16), String> {
    let given = given.trim();
    if given.is_empty() || given.starts_with('-') || given.contains(char::is_whitespace) {
        return Err(format!("{given:?} is not an address"));
    }
    if let Some(rest) = given.strip_prefix('[') {
        let (host, port) = rest
            .split_once("]:")
            .ok_or_else(|| format!("{given:?}: expected [v6-address]:port"))?;
        let port = port.parse().map_err(|_| format!("{given:?}: bad port"))?;
        return Ok((host.to_string(), port));
    }
    if given.parse::<IpAddr>().is_ok() {
        return Ok((given.to_string(), 22));
    }
    match given.rsplit_once(':') {
        Some((host, port)) => Ok((
            host.to_string(),
            port.parse().map_err(|_| format!("{given:?}: bad port"))?,
        )),
        None => Ok((given.to_string(), 22)),
    }
}

/// Pure: `ssh-keyscan`'s key lines as (host, port, "type base64").
pub fn parse_keyscan(out: &str, port: u16) -> Vec<(String, u16, String)> {
    out.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let host = f.next()?;
            let key = format!("{} {}", f.next()?, f.next()?);
            let host = match host.strip_prefix('[') {
                Some(rest) => rest.split_once("]:").map(|(h, _)| h)?.to_string(),
                None => host.to_string(),
            };
            Some((host, port, key))
        })
        .collect()
}

fn same_key(a: &str, b: &str) -> bool {
    a.split_whitespace()
        .take(2)
        .eq(b.split_whitespace().take(2))
}

/// Pure: the first candidate that answered with `host_key`.
pub fn pick(
    candidates: &[(String, u16)],
    answered: &[(String, u16, String)],
    host_key: &str,
) -> Option<(String, u16)> {
    candidates
        .iter()
        .find(|(a, p)| {
            answered
                .iter()
                .any(|(h, q, k)| h == a && q == p && same_key(k, host_key))
        })
        .cloned()
}

// ---------------------------------------------------------------------------------------
// The ephemeral trust

/// What one direct stream installed, recorded before it is installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustRecord {
    /// Marks the authorized_keys line and names the directory (`ferry-direct-<hex>`).
    pub tag: String,
    pub source_host: String,
    /// The old host's directory (key pair, known_hosts, sender).
    pub source_dir: String,
    /// The node's authorized_keys file the line went into.
    pub authorized_keys: String,
    /// Files ferry wrote on the node for it (the receiver).
    pub node_files: Vec<String>,
}

/// Memo of the task that streams directly: its trust while it may be installed.
pub const DIRECT_TRUST: Memo<Option<TrustRecord>> = Memo::new("direct_trust");

/// An installed trust, ready for the stream.
pub struct Trust {
    pub record: TrustRecord,
    /// SHA256 fingerprint of the temporary key.
    pub fingerprint: String,
    /// The old host's ssh, as argv, to the node's receiver.
    pub ssh_argv: Vec<String>,
}

/// A fresh tag: `ferry-direct-` and 8 random bytes.
pub fn new_tag() -> Result<String, ModuleError> {
    let mut bytes = [0u8; 8];
    getrandom::getrandom(&mut bytes)
        .map_err(|e| ModuleError::Internal(format!("no randomness for a key tag: {e}")))?;
    Ok(format!("ferry-direct-{}", hex::encode(bytes)))
}

/// Where the record's pieces go, for `tag`.
pub fn plan_record(
    tag: &str,
    source_host: &str,
    authorized_keys: &str,
    receiver: &str,
) -> TrustRecord {
    TrustRecord {
        tag: tag.to_string(),
        source_host: source_host.to_string(),
        source_dir: format!("/var/tmp/{tag}"),
        authorized_keys: authorized_keys.to_string(),
        node_files: vec![receiver.to_string()],
    }
}

/// Install the trust `record` describes: key pair and pinned known_hosts on the old
/// host, the receiver script and the restricted key on this host (the node).
pub async fn install(
    node: &HostReader,
    source: &Arc<dyn Transport>,
    record: &TrustRecord,
    target: &DirectTarget,
    from: &[String],
    receiver_script: &str,
    write_receiver: &Cmd,
) -> Result<Trust, ModuleError> {
    let dir = record.source_dir.as_str();
    let key = format!("{dir}/key");
    let known_hosts = format!("{dir}/known_hosts");
    let made = source
        .exec(
            &Cmd::new("umask")
                .arg("077")
                .and(Cmd::new("mkdir").arg(dir))
                .and(
                    Cmd::new("ssh-keygen")
                        .args(["-q", "-t", "ed25519", "-N", "", "-C"])
                        .arg(record.tag.as_str())
                        .arg("-f")
                        .arg(key.as_str()),
                )
                .and(Cmd::new("cat").arg(format!("{key}.pub").as_str())),
            None,
        )
        .await?;
    let made = succeeded(made, || {
        format!(
            "cannot make the direct route's key in {dir} on host {}",
            record.source_host
        )
    })?;
    let public = made.stdout_str().trim().to_string();
    let fingerprint = russh::keys::PublicKey::from_openssh(&public)
        .map(|k| k.fingerprint(russh::keys::HashAlg::Sha256).to_string())
        .map_err(|e| ModuleError::Remote {
            what: format!(
                "the direct route's public key on host {}",
                record.source_host
            ),
            detail: e.to_string(),
        })?;
    write_file(
        source,
        &record.source_host,
        &known_hosts,
        target.known_hosts_line().as_bytes(),
    )
    .await?;
    // The node: the receiver, then the one key line that may run it.
    let receiver = record.node_files.first().map(String::as_str).unwrap_or("");
    node.exec_ok_with_input(write_receiver, receiver_script.as_bytes())
        .await?;
    let mut options = vec!["restrict".to_string()];
    if !from.is_empty() {
        options.push(format!("from=\"{}\"", from.join(",")));
    }
    options.push(format!("command=\"sh {receiver}\""));
    let line = format!(
        "{} {} {}\n",
        options.join(","),
        public
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" "),
        record.tag
    );
    let ak = record.authorized_keys.as_str();
    // The lock makes the key file's directory (0700) when it is missing.
    node.exec_ok_with_input(
        &keys_locked(ak, sh_c("umask 077; cat >>\"$1\"", "ferry-trust").arg(ak)),
        line.as_bytes(),
    )
    .await?;
    let ssh_argv = [
        "ssh",
        "-F",
        "/dev/null",
        "-i",
        &key,
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "IdentityAgent=none",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("UserKnownHostsFile={known_hosts}"),
        "-o".into(),
        "GlobalKnownHostsFile=/dev/null".into(),
        "-o".into(),
        format!("HostKeyAlgorithms={}", target.host_key_algorithms()),
        "-o".into(),
        "CheckHostIP=no".into(),
        "-o".into(),
        "ConnectTimeout=10".into(),
        "-o".into(),
        "ServerAliveInterval=15".into(),
        "-o".into(),
        "ServerAliveCountMax=4".into(),
        "-o".into(),
        "Compression=no".into(),
        // AES-GCM first, as ferry's own transport: with AES-NI the fastest OpenSSH has.
        "-o".into(),
        "Ciphers=aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com"
            .into(),
        "-o".into(),
        "LogLevel=ERROR".into(),
        "-p".into(),
        target.port.to_string(),
        "-l".into(),
        target.user.clone(),
        target.addr.clone(),
        "receive".into(),
    ])
    .collect();
    Ok(Trust {
        record: record.clone(),
        fingerprint,
        ssh_argv,
    })
}

/// `out` when its command succeeded, else the error saying `what` failed, with its stderr.
fn succeeded(out: ExecOutput, what: impl FnOnce() -> String) -> Result<ExecOutput, ModuleError> {
    if out.success() {
        Ok(out)
    } else {
        Err(ModuleError::Remote {
            what: what(),
            detail: out.stderr_str().trim().to_string(),
        })
    }
}

/// Write `content` to `path` (mode 0600) on `t`.
pub async fn write_file(
    t: &Arc<dyn Transport>,
    host: &str,
    path: &str,
    content: &[u8],
) -> Result<(), ModuleError> {
    let out = t
        .exec(
            &Cmd::new("umask")
                .arg("077")
                .and(Cmd::new("cat").op(">").arg(path)),
            Some(content),
        )
        .await?;
    succeeded(out, || format!("cannot write {path} on host {host}")).map(drop)
}

/// `cmd` (a `sh -c` command) holding the lock of the directory of the authorized_keys
/// file `ak` (`flock`, where util-linux has it): the storage stream and a transfer may
/// add and remove their keys at the same time, and an unlocked rewrite could drop the
/// other's new line or put back a line the other just removed.
fn keys_locked(ak: &str, cmd: Cmd) -> Cmd {
    let dir = ak.rsplit_once('/').map(|(d, _)| d).unwrap_or(".");
    let dir = if dir.is_empty() { "/" } else { dir };
    // The directory is made first: flock(1) creates a missing lock path as a regular
    // file, and a ~/.ssh that is a file then fails every later `mkdir -p` (a removal's
    // lock ran before the other stream's mkdir: seen in CI as "File exists", then as a
    // silent exit 1).
    sh_c(
        "d=$1; shift\n\
         (umask 077; mkdir -p -- \"$d\") 2>/dev/null\n\
         [ -d \"$d\" ] || { echo \"ferry: $d is not a directory (authorized_keys cannot be kept there)\" >&2; exit 1; }\n\
         if command -v flock >/dev/null 2>&1; then exec flock -w 60 \"$d\" \"$@\"; fi\n\
         exec \"$@\"",
        "ferry-keys-lock",
    )
    .arg(dir)
    // Only ever given `sh -c` commands built here, which are simple.
    .args(cmd.words().unwrap_or_default())
}

/// The node's side of removing `record`: its key line (matched by tag, the rest of the
/// file kept as it is, in place, under the directory's lock) and its files.
fn node_removal_cmd(record: &TrustRecord) -> Cmd {
    let ak = record.authorized_keys.as_str();
    let tmp = format!("{ak}.{}", record.tag);
    let edit = sh_c(
        "ak=$1; tmp=$2; tag=$3; shift 3\n\
         if [ -f \"$ak\" ] && grep -qF -- \"$tag\" \"$ak\"; then\n\
           grep -vF -- \"$tag\" \"$ak\" >\"$tmp\" || [ $? -eq 1 ] || exit 1\n\
           cat \"$tmp\" >\"$ak\" && rm -f \"$tmp\" || exit 1\n\
         fi\n\
         rm -f -- \"$@\"",
        "ferry-untrust",
    )
    .arg(ak)
    .arg(tmp.as_str())
    .arg(record.tag.as_str())
    .args(record.node_files.iter().map(String::as_str));
    keys_locked(ak, edit)
}

/// Remove what `record` installed, on both hosts; idempotent.
pub async fn remove(
    node: &HostReader,
    source: &Arc<dyn Transport>,
    record: &TrustRecord,
) -> Result<(), ModuleError> {
    succeeded(node.exec(&node_removal_cmd(record)).await?, || {
        format!(
            "cannot remove the direct route's key {} from {} on host {}",
            record.tag, record.authorized_keys, node.host
        )
    })?;
    // Only ever a directory this module named.
    if !record.source_dir.starts_with("/var/tmp/ferry-direct-") || record.source_dir.contains("..")
    {
        return Err(ModuleError::Internal(format!(
            "refusing to remove {}: not a direct route's directory",
            record.source_dir
        )));
    }
    let out = source
        .exec(
            &Cmd::new("rm").args(["-rf", "--", &record.source_dir]),
            None,
        )
        .await?;
    succeeded(out, || {
        format!(
            "cannot remove {} on host {}",
            record.source_dir, record.source_host
        )
    })
    .map(drop)
}

/// Read-only: whether anything of `record` is still installed (what the stream's
/// clean-up, or a crash, left).
pub async fn still_installed(
    node: &HostReader,
    source: &Arc<dyn Transport>,
    record: &TrustRecord,
) -> Result<bool, ModuleError> {
    let on_node = node
        .exec(
            &sh_c(
                "grep -qF -- \"$2\" \"$1\" 2>/dev/null && exit 0; shift 2\n\
                 for f in \"$@\"; do [ -e \"$f\" ] && exit 0; done; exit 1",
                "ferry-trusted",
            )
            .arg(record.authorized_keys.as_str())
            .arg(record.tag.as_str())
            .args(record.node_files.iter().map(String::as_str)),
        )
        .await?;
    if on_node.success() {
        return Ok(true);
    }
    let on_source = source
        .exec(&Cmd::new("test").args(["-e", &record.source_dir]), None)
        .await?;
    Ok(on_source.success())
}

/// Read-only: the addresses `source` may connect from (`from=`), its `hostname -I`.
pub async fn source_addresses(source: &Arc<dyn Transport>) -> Result<Vec<String>, ModuleError> {
    let out = source.exec(&Cmd::new("hostname").arg("-I"), None).await?;
    Ok(out
        .stdout_str()
        .split_whitespace()
        .filter(|a| a.parse::<IpAddr>().is_ok())
        .map(String::from)
        .collect())
}

/// Read-only: the authorized_keys file sshd reads for this host's user (what the
/// user's commands run as): the first `AuthorizedKeysFile` entry of `sshd -T` (with the
/// running sshd's `-f` config, if it was started with one) in the user's home (sshd's default `.ssh/authorized_keys` when it cannot say). `Err` with the
/// reason when sshd reads none there (a file ferry may not write, e.g. a managed one).
pub async fn authorized_keys_file(
    node: &HostReader,
) -> Result<Result<String, String>, ModuleError> {
    let out = node
        .exec_ok(&Cmd::script(
            "u=$(id -un) && getent passwd \"$(id -u)\" | cut -d: -f6 && echo \"$u\" && \
             { f=$(ps -o args= -C sshd 2>/dev/null | sed -n 's/.* -f \\([^ ]*\\).*/\\1/p' | head -n 1); \
               PATH=$PATH:/usr/sbin:/sbin sshd -T ${f:+-f \"$f\"} -C \"user=$u,host=localhost,addr=127.0.0.1\" \
               2>/dev/null | awk '$1 == \"authorizedkeysfile\" { $1 = \"\"; print }'; true; }",
            "sshd's AuthorizedKeysFile",
        ))
        .await?;
    let text = out.stdout_str();
    let mut lines = text.lines();
    let home = lines.next().unwrap_or("").trim().to_string();
    let user = lines.next().unwrap_or("").trim().to_string();
    let files = lines.next().unwrap_or("").to_string();
    if !home.starts_with('/') {
        return Err(ModuleError::Remote {
            what: format!("the home directory of ferry's user on host {}", node.host),
            detail: format!("getent gave {home:?}"),
        });
    }
    Ok(pick_keys_file(&home, &user, &files).ok_or_else(|| {
        format!(
            "sshd on {} reads authorized keys only from {} (none in {home}, where ferry would \
             authorize its temporary key)",
            node.host,
            files.trim()
        )
    }))
}

/// Pure: the first `AuthorizedKeysFile` entry (tokens `%h`, `%u`, `%%` expanded,
/// relative ones in `home`) that lies in `home`; sshd's default when `files` is empty.
pub fn pick_keys_file(home: &str, user: &str, files: &str) -> Option<String> {
    let home = home.trim_end_matches('/');
    let entries: Vec<&str> = files.split_whitespace().collect();
    let entries = if entries.is_empty() {
        vec![".ssh/authorized_keys"]
    } else {
        entries
    };
    entries
        .into_iter()
        .filter(|e| *e != "none")
        .map(|e| {
            let e = e
                .replace("%%", "\u{0}")
                .replace("%h", home)
                .replace("%u", user)
                .replace('\u{0}', "%");
            if e.starts_with('/') {
                e
            } else {
                format!("{home}/{e}")
            }
        })
        .find(|p| p.starts_with(&format!("{home}/")) && !p.contains("/../") && !p.contains('%'))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A removal's lock that runs before any key was added (no ~/.ssh yet) makes the
    /// directory, 0700, not a regular file that every later add then fails on.
    #[test]
    fn the_keys_lock_makes_a_missing_ssh_dir_a_directory() {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().unwrap();
        let ssh = home.path().join(".ssh");
        let ak = ssh.join("authorized_keys");
        let ak = ak.to_str().unwrap().to_string();
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(keys_locked(&ak, sh_c("true", "ferry-noop")).to_shell())
            .status()
            .unwrap();
        assert!(status.success());
        let meta = std::fs::metadata(&ssh).unwrap();
        assert!(meta.is_dir(), "{meta:?}");
        assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        // A ~/.ssh that is a file is named, not a silent failure.
        std::fs::remove_dir(&ssh).unwrap();
        std::fs::write(&ssh, "").unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(keys_locked(&ak, sh_c("true", "ferry-noop")).to_shell())
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("is not a directory"),
            "{out:?}"
        );
    }

    /// Three streams may add and remove their keys on one node at once (the storage
    /// stream beside the dump's transfer): under the directory's lock no new line is
    /// lost and no removed line comes back. Run with the real `sh` and `flock`.
    #[test]
    fn concurrent_adds_and_removals_of_keys_lose_nothing_and_bring_nothing_back() {
        let dir = tempfile::tempdir().unwrap();
        let ak = dir.path().join("authorized_keys");
        let ak = ak.to_str().unwrap().to_string();
        let old: Vec<String> = (0..12).map(|i| format!("ferry-direct-old{i:02}")).collect();
        let mut text = String::from("ssh-ed25519 AAAAkeep operator\n");
        for tag in &old {
            text.push_str(&format!("restrict ssh-ed25519 AAAA{tag} {tag}\n"));
        }
        std::fs::write(&ak, text).unwrap();
        let mut children = Vec::new();
        for (i, tag) in old.iter().enumerate() {
            let record = plan_record(tag, "old", &ak, "/nonexistent/receiver.sh");
            let remove = node_removal_cmd(&record).to_shell();
            children.push(
                std::process::Command::new("sh")
                    .arg("-c")
                    .arg(remove)
                    .spawn()
                    .unwrap(),
            );
            let new_tag = format!("ferry-direct-new{i:02}");
            let add = keys_locked(&ak, sh_c("umask 077; cat >>\"$1\"", "ferry-trust").arg(&ak));
            let mut child = std::process::Command::new("sh")
                .arg("-c")
                .arg(add.to_shell())
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin
                .write_all(format!("restrict ssh-ed25519 AAAA{new_tag} {new_tag}\n").as_bytes())
                .unwrap();
            drop(stdin);
            children.push(child);
        }
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
        let after = std::fs::read_to_string(&ak).unwrap();
        assert!(
            after.starts_with("ssh-ed25519 AAAAkeep operator\n"),
            "{after}"
        );
        for tag in &old {
            assert!(!after.contains(tag.as_str()), "{tag} came back:\n{after}");
        }
        for i in 0..12 {
            let tag = format!("ferry-direct-new{i:02}");
            assert!(after.contains(&tag), "{tag} was lost:\n{after}");
        }
    }

    fn target() -> DirectTarget {
        DirectTarget {
            addr: "172.17.0.3".into(),
            port: 22,
            user: "root".into(),
            host_key: "ssh-ed25519 AAAAnode".into(),
        }
    }

    #[test]
    fn auto_takes_direct_when_probed_and_falls_back_with_the_reason() {
        let t = target();
        assert_eq!(
            choose(RouteSetting::Auto, &DirectProbe::Reachable(t.clone())).unwrap(),
            Route::Direct(t.clone())
        );
        let why = DirectProbe::Unavailable("host old cannot reach new's sshd".into());
        let fell = choose(RouteSetting::Auto, &why).unwrap();
        assert!(fell
            .describe("old")
            .contains("auto fell back, host old cannot reach"));
        assert!(matches!(
            choose(RouteSetting::Direct, &why),
            Err(ModuleError::Precondition(m)) if m.contains("cannot reach")
        ));
        assert_eq!(
            choose(RouteSetting::Controller, &DirectProbe::Reachable(t)).unwrap(),
            Route::Controller { reason: None }
        );
    }

    #[test]
    fn only_an_address_answering_with_the_verified_key_is_the_node() {
        let candidates = vec![
            ("172.17.0.1".to_string(), 22),
            ("172.17.0.3".to_string(), 22),
        ];
        // docker0 on the old host answers too, with the old host's own key.
        let scan = "172.17.0.1 ssh-ed25519 AAAAold\n# 172.17.0.3:22 SSH-2.0-OpenSSH_9.2\n\
                    172.17.0.3 ssh-ed25519 AAAAnode\n172.17.0.3 ssh-rsa AAAArsa\n";
        let answered = parse_keyscan(scan, 22);
        assert_eq!(
            pick(&candidates, &answered, "ssh-ed25519 AAAAnode"),
            Some(("172.17.0.3".to_string(), 22))
        );
        assert_eq!(pick(&candidates, &answered, "ssh-ed25519 AAAAother"), None);
        let other_port = parse_keyscan("[10.0.0.2]:2222 ssh-ed25519 AAAAnode\n", 2222);
        assert_eq!(other_port[0].0, "10.0.0.2");
    }

    #[test]
    fn the_keys_file_is_sshds_first_one_in_the_home() {
        let pick = |files| pick_keys_file("/root", "root", files);
        assert_eq!(pick("").as_deref(), Some("/root/.ssh/authorized_keys"));
        assert_eq!(
            pick(" /etc/ssh/testbed/authorized_keys .ssh/authorized_keys").as_deref(),
            Some("/root/.ssh/authorized_keys")
        );
        assert_eq!(
            pick(" %h/.ssh/keys_%u").as_deref(),
            Some("/root/.ssh/keys_root")
        );
        assert_eq!(pick(" /etc/ssh/keys/%u"), None);
        assert_eq!(pick(" none"), None);
    }

    #[test]
    fn addresses_parse_with_and_without_ports() {
        assert_eq!(parse_address("10.0.0.2").unwrap(), ("10.0.0.2".into(), 22));
        assert_eq!(
            parse_address("node-a:2222").unwrap(),
            ("node-a".into(), 2222)
        );
        assert_eq!(
            parse_address("[fd00::2]:2222").unwrap(),
            ("fd00::2".into(), 2222)
        );
        assert_eq!(parse_address("fd00::2").unwrap(), ("fd00::2".into(), 22));
        assert!(parse_address("-oProxyCommand=x").is_err());
        assert!(parse_address("a b").is_err());
    }

    #[test]
    fn the_pinned_line_and_the_removal_name_only_this_streams_pieces() {
        let t = DirectTarget {
            port: 2222,
            ..target()
        };
        assert_eq!(
            t.known_hosts_line(),
            "[172.17.0.3]:2222 ssh-ed25519 AAAAnode\n"
        );
        assert_eq!(
            target().known_hosts_line(),
            "172.17.0.3 ssh-ed25519 AAAAnode\n"
        );
        let r = plan_record(
            "ferry-direct-00ff",
            "old",
            "/root/.ssh/authorized_keys",
            "/var/tmp/ferry/.ferry/r.sh",
        );
        assert_eq!(r.source_dir, "/var/tmp/ferry-direct-00ff");
        assert_eq!(r.authorized_keys, "/root/.ssh/authorized_keys");
        let cmd = node_removal_cmd(&r).display();
        assert!(cmd.contains("ferry-direct-00ff"), "{cmd}");
    }
}

// ---------------------------------------------------------------------------------------
// What a task that may stream directly reads, and the trust around its stream

/// What a task's facts found about the direct route (`route`: what the task asks for).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirectFacts {
    pub route: RouteSetting,
    pub probe: DirectProbe,
    /// The old host's addresses, for the key's `from=`.
    pub source_addrs: Vec<String>,
    /// The node's authorized_keys file the temporary key would go in.
    pub authorized_keys: Option<String>,
    /// What an earlier direct stream of this task left installed (a crash).
    pub trust_left: Option<TrustRecord>,
}

impl DirectFacts {
    /// Not probed (yet): `route` as asked.
    pub fn new(route: RouteSetting) -> DirectFacts {
        DirectFacts {
            route,
            probe: DirectProbe::NotAsked,
            source_addrs: Vec::new(),
            authorized_keys: None,
            trust_left: None,
        }
    }
}

/// A task's `route` argument, checked when the playbook is read (a rendering error is
/// the template pass's to report).
pub fn check_route_arg(
    route: Option<&crate::playbook::template::Template>,
    at: &crate::module::ArgCheck<'_>,
) -> Result<(), crate::module::ArgError> {
    if let Some(route) = route {
        if let Ok(value) = at.renderer.render_operand(route, at.vars) {
            value
                .parse::<RouteSetting>()
                .map_err(|e| crate::module::ArgError::template(route, e))?;
        }
    }
    Ok(())
}

/// A task's `route` argument as rendered for this host (`auto` when left out).
pub fn route_setting(
    probe: &HostReader,
    route: Option<&crate::playbook::template::Template>,
) -> Result<RouteSetting, ModuleError> {
    match route {
        Some(t) => probe
            .render_operand(t)?
            .parse::<RouteSetting>()
            .map_err(ModuleError::Precondition),
        None => Ok(RouteSetting::Auto),
    }
}

/// Read-only: what an earlier direct stream of this task left installed.
pub async fn trust_left(probe: &HostReader) -> Result<Option<TrustRecord>, ModuleError> {
    if let Some(Some(record)) = probe.own_memo(&DIRECT_TRUST)? {
        let source = probe.peer(&record.source_host).await?;
        if still_installed(probe, &source, &record).await? {
            return Ok(Some(record));
        }
    }
    Ok(None)
}

/// Read-only: probe the direct route from `source_host` into `f` (unless the task asks
/// for the controller route, or `unavailable` already says why it cannot be used).
pub async fn look(
    probe: &HostReader,
    source_host: &str,
    source: &Arc<dyn Transport>,
    unavailable: Option<String>,
    f: &mut DirectFacts,
) -> Result<(), ModuleError> {
    if f.route == RouteSetting::Controller {
        return Ok(());
    }
    f.probe = match unavailable {
        Some(why) => DirectProbe::Unavailable(why),
        None => probe_direct(probe, source_host, source).await?,
    };
    if matches!(f.probe, DirectProbe::Reachable(_)) {
        match authorized_keys_file(probe).await? {
            Ok(file) => {
                f.authorized_keys = Some(file);
                f.source_addrs = source_addresses(source).await?;
            }
            Err(why) => f.probe = DirectProbe::Unavailable(why),
        }
    }
    Ok(())
}

/// Why the direct route cannot serve a stream into ferry's work directory `work`,
/// before the network is probed: a laptop copy is asked for (only the controller route
/// passes the laptop), or the receiver's path cannot go in an authorized_keys
/// `command="…"`.
pub fn unavailable_for(probe: &HostReader, work: &str) -> Option<String> {
    if let Ok(Some(dir)) = probe.var_str_of(&crate::module::artifact_stream::BACKUP_DIR) {
        return Some(format!(
            "backup_dir ({dir}) asks for a copy on the laptop, which only the controller \
             route passes"
        ));
    }
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+@%=:,".contains(c);
    if !work.chars().all(plain) {
        return Some(format!(
            "the staging directory {work} has characters an authorized_keys command cannot hold"
        ));
    }
    None
}

/// Record (in the journal first), then install, the trust for one stream into
/// `staged` (the receiver, `receiver_script`, goes in its work directory); the route and the key's
/// fingerprint go in `notes`. The record is returned whatever happened: hand it to
/// [`close`] after the stream.
#[allow(clippy::too_many_arguments)]
pub async fn open(
    ctx: &crate::module::TaskCtx,
    source: &Arc<dyn Transport>,
    source_host: &str,
    f: &DirectFacts,
    target: &DirectTarget,
    staged: &crate::module::staged::StagedPath,
    receiver_script: &str,
    notes: &mut Vec<String>,
) -> (Option<TrustRecord>, Result<Trust, ModuleError>) {
    let Some(keys_file) = f.authorized_keys.clone() else {
        return (
            None,
            Err(ModuleError::Internal(
                "direct route without the node's authorized_keys".into(),
            )),
        );
    };
    let tag = match new_tag() {
        Ok(t) => t,
        Err(e) => return (None, Err(e)),
    };
    let receiver = format!("{}/direct-{tag}.sh", staged.work);
    let record = plan_record(&tag, source_host, &keys_file, &receiver);
    // In the journal before anything is installed: a crash from here on is cleaned up
    // by the next run.
    if let Err(e) = ctx.record_memo(&DIRECT_TRUST, &Some(record.clone())) {
        return (None, Err(e));
    }
    let write_receiver = staged.create_in_work_cmd(&receiver);
    let trust = install(
        ctx,
        source,
        &record,
        target,
        &f.source_addrs,
        receiver_script,
        &write_receiver,
    )
    .await;
    if let Ok(trust) = &trust {
        notes.push(format!(
            "route direct: {source_host} → {} ({}@{}), temporary key {} ({})",
            ctx.host,
            target.user,
            target.endpoint(),
            trust.fingerprint,
            if f.source_addrs.is_empty() {
                "from= left out: the old host's addresses are unknown".to_string()
            } else {
                format!("from={}", f.source_addrs.join(","))
            }
        ));
    }
    (Some(record), trust)
}

/// Remove what [`open`] installed; its memo is cleared once it is gone. A failure is a
/// warning: the memo stays and the next run removes it first.
pub async fn close(
    ctx: &crate::module::TaskCtx,
    source: &Arc<dyn Transport>,
    record: Option<TrustRecord>,
    applied: &mut crate::module::Applied,
) -> Result<(), ModuleError> {
    let Some(record) = record else { return Ok(()) };
    match remove(ctx, source, &record).await {
        Ok(()) => {
            ctx.record_memo(&DIRECT_TRUST, &None)?;
            applied.notes.push(format!(
                "temporary key {} removed from both hosts",
                record.tag
            ));
        }
        Err(e) => applied.warnings.push(format!(
            "the temporary key {} could not be removed ({e}); the next run removes it",
            record.tag
        )),
    }
    Ok(())
}

/// Remove what an earlier direct stream of this task left (a [`DirectFacts::trust_left`]).
pub async fn remove_left(
    ctx: &crate::module::TaskCtx,
    record: &TrustRecord,
    applied: &mut crate::module::Applied,
) -> Result<(), ModuleError> {
    let source = ctx.peer(&record.source_host).await?;
    remove(ctx, &source, record).await?;
    ctx.record_memo(&DIRECT_TRUST, &None)?;
    applied.changed = true;
    applied.notes.push(format!(
        "removed the temporary key {} an earlier direct stream left",
        record.tag
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The sender

/// What the sender prints last.
#[derive(Debug, serde::Deserialize)]
pub struct SenderResult {
    pub bytes: u64,
    pub sha256: String,
    #[serde(default)]
    pub sent_sha256: String,
    #[serde(default)]
    pub tar_rc: Option<i32>,
    #[serde(default)]
    pub ssh_rc: Option<i32>,
    #[serde(default)]
    pub far_stdout: String,
    #[serde(default)]
    pub far_stderr: String,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub hashes: std::collections::BTreeMap<String, String>,
}

/// Pure: why the sender's ssh failed before a byte arrived (refused, unreachable, key
/// not accepted: ssh's own exit 255, no answer from the receiver, the part as it was),
/// so that another route may take over; `None` when the stream got further.
pub fn refused_before_a_byte(
    r: &SenderResult,
    far_answer: &str,
    part_grew: bool,
    source_host: &str,
    host: &str,
    far_err: &str,
) -> Option<String> {
    (r.ssh_rc == Some(255) && far_answer.is_empty() && !part_grew).then(|| {
        format!(
            "ssh from {source_host} to {host} failed: {}",
            if far_err.is_empty() {
                "exit 255"
            } else {
                far_err
            }
        )
    })
}

/// Run the sender `cmd` on `source`, its progress shown under `name` (of `total`
/// bytes), until its result. Its stdin stays open while ferry waits: its EOF (ferry
/// stopped, its connection lost) stops the sender.
pub async fn run_sender(
    ctx: &crate::module::TaskCtx,
    source: &Arc<dyn Transport>,
    source_host: &str,
    cmd: &Cmd,
    name: &str,
    total: u64,
) -> Result<SenderResult, ModuleError> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut running = source.exec_stream(cmd).await?;
    let mut lines = BufReader::new(&mut running.stdout).lines();
    let mut result = None;
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => {
                if let Some(n) = line.strip_prefix("progress ") {
                    if let Ok(n) = n.trim().parse::<u64>() {
                        ctx.progress(name, n, Some(total.max(n)));
                    }
                } else if let Some(json) = line.strip_prefix("result ") {
                    result = Some(serde_json::from_str::<SenderResult>(json).map_err(|e| {
                        ModuleError::Remote {
                            what: format!("the direct sender's result on host {source_host}"),
                            detail: e.to_string(),
                        }
                    })?);
                }
            }
            Ok(None) => break,
            Err(e) => {
                return Err(ModuleError::Io {
                    what: format!("reading the direct sender on host {source_host}"),
                    source: e,
                })
            }
        }
    }
    let _ = running.stdin.shutdown().await;
    drop(running.stdin);
    let exit = running.exit.await?;
    result.ok_or_else(|| ModuleError::Remote {
        what: format!(
            "the direct sender on host {source_host} stopped without a result (exit {:?})",
            exit.status
        ),
        detail: ctx
            .secrets
            .mask(String::from_utf8_lossy(&exit.stderr).trim()),
    })
}
