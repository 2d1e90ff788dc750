//! OpenSSH's conventions for where and how to connect, against real sshd: host
//! certificates vouched for by `@cert-authority` lines, ProxyCommand, HashKnownHosts.

#[path = "common/sshd.rs"]
mod sshd;

use ferry::command::Cmd;
use ferry::transport::{HostKeyPolicy, Transport, TransportError};
use sshd::{Client, Sshd, SshdOptions};

async fn whoami(t: &ferry::transport::ssh::SshTransport) -> String {
    let out = t.exec(&Cmd::new("id").arg("-un"), None).await.unwrap();
    assert!(out.success(), "{}", out.stderr_str());
    out.stdout_str().trim().to_string()
}

fn cert_server(principals: &'static str) -> Sshd {
    Sshd::start_with(SshdOptions {
        host_certificate: Some(principals),
        ..Default::default()
    })
}

/// `@cert-authority [127.0.0.1]:PORT <ca>` for `server`.
fn authority_line(server: &Sshd, ca_public: &str) -> String {
    let mut parts = ca_public.split_whitespace();
    let (kind, key) = (parts.next().unwrap(), parts.next().unwrap());
    format!("@cert-authority [127.0.0.1]:{} {kind} {key}", server.port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_certificate_signed_by_a_known_authority_is_accepted() {
    let server = cert_server("127.0.0.1");
    let client = Client::new(&server);
    let ca = server.host_ca.clone().unwrap();
    // Only the CA: no plain key recorded for the host.
    std::fs::write(
        &client.known_hosts,
        format!("{}\n", authority_line(&server, &ca)),
    )
    .unwrap();
    let mut spec = client.spec(&server);
    spec.host_key_policy = Some(HostKeyPolicy::Yes);
    let t = sshd::connect(spec).await.unwrap();
    assert_eq!(whoami(&t).await, "root");
    // Nothing was appended: the certificate was enough.
    assert_eq!(sshd::read_lines(&client.known_hosts).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_certificate_without_its_authority_is_refused() {
    let server = cert_server("127.0.0.1");
    let client = Client::new(&server);
    let mut spec = client.spec(&server);
    spec.host_key_policy = Some(HostKeyPolicy::Yes);

    // No line at all for the host.
    std::fs::write(&client.known_hosts, "").unwrap();
    let err = sshd::connect(spec.clone()).await.unwrap_err();
    assert!(
        matches!(err, TransportError::HostKeyUnknown { .. }),
        "{err}"
    );

    // An authority line naming another CA.
    let other = sshd::keygen(client.dir.path(), "other_ca", "ed25519", "", false);
    std::fs::write(
        &client.known_hosts,
        format!("{}\n", authority_line(&server, &other.public)),
    )
    .unwrap();
    let err = sshd::connect(spec.clone()).await.unwrap_err();
    assert!(
        matches!(err, TransportError::HostKeyUnknown { .. }),
        "{err}"
    );

    // The right CA, but revoked.
    let ca = server.host_ca.clone().unwrap();
    let mut parts = ca.split_whitespace();
    let (kind, key) = (parts.next().unwrap(), parts.next().unwrap());
    std::fs::write(
        &client.known_hosts,
        format!(
            "{}\n@revoked [127.0.0.1]:{} {kind} {key}\n",
            authority_line(&server, &ca),
            server.port
        ),
    )
    .unwrap();
    let err = sshd::connect(spec).await.unwrap_err();
    assert!(
        matches!(err, TransportError::HostKeyRevoked { .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_certificate_for_another_host_is_refused() {
    let server = cert_server("db.example");
    let client = Client::new(&server);
    let ca = server.host_ca.clone().unwrap();
    std::fs::write(
        &client.known_hosts,
        format!("{}\n", authority_line(&server, &ca)),
    )
    .unwrap();
    let mut spec = client.spec(&server);
    spec.host_key_policy = Some(HostKeyPolicy::Yes);
    let err = sshd::connect(spec).await.unwrap_err();
    assert!(
        matches!(err, TransportError::HostKeyUnknown { .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_command_carries_the_connection() {
    let server = Sshd::start();
    let client = Client::new(&server);
    // A name nobody resolves: only the ProxyCommand knows where the server is.
    let name = "ferry-proxied.invalid";
    std::fs::write(
        &client.ssh_config,
        "Host proxied\n  HostName ferry-proxied.invalid\n  ProxyCommand socat - TCP:127.0.0.1:%p\n",
    )
    .unwrap();
    let mut parts = server.host_key.split_whitespace();
    let (kind, key) = (parts.next().unwrap(), parts.next().unwrap());
    std::fs::write(
        &client.known_hosts,
        format!("[{name}]:{} {kind} {key}\n", server.port),
    )
    .unwrap();
    let mut spec = client.spec(&server);
    spec.address = "proxied".into();
    let t = sshd::connect(spec).await.unwrap();
    assert_eq!(whoami(&t).await, "root");
    assert_eq!(t.target(), format!("root@{name}:{}", server.port));
    let needle = format!("TCP:127.0.0.1:{}", server.port);
    assert!(
        !sshd::processes_showing(&needle).is_empty(),
        "the ProxyCommand is not running"
    );
    // The connection goes with its transport, and the ProxyCommand with it (an idle
    // shell's stopper once held the connection alive until the process exited).
    drop(t);
    let start = std::time::Instant::now();
    while !sshd::processes_showing(&needle).is_empty() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(10),
            "the ProxyCommand outlived its connection"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_known_hosts_records_a_hashed_name_that_the_next_connect_finds() {
    let server = Sshd::start();
    let client = Client::new(&server);
    std::fs::write(&client.known_hosts, "").unwrap();
    std::fs::write(&client.ssh_config, "Host *\n  HashKnownHosts yes\n").unwrap();
    let mut spec = client.spec(&server);
    spec.host_key_policy = Some(HostKeyPolicy::AcceptNew);
    let t = sshd::connect(spec.clone()).await.unwrap();
    assert_eq!(whoami(&t).await, "root");
    drop(t);
    let lines = sshd::read_lines(&client.known_hosts);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("|1|") && !lines[0].contains("127.0.0.1"),
        "{lines:?}"
    );
    // OpenSSH finds it too.
    let found = std::process::Command::new("ssh-keygen")
        .arg("-F")
        .arg(format!("[127.0.0.1]:{}", server.port))
        .arg("-f")
        .arg(&client.known_hosts)
        .output()
        .unwrap();
    assert!(found.status.success(), "ssh-keygen -F: {found:?}");
    // And ferry, strictly, the next time.
    spec.host_key_policy = Some(HostKeyPolicy::Yes);
    let t = sshd::connect(spec).await.unwrap();
    assert_eq!(whoami(&t).await, "root");
    assert_eq!(sshd::read_lines(&client.known_hosts).len(), 1);
}
