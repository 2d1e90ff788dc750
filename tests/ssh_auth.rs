//! Authentication, host-key checking, ssh config and ProxyJump against real sshd.

#[path = "common/sshd.rs"]
mod sshd;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry::command::Cmd;
use ferry::transport::ssh::{AgentSource, SshOptions, SshTransport};
use ferry::transport::{ConnectSpec, HostKeyPolicy, Transport, TransportError};
use sshd::{Client, Sshd, SshdOptions, TestUser};

async fn whoami(t: &SshTransport) -> String {
    let out = t.exec(&Cmd::new("id").arg("-un"), None).await.unwrap();
    assert!(out.success(), "{}", out.stderr_str());
    out.stdout_str().trim().to_string()
}

/// An ssh-agent on its own socket, killed on drop.
struct Agent {
    child: Child,
    socket: PathBuf,
}

impl Agent {
    fn start(dir: &std::path::Path) -> Agent {
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .spawn()
            .expect("start ssh-agent");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "ssh-agent socket did not appear");
            std::thread::sleep(Duration::from_millis(20));
        }
        Agent { child, socket }
    }

    fn add(&self, key: &std::path::Path) {
        let st = Command::new("ssh-add")
            .arg(key)
            .env("SSH_AUTH_SOCK", &self.socket)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success(), "ssh-add failed");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_authentication() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let agent_key = sshd::keygen(client.dir.path(), "agent_key", "ed25519", "", false);
    server.authorize(&agent_key.public);
    let agent = Agent::start(client.dir.path());
    agent.add(&agent_key.private);

    let mut spec = client.spec(&server);
    // No usable key file: only the agent can get us in.
    spec.identity_files = vec![client.dir.path().join("absent")];

    let err = sshd::connect(spec.clone()).await.unwrap_err();
    assert!(matches!(err, TransportError::AuthFailed { .. }), "{err}");

    let t = SshTransport::connect_with(
        spec,
        ferry::secrets::Secrets::new(),
        SshOptions {
            agent: AgentSource::Socket(agent.socket.clone()),
        },
    )
    .await
    .unwrap();
    assert_eq!(whoami(&t).await, "root");
    assert!(server.log().contains("Accepted publickey"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_files_plain_pem_and_encrypted() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let dir = client.dir.path();
    let keys = [
        ("rsa_pem", "rsa", "", true),
        ("ecdsa", "ecdsa", "", false),
        ("enc_ed25519", "ed25519", "open sesame", false),
        ("enc_rsa_pem", "rsa", "open sesame", true),
    ];
    for (name, kind, passphrase, pem) in keys {
        let key = sshd::keygen(dir, name, kind, passphrase, pem);
        server.authorize(&key.public);
        if pem {
            let text = std::fs::read_to_string(&key.private).unwrap();
            assert!(
                text.starts_with("-----BEGIN RSA PRIVATE KEY-----"),
                "{text:.40}"
            );
        }
        let mut spec = client.spec(&server);
        spec.identity_files = vec![key.private.clone()];
        if !passphrase.is_empty() {
            spec.key_passphrase = Some(passphrase.to_string());
        }
        let t = sshd::connect(spec)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(whoami(&t).await, "root", "{name}");
    }

    // Encrypted key, no passphrase, no prompt allowed: a clear failure.
    let mut spec = client.spec(&server);
    spec.identity_files = vec![dir.join("enc_ed25519")];
    spec.allow_prompt = false;
    match sshd::connect(spec.clone()).await.unwrap_err() {
        TransportError::AuthFailed { tried, .. } => {
            assert!(tried.contains("encrypted, no passphrase"), "{tried}")
        }
        other => panic!("{other}"),
    }
    // Wrong passphrase.
    spec.key_passphrase = Some("not-this-one".into());
    match sshd::connect(spec).await.unwrap_err() {
        TransportError::AuthFailed { tried, .. } => {
            assert!(tried.contains("wrong passphrase"), "{tried}")
        }
        other => panic!("{other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_authentication() {
    let server = Sshd::start_with(SshdOptions {
        password_auth: true,
        ..Default::default()
    });
    let client = Client::new(&server);
    let user = TestUser::create("pw-Secret-123");
    let mut spec = client.spec(&server);
    spec.user = Some(user.name.clone());
    spec.identity_files = vec![client.dir.path().join("absent")];
    spec.password = Some(user.password.clone());
    let t = sshd::connect(spec.clone()).await.unwrap();
    assert_eq!(whoami(&t).await, user.name);
    assert!(server.log().contains("Accepted password"));

    spec.password = Some("not-the-password".into());
    let err = sshd::connect(spec).await.unwrap_err();
    match &err {
        TransportError::AuthFailed { tried, user: u, .. } => {
            assert_eq!(u, &user.name);
            assert!(tried.contains("password"), "{tried}");
        }
        other => panic!("{other}"),
    }
    assert!(!err.to_string().contains("not-the-password"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_key_is_refused_with_a_usable_hint() {
    let server = Sshd::start();
    let client = Client::new(&server);
    std::fs::remove_file(&client.known_hosts).unwrap();
    let err = sshd::connect(client.spec(&server)).await.unwrap_err();
    let TransportError::HostKeyUnknown { host, hint } = &err else {
        panic!("expected HostKeyUnknown, got {err}");
    };
    assert_eq!(host, &format!("[127.0.0.1]:{}", server.port));
    assert!(hint.contains("accept-new"), "{hint}");
    assert!(
        !client.known_hosts.exists(),
        "strict mode must not record keys"
    );
    assert!(
        !server.log().contains("Accepted"),
        "must fail before authentication"
    );

    // The suggested command, run as printed, makes the host trusted.
    let command = hint.split('`').nth(1).unwrap();
    assert!(
        command.starts_with(&format!("ssh-keyscan -p {} ", server.port)),
        "{command}"
    );
    let st = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let t = sshd::connect(client.spec(&server)).await.unwrap();
    assert_eq!(whoami(&t).await, "root");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_host_key_is_refused_before_authentication() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let impostor = sshd::keygen(client.dir.path(), "impostor", "ed25519", "", false);
    let mut parts = impostor.public.split_whitespace();
    std::fs::write(
        &client.known_hosts,
        format!(
            "# ferry test\n[127.0.0.1]:{} {} {}\n",
            server.port,
            parts.next().unwrap(),
            parts.next().unwrap()
        ),
    )
    .unwrap();
    for policy in [None, Some(HostKeyPolicy::AcceptNew)] {
        let mut spec = client.spec(&server);
        spec.host_key_policy = policy;
        let err = sshd::connect(spec).await.unwrap_err();
        match &err {
            TransportError::HostKeyChanged {
                line, known_hosts, ..
            } => {
                assert_eq!(*line, 2);
                assert_eq!(known_hosts, &client.known_hosts.display().to_string());
            }
            other => panic!("expected HostKeyChanged, got {other}"),
        }
    }
    let log = server.log();
    assert!(
        !log.contains("Accepted") && !log.contains("Failed"),
        "authentication was attempted:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_known_hosts_entries_are_understood() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let st = Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(&client.known_hosts)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let text = std::fs::read_to_string(&client.known_hosts).unwrap();
    assert!(text.starts_with("|1|"), "{text}");
    let t = sshd::connect(client.spec(&server)).await.unwrap();
    assert_eq!(whoami(&t).await, "root");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_new_records_the_key() {
    let server = Sshd::start();
    let client = Client::new(&server);
    std::fs::remove_file(&client.known_hosts).unwrap();
    let mut spec = client.spec(&server);
    spec.host_key_policy = Some(HostKeyPolicy::AcceptNew);
    let t = sshd::connect(spec).await.unwrap();
    assert_eq!(whoami(&t).await, "root");
    let lines = sshd::read_lines(&client.known_hosts);
    assert_eq!(lines, vec![server.known_hosts_line()]);

    // Now known: strict checking accepts it.
    let t = sshd::connect(client.spec(&server)).await.unwrap();
    assert_eq!(whoami(&t).await, "root");
    // Both ssh and ferry agree on the file's format.
    let out = sshd::openssh(&server, &client)
        .args(["-o", "StrictHostKeyChecking=yes", "true"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_jump_through_two_hops() {
    let debug = SshdOptions {
        log_level: "DEBUG1",
        ..Default::default()
    };
    let jump1 = Sshd::start_with(debug.clone());
    let jump2 = Sshd::start_with(debug);
    let target = Sshd::start();
    let client = Client::new(&target);
    jump1.authorize(&client.key.public);
    jump2.authorize(&client.key.public);
    target.write_known_hosts(&client.known_hosts, &[&jump1, &jump2]);

    let mut spec = client.spec(&target);
    spec.proxy_jump = Some(format!(
        "root@127.0.0.1:{},127.0.0.1:{}",
        jump1.port, jump2.port
    ));
    spec.user = Some("root".into());
    let t = sshd::connect(spec).await.unwrap();
    assert_eq!(whoami(&t).await, "root");
    assert!(
        jump1
            .log()
            .contains(&format!("target 127.0.0.1 port {}", jump2.port)),
        "first hop did not forward to the second"
    );
    assert!(
        jump2
            .log()
            .contains(&format!("target 127.0.0.1 port {}", target.port)),
        "second hop did not forward to the target"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_config_supplies_what_the_inventory_leaves_out() {
    let jump = Sshd::start_with(SshdOptions {
        log_level: "DEBUG1",
        ..Default::default()
    });
    let target = Sshd::start();
    let client = Client::new(&target);
    jump.authorize(&client.key.public);
    target.write_known_hosts(&client.known_hosts, &[&jump]);
    std::fs::write(
        &client.ssh_config,
        format!(
            "# an operator's config\n\
             Host db-*\n\
             \tHostName 127.0.0.1\n\
             \tPort={port}\n\
             \tUser root\n\
             \tIdentityFile {key}\n\
             \tUserKnownHostsFile {kh}\n\
             \tStrictHostKeyChecking yes\n\
             \tProxyJump bastion\n\
             Host bastion\n\
             \tHostName 127.0.0.1\n\
             \tPort {jport}\n\
             \tUser root\n",
            port = target.port,
            jport = jump.port,
            key = client.key.private.display(),
            kh = client.known_hosts.display(),
        ),
    )
    .unwrap();
    let spec = ConnectSpec {
        name: "db".into(),
        address: "db-primary".into(),
        ssh_config: Some(client.ssh_config.clone()),
        ..Default::default()
    };
    let t = sshd::connect(spec).await.unwrap();
    assert_eq!(whoami(&t).await, "root");
    assert_eq!(t.target(), format!("root@127.0.0.1:{}", target.port));
    assert!(jump
        .log()
        .contains(&format!("target 127.0.0.1 port {}", target.port)));
}

/// The known_hosts file `client` would use, recording exactly `lines`.
fn write_known(client: &Client, lines: &[String]) {
    let mut text = String::new();
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    std::fs::write(&client.known_hosts, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_key_of_another_type_is_a_changed_identity() {
    // known_hosts holds an ed25519 key for the host; the server only has RSA.
    let server = Sshd::start_with(SshdOptions {
        host_key_kinds: vec!["rsa"],
        ..Default::default()
    });
    let client = Client::new(&server);
    let recorded = sshd::keygen(client.dir.path(), "old_ed25519", "ed25519", "", false);
    write_known(&client, &[server.known_hosts_line_for(&recorded.public)]);
    let before = std::fs::read_to_string(&client.known_hosts).unwrap();
    for policy in [None, Some(HostKeyPolicy::AcceptNew)] {
        let mut spec = client.spec(&server);
        spec.host_key_policy = policy;
        let err = sshd::connect(spec).await.unwrap_err();
        match &err {
            TransportError::HostKeyTypeChanged(change) => {
                assert!(
                    change.offered.starts_with("rsa-sha2") || change.offered == "ssh-rsa",
                    "{err}"
                );
                assert_eq!(change.known_types, "ssh-ed25519");
                assert_eq!(change.line, 1);
            }
            other => panic!("expected HostKeyTypeChanged ({policy:?}), got {other}"),
        }
        let text = err.to_string();
        assert!(text.contains("HOST IDENTIFICATION HAS CHANGED"), "{text}");
        assert!(!text.contains("ssh-keyscan"), "{text}");
    }
    assert_eq!(
        std::fs::read_to_string(&client.known_hosts).unwrap(),
        before,
        "accept-new must not record a key for a host with a known key"
    );
    let log = server.log();
    assert!(
        !log.contains("Accepted") && !log.contains("Failed"),
        "authentication was attempted:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recorded_key_type_is_asked_for_first() {
    // The server has ed25519 and RSA keys; whichever one is recorded is the one asked for.
    let server = Sshd::start_with(SshdOptions {
        host_key_kinds: vec!["ed25519", "rsa"],
        ..Default::default()
    });
    let client = Client::new(&server);
    for recorded in &server.host_keys {
        write_known(&client, &[server.known_hosts_line_for(recorded)]);
        let t = sshd::connect(client.spec(&server))
            .await
            .unwrap_or_else(|e| panic!("with {recorded} recorded: {e}"));
        assert_eq!(whoami(&t).await, "root");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_ssh_rsa_signatures_are_refused_unless_allowed() {
    let server = Sshd::start_with(SshdOptions {
        host_key_kinds: vec!["rsa"],
        extra: "HostKeyAlgorithms ssh-rsa\n".into(),
        ..Default::default()
    });
    let client = Client::new(&server);
    let err = sshd::connect(client.spec(&server)).await.unwrap_err();
    assert!(
        matches!(err, TransportError::LegacyHostKeyAlgorithm { .. }),
        "expected LegacyHostKeyAlgorithm, got {err}"
    );
    assert!(err.to_string().contains("allow_ssh_rsa_sha1"), "{err}");

    let mut spec = client.spec(&server);
    spec.allow_ssh_rsa_sha1 = true;
    let t = sshd::connect(spec).await.unwrap();
    assert_eq!(whoami(&t).await, "root");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_host_key_is_reported_as_revoked() {
    let server = Sshd::start();
    let client = Client::new(&server);
    write_known(
        &client,
        &[
            format!("@revoked {}", server.known_hosts_line()),
            server.known_hosts_line(),
        ],
    );
    for policy in [None, Some(HostKeyPolicy::AcceptNew)] {
        let mut spec = client.spec(&server);
        spec.host_key_policy = policy;
        let err = sshd::connect(spec).await.unwrap_err();
        match &err {
            TransportError::HostKeyRevoked { line, .. } => assert_eq!(*line, 1),
            other => panic!("expected HostKeyRevoked, got {other}"),
        }
        assert!(err.to_string().contains("REVOKED"), "{err}");
        assert!(!err.to_string().contains("CHANGED"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keyscan_hint_works_for_a_path_with_spaces_and_quotes() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let dir = client.dir.path().join("my known hosts; it's $HOME");
    std::fs::create_dir_all(&dir).unwrap();
    let mut spec = client.spec(&server);
    spec.known_hosts = Some(dir.join("known hosts"));
    let err = sshd::connect(spec.clone()).await.unwrap_err();
    let TransportError::HostKeyUnknown { hint, .. } = &err else {
        panic!("expected HostKeyUnknown, got {err}");
    };
    let command = hint.split('`').nth(1).unwrap();
    let st = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "{command}");
    let t = sshd::connect(spec).await.unwrap();
    assert_eq!(whoami(&t).await, "root");
}
