//! Starts the built simulator on a free loopback port and drives it with the real kubectl.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const KUBECTL: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.32";

/// The repository: the nearest ancestor of the compiling package that holds the
/// simulator. This file is compiled by the simulator's tests and, through `#[path]`, by
/// ferry's own (`tests/k8s_modules.rs`), whose package sits two levels higher.
pub fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .canonicalize()
        .unwrap();
    manifest_dir
        .ancestors()
        .find(|dir| dir.join("tests/k8s-sim/Cargo.toml").is_file())
        .unwrap_or_else(|| {
            panic!(
                "no ancestor of {} holds tests/k8s-sim/Cargo.toml",
                manifest_dir.display()
            )
        })
        .to_path_buf()
}

/// The simulator binary. Cargo names it to the simulator's own tests; any other package
/// of the workspace (ferry's tests) has it built here by cargo, into the same target
/// directory and profile as the running test, once per test binary. A failed build
/// fails the test: nothing is skipped.
pub fn sim_binary() -> PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_k8s-sim") {
        return PathBuf::from(path);
    }
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_sim_binary).clone()
}

fn build_sim_binary() -> PathBuf {
    // The running test is TARGET_DIR/PROFILE_DIR/deps/NAME-HASH.
    let exe = std::env::current_exe().expect("the running test's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| panic!("{} is not in TARGET/PROFILE/deps", exe.display()));
    let target_dir = profile_dir.parent().unwrap_or(profile_dir);
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .current_dir(repo_root())
        .args([
            "build",
            "--package",
            "k8s-sim",
            "--bin",
            "k8s-sim",
            "--profile",
            profile,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cargo:?} build --package k8s-sim: {e}"));
    assert!(
        output.status.success(),
        "cargo build --package k8s-sim --profile {profile} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let binary = profile_dir.join("k8s-sim");
    assert!(
        binary.is_file(),
        "cargo built k8s-sim but {} is missing",
        binary.display()
    );
    binary
}

/// The tests need root (namespaces, bind mounts), kubectl 1.32, PostgreSQL 15 and Redis.
/// Missing Debian packages are installed; anything else fails loudly. The tests of one
/// binary run in parallel: the check and the install run once per process, so two tests
/// never race for dpkg's lock (and the lock is waited for, should another apt run).
pub fn ensure_prerequisites() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(check_and_install_prerequisites);
}

fn check_and_install_prerequisites() {
    assert!(
        nix_is_root(),
        "the k8s-sim tests must run as root (pods use mount/network namespaces)"
    );
    assert!(
        Path::new(KUBECTL).exists(),
        "kubectl 1.32 is missing at {KUBECTL} (the tests use that exact static binary)"
    );
    let needed = [
        ("/usr/lib/postgresql/15/bin/postgres", "postgresql-15"),
        ("/usr/bin/redis-server", "redis-server"),
        ("/usr/bin/setpriv", "util-linux"),
    ];
    let missing: Vec<&str> = needed
        .iter()
        .filter(|(path, _)| !Path::new(path).exists())
        .map(|(_, package)| *package)
        .collect();
    if !missing.is_empty() {
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 {}",
                missing.join(" ")
            ))
            .status()
            .expect("running apt-get");
        assert!(status.success(), "apt-get install {missing:?} failed");
    }
}

fn nix_is_root() -> bool {
    // `id -u`, not libc: ferry's tests compile this file too and have no libc.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

pub struct Sim {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub openebs_base: PathBuf,
    pub port: u16,
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

impl Sim {
    pub fn start(extra_args: &[&str]) -> Sim {
        ensure_prerequisites();
        let dir = tempfile::Builder::new()
            .prefix("k8s-sim-test")
            .tempdir()
            .unwrap();
        let port = free_port();
        let kubeconfig = dir.path().join("admin.conf");
        let openebs_base = dir.path().join("openebs");
        let log = std::fs::File::create(dir.path().join("sim.log")).unwrap();
        let root = repo_root();
        let child = Command::new(sim_binary())
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--manifests")
            .arg(root.join("tests/testbed/manifests"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--openebs-base")
            .arg(&openebs_base)
            .arg("--kubeconfig-out")
            .arg(&kubeconfig)
            .arg("--src-root")
            .arg(&root)
            .args(["--start-delay-ms", "300", "--grace-ms", "200"])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting k8s-sim");
        let sim = Sim {
            child: Some(child),
            dir,
            kubeconfig,
            openebs_base,
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sim.kubeconfig.exists() {
            assert!(
                Instant::now() < deadline,
                "k8s-sim did not write its kubeconfig:\n{}",
                sim.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        sim
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sim.log")).unwrap_or_default()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(KUBECTL);
        command.env("KUBECONFIG", &self.kubeconfig).args(args);
        command
    }

    /// Run kubectl; returns the raw output whatever the exit status.
    pub fn kubectl_output(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut command = self.command(args);
        command
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("running kubectl");
        let writer = stdin.map(|data| {
            let mut pipe = child.stdin.take().unwrap();
            let data = data.to_vec();
            std::thread::spawn(move || {
                pipe.write_all(&data).unwrap();
            })
        });
        let output = child.wait_with_output().unwrap();
        if let Some(writer) = writer {
            writer.join().unwrap();
        }
        output
    }

    /// Run kubectl and require success; returns stdout.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let output = self.kubectl_output(args, None);
        assert!(
            output.status.success(),
            "kubectl {args:?} failed ({}):\nstdout: {}\nstderr: {}\n--- k8s-sim log tail ---\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            tail(&self.log(), 40)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// Wait until every workload of a namespace runs and is ready.
    pub fn wait_all_ready(&self, namespace: &str) {
        self.kubectl(&[
            "-n",
            namespace,
            "wait",
            "--for=create",
            "pod/postgres-0",
            "pod/redis-0",
            "--timeout=60s",
        ]);
        self.kubectl(&[
            "-n",
            namespace,
            "wait",
            "--for=condition=Ready",
            "pod/postgres-0",
            "pod/redis-0",
            "--timeout=90s",
        ]);
        self.kubectl(&[
            "-n",
            namespace,
            "wait",
            "--for=condition=Available",
            "deploy/ui",
            "deploy/repo",
            "deploy/worker",
            "--timeout=60s",
        ]);
    }

    /// The simulator's evict switch: pod `pod` of `namespace` is evicted (phase Failed,
    /// reason Evicted), once.
    pub fn evict(&self, namespace: &str, pod: &str) {
        let switch = self
            .dir
            .path()
            .join("state/switches/evict")
            .join(namespace)
            .join(pod);
        std::fs::create_dir_all(switch.parent().unwrap()).unwrap();
        std::fs::write(switch, "").unwrap();
    }

    pub fn pod_name(&self, namespace: &str, app: &str) -> String {
        let name = self.kubectl(&[
            "-n",
            namespace,
            "get",
            "pods",
            "-l",
            &format!("app={app}"),
            "-o",
            "jsonpath={.items[0].metadata.name}",
        ]);
        assert!(!name.is_empty(), "no pod for app={app}");
        name
    }
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM: the simulator stops its pods cleanly.
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
