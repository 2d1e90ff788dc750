//! Test harness: a real OpenSSH server (`/usr/sbin/sshd -D -e`) on a free 127.0.0.1 port
//! with its own sshd_config, host key and authorized_keys in a temporary directory;
//! key generation, test users and sudoers drop-ins that clean up after themselves.
//!
//! Include with `#[path = "common/sshd.rs"] mod sshd;`. Tests run as root.
#![allow(dead_code)]

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

/// Debian packages the SSH tests need, and a binary that proves each is installed.
const PACKAGES: &[(&str, &str)] = &[
    ("openssh-server", "/usr/sbin/sshd"),
    ("openssh-client", "/usr/bin/ssh-keygen"),
    ("sudo", "/usr/bin/sudo"),
    ("socat", "/usr/bin/socat"),
    ("netcat-openbsd", "/usr/bin/nc.openbsd"),
    ("tcsh", "/usr/bin/tcsh"),
];

/// Install whatever is missing (once per test binary); panic with a clear message if apt
/// cannot.
pub fn ensure_packages() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let missing: Vec<&str> = PACKAGES
            .iter()
            .filter(|(_, bin)| !Path::new(bin).exists())
            .map(|(pkg, _)| *pkg)
            .collect();
        if missing.is_empty() {
            return;
        }
        // Serialise with other test binaries doing the same.
        let mut lock =
            fd_lock::RwLock::new(std::fs::File::create("/tmp/ferry-ssh-tests-apt.lock").unwrap());
        let _guard = lock.write().unwrap();
        let still: Vec<&str> = PACKAGES
            .iter()
            .filter(|(_, bin)| !Path::new(bin).exists())
            .map(|(pkg, _)| *pkg)
            .collect();
        if still.is_empty() {
            return;
        }
        let update = Command::new("apt-get").args(["update", "-qq"]).status();
        let install = Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&still)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
        match (update, install) {
            (Ok(u), Ok(i)) if u.success() && i.success() => {}
            other => panic!(
                "the SSH tests need the Debian packages {still:?} and `apt-get install` \
                 failed ({other:?}); install them as root and rerun"
            ),
        }
    });
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A generated key pair.
pub struct KeyPair {
    pub private: PathBuf,
    /// The `.pub` line: `type base64 comment`.
    pub public: String,
}

/// `ssh-keygen -t kind` into `dir/name`; `pem` writes the legacy PEM (PKCS#1) format.
pub fn keygen(dir: &Path, name: &str, kind: &str, passphrase: &str, pem: bool) -> KeyPair {
    ensure_packages();
    let private = dir.join(name);
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", kind, "-N", passphrase, "-C", name, "-f"])
        .arg(&private);
    if kind == "rsa" {
        cmd.args(["-b", "2048"]);
    }
    if pem {
        cmd.args(["-m", "PEM"]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "ssh-keygen failed: {out:?}");
    let public = std::fs::read_to_string(private.with_extension("pub"))
        .unwrap()
        .trim()
        .to_string();
    KeyPair { private, public }
}

/// Options of one test server.
#[derive(Clone)]
pub struct SshdOptions {
    pub password_auth: bool,
    pub tcp_forwarding: bool,
    /// `LogLevel` (VERBOSE by default; DEBUG1 logs direct-tcpip targets).
    pub log_level: &'static str,
    /// Extra sshd_config lines.
    pub extra: String,
    /// Host key types (`ssh-keygen -t`), one `HostKey` each, in this order.
    pub host_key_kinds: Vec<&'static str>,
    /// Sign the first host key with a CA made for this server (`ssh-keygen -s ca -h`)
    /// for these principals (`-n`, comma-separated), and serve it as `HostCertificate`.
    pub host_certificate: Option<&'static str>,
}

impl Default for SshdOptions {
    fn default() -> Self {
        SshdOptions {
            password_auth: false,
            tcp_forwarding: true,
            log_level: "VERBOSE",
            extra: String::new(),
            host_key_kinds: vec!["ed25519"],
            host_certificate: None,
        }
    }
}

/// A running sshd, killed on drop.
pub struct Sshd {
    pub port: u16,
    pub dir: tempfile::TempDir,
    /// The (first) host key's `.pub` line.
    pub host_key: String,
    /// Every host key's `.pub` line, in `host_key_kinds` order.
    pub host_keys: Vec<String>,
    /// The CA's `.pub` line when the server has a host certificate.
    pub host_ca: Option<String>,
    child: Child,
}

impl Sshd {
    pub fn start() -> Sshd {
        Self::start_with(SshdOptions::default())
    }

    pub fn start_with(opts: SshdOptions) -> Sshd {
        ensure_packages();
        std::fs::create_dir_all("/run/sshd").unwrap();
        let dir = tempfile::Builder::new()
            .prefix("ferry-sshd-")
            .tempdir()
            .unwrap();
        // Readable by the test users (sshd reads authorized_keys as the user).
        set_mode(dir.path(), 0o755);
        let hosts: Vec<KeyPair> = opts
            .host_key_kinds
            .iter()
            .map(|kind| keygen(dir.path(), &format!("host_{kind}"), kind, "", false))
            .collect();
        let mut host_key_lines: String = hosts
            .iter()
            .map(|k| format!("HostKey {}\n", k.private.display()))
            .collect();
        let host_ca = opts.host_certificate.map(|principals| {
            let ca = keygen(dir.path(), "host_ca", "ed25519", "", false);
            let out = Command::new("ssh-keygen")
                .args(["-q", "-s"])
                .arg(&ca.private)
                .args(["-h", "-I", "ferry-test-host", "-n", principals])
                .arg(hosts[0].private.with_extension("pub"))
                .output()
                .unwrap();
            assert!(out.status.success(), "ssh-keygen -s failed: {out:?}");
            let cert = PathBuf::from(format!("{}-cert.pub", hosts[0].private.display()));
            host_key_lines.push_str(&format!("HostCertificate {}\n", cert.display()));
            ca.public
        });
        let authorized = dir.path().join("authorized_keys");
        std::fs::write(&authorized, "").unwrap();
        set_mode(&authorized, 0o644);

        // A port can be taken between probing and sshd's bind: retry a few times.
        for _attempt in 0..5 {
            let port = free_port();
            let config = dir.path().join("sshd_config");
            // SetEnv PYENV_REHASH_TIMEOUT=0: this machine's root runs `pyenv init` (and
            // its rehash, under a lock file) in every ssh session's ~/.bashrc; a session
            // a test kills mid-rehash leaves the lock behind, and every later root
            // login then waits 60 s for it. With no wait, a held lock skips the rehash
            // (the shims are there) instead of stalling the tests' logins. sshd takes
            // only the first SetEnv line: a test's own SetEnv joins this one.
            let mut setenv = String::from("SetEnv PYENV_REHASH_TIMEOUT=0");
            let mut extra = String::new();
            for line in opts.extra.lines() {
                match line.strip_prefix("SetEnv ") {
                    Some(vars) => {
                        setenv.push(' ');
                        setenv.push_str(vars);
                    }
                    None => {
                        extra.push_str(line);
                        extra.push('\n');
                    }
                }
            }
            std::fs::write(
                &config,
                format!(
                    "Port {port}\n\
                     ListenAddress 127.0.0.1\n\
                     {host_key_lines}\
                     PidFile {dir}/sshd.pid\n\
                     AuthorizedKeysFile {dir}/authorized_keys\n\
                     StrictModes no\n\
                     PermitRootLogin yes\n\
                     PubkeyAuthentication yes\n\
                     PasswordAuthentication {pw}\n\
                     KbdInteractiveAuthentication no\n\
                     UsePAM no\n\
                     AllowTcpForwarding {fwd}\n\
                     MaxSessions 64\n\
                     MaxStartups 64\n\
                     LogLevel {log_level}\n\
                     PrintMotd no\n\
                     {setenv}\n\
                     {extra}\n",
                    dir = dir.path().display(),
                    pw = yes_no(opts.password_auth),
                    fwd = yes_no(opts.tcp_forwarding),
                    log_level = opts.log_level,
                ),
            )
            .unwrap();
            let log = std::fs::File::create(dir.path().join("sshd.log")).unwrap();
            let mut child = Command::new("/usr/sbin/sshd")
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start /usr/sbin/sshd");
            if wait_for_banner(port, &mut child) {
                return Sshd {
                    port,
                    dir,
                    host_key: hosts[0].public.clone(),
                    host_keys: hosts.iter().map(|k| k.public.clone()).collect(),
                    host_ca: host_ca.clone(),
                    child,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.path().join("sshd.log")).unwrap_or_default();
        panic!("sshd did not start; its log:\n{log}");
    }

    /// Let `public` (a `.pub` line) log in as any user.
    pub fn authorize(&self, public: &str) {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("authorized_keys"))
            .unwrap();
        writeln!(f, "{public}").unwrap();
    }

    /// The known_hosts line for this server.
    pub fn known_hosts_line(&self) -> String {
        self.known_hosts_line_for(&self.host_key)
    }

    /// The known_hosts line recording `public` (a `.pub` line) for this server.
    pub fn known_hosts_line_for(&self, public: &str) -> String {
        let mut parts = public.split_whitespace();
        let (kind, key) = (parts.next().unwrap(), parts.next().unwrap());
        format!("[127.0.0.1]:{} {kind} {key}", self.port)
    }

    /// Write a known_hosts file trusting this server (and `others`).
    pub fn write_known_hosts(&self, path: &Path, others: &[&Sshd]) {
        let mut text = format!("{}\n", self.known_hosts_line());
        for o in others {
            text.push_str(&o.known_hosts_line());
            text.push('\n');
        }
        std::fs::write(path, text).unwrap();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL every process sshd forked for connections (the listener stays).
    /// Returns how many were killed.
    pub fn kill_connections(&self) -> usize {
        let victims = descendants(self.child.id());
        for pid in &victims {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        victims.len()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill_connections();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn wait_for_banner(port: u16, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 8];
            if s.read_exact(&mut buf).is_ok() && buf.starts_with(b"SSH-2.0") {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// All descendants of `root` (children first found, then theirs), from /proc.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the `(comm)`, which may itself contain spaces.
        let Some(after) = stat.rsplit_once(')').map(|(_, a)| a) else {
            continue;
        };
        let ppid = after.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if let Some(ppid) = ppid {
            parent_of.push((pid, ppid));
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for (child, parent) in &parent_of {
            if *parent == p && !out.contains(child) {
                out.push(*child);
                frontier.push(*child);
            }
        }
    }
    out
}

/// A local user created for one test (`useradd`), removed on drop with its home and any
/// sudoers drop-in made for it.
pub struct TestUser {
    pub name: String,
    pub password: String,
    sudoers: Option<PathBuf>,
}

impl TestUser {
    pub fn create(password: &str) -> TestUser {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "fy{}x{}",
            std::process::id() % 1_000_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        let out = Command::new("useradd")
            .args(["-m", "-s", "/bin/sh", &name])
            .output()
            .unwrap();
        assert!(out.status.success(), "useradd {name}: {out:?}");
        let user = TestUser {
            name,
            password: password.to_string(),
            sudoers: None,
        };
        let mut chpasswd = Command::new("chpasswd")
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(
            chpasswd.stdin.as_mut().unwrap(),
            "{}:{}",
            user.name,
            password
        )
        .unwrap();
        assert!(chpasswd.wait().unwrap().success(), "chpasswd failed");
        user
    }

    /// Allow sudo to any user; `nopasswd` without asking for the password.
    pub fn allow_sudo(&mut self, nopasswd: bool) {
        let path = PathBuf::from(format!("/etc/sudoers.d/ferry-test-{}", self.name));
        let tag = if nopasswd { "NOPASSWD: " } else { "" };
        std::fs::write(&path, format!("{} ALL=(ALL:ALL) {tag}ALL\n", self.name)).unwrap();
        set_mode(&path, 0o440);
        let check = Command::new("visudo")
            .args(["-c", "-q", "-f"])
            .arg(&path)
            .status();
        assert!(
            check.map(|s| s.success()).unwrap_or(false),
            "bad sudoers file"
        );
        self.sudoers = Some(path);
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        if let Some(p) = self.sudoers.take() {
            let _ = std::fs::remove_file(p);
        }
        // Processes of the user (its sshd sessions) would make userdel fail.
        if let Some(uid) = uid_of(&self.name) {
            for pid in processes_of_uid(uid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let _ = Command::new("userdel")
            .args(["-r", "-f", &self.name])
            .output();
    }
}

/// Lines of a file (for checking what accept-new recorded).
pub fn read_lines(path: &Path) -> Vec<String> {
    let f = std::fs::File::open(path).unwrap();
    std::io::BufReader::new(f)
        .lines()
        .map(|l| l.unwrap())
        .collect()
}

fn uid_of(user: &str) -> Option<u32> {
    let out = Command::new("id").args(["-u", user]).output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// Pids of processes running as `uid` (real uid), from /proc.
fn processes_of_uid(uid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
            continue;
        };
        let real = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|u| u.parse::<u32>().ok());
        if real == Some(uid) {
            out.push(pid);
        }
    }
    out
}

/// Client side of a test: a key authorized on the server, a known_hosts file trusting it,
/// an empty ssh config (so the machine's ~/.ssh/config never leaks into tests).
pub struct Client {
    pub dir: tempfile::TempDir,
    pub key: KeyPair,
    pub known_hosts: PathBuf,
    pub ssh_config: PathBuf,
}

impl Client {
    /// An inventory table `[hosts.NAME]` that reaches `port` on 127.0.0.1 as root with
    /// this client's key, known_hosts and ssh config; append more keys after it.
    pub fn inventory_host(&self, name: &str, port: u16) -> String {
        format!(
            "[hosts.{name}]\naddress = \"127.0.0.1\"\nport = {port}\nuser = \"root\"\nidentity_file = \"{}\"\nknown_hosts = \"{}\"\nssh_config = \"{}\"\n",
            self.key.private.display(),
            self.known_hosts.display(),
            self.ssh_config.display()
        )
    }

    pub fn new(sshd: &Sshd) -> Client {
        let dir = tempfile::Builder::new()
            .prefix("ferry-client-")
            .tempdir()
            .unwrap();
        let key = keygen(dir.path(), "id_ed25519", "ed25519", "", false);
        sshd.authorize(&key.public);
        let known_hosts = dir.path().join("known_hosts");
        sshd.write_known_hosts(&known_hosts, &[]);
        let ssh_config = dir.path().join("ssh_config");
        std::fs::write(&ssh_config, "").unwrap();
        Client {
            dir,
            key,
            known_hosts,
            ssh_config,
        }
    }

    /// A spec for root@127.0.0.1:port with this client's key and known_hosts.
    pub fn spec(&self, sshd: &Sshd) -> ferry::transport::ConnectSpec {
        ferry::transport::ConnectSpec {
            name: format!("test-{}", sshd.port),
            address: "127.0.0.1".into(),
            port: Some(sshd.port),
            user: Some("root".into()),
            identity_files: vec![self.key.private.clone()],
            known_hosts: Some(self.known_hosts.clone()),
            ssh_config: Some(self.ssh_config.clone()),
            connect_timeout: Duration::from_secs(10),
            ..Default::default()
        }
    }
}

/// Connect without any ssh-agent (tests must not depend on the caller's agent).
pub async fn connect(
    spec: ferry::transport::ConnectSpec,
) -> Result<ferry::transport::ssh::SshTransport, ferry::transport::TransportError> {
    ferry::transport::ssh::SshTransport::connect_with(
        spec,
        ferry::secrets::Secrets::new(),
        ferry::transport::ssh::SshOptions {
            agent: ferry::transport::ssh::AgentSource::Disabled,
        },
    )
    .await
}

/// The OpenSSH client command line equivalent to a [`Client`] spec (for comparisons).
pub fn openssh(sshd: &Sshd, client: &Client) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.args(["-F", "/dev/null", "-o", "BatchMode=yes", "-o"])
        .arg(format!(
            "UserKnownHostsFile={}",
            client.known_hosts.display()
        ))
        .arg("-i")
        .arg(&client.key.private)
        .args(["-p", &sshd.port.to_string(), "root@127.0.0.1"]);
    cmd
}

/// Pids of processes whose command line or environment contains `needle` (the tests run
/// as root, so this sees every user's processes, as `ps -eo args` would).
pub fn processes_showing(needle: &str) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        for file in ["cmdline", "environ"] {
            if let Ok(raw) = std::fs::read(entry.path().join(file)) {
                let text = String::from_utf8_lossy(&raw).replace('\0', " ");
                if text.contains(needle) {
                    out.push((pid, format!("{file}: {text}")));
                }
            }
        }
    }
    out
}
