//! SshTransport against a real OpenSSH sshd: exec, concurrency on one connection,
//! streaming 100 MiB each way, backpressure, a connection killed mid-stream, port
//! forwarding (direct-tcpip and the relay fallback), and connection failure kinds.

#[path = "common/sshd.rs"]
mod sshd;

use std::time::{Duration, Instant};

use ferry::command::Cmd;
use ferry::transport::{ForwardMethod, Transport, TransportError};
use sha2::{Digest, Sha256};
use sshd::{Client, Sshd, SshdOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_reports_status_stdout_stderr_and_takes_stdin() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let t = sshd::connect(client.spec(&server)).await.unwrap();

    let out = t
        .exec(
            &Cmd::script(
                "echo out; echo err >&2; exit 3",
                "echo out; echo err >&2; exit 3",
            ),
            None,
        )
        .await
        .unwrap();
    assert_eq!(out.status, Some(3));
    assert_eq!(out.stdout_str(), "out\n");
    assert_eq!(out.stderr_str(), "err\n");

    // Arguments arrive intact, however they are quoted.
    let tricky = "a 'b' \"c\" $HOME `x` ; | & \\ end";
    let out = t
        .exec(&Cmd::new("printf").arg("%s").arg(tricky), None)
        .await
        .unwrap();
    assert!(out.success());
    assert_eq!(out.stdout_str(), tricky);

    let out = t
        .exec(&Cmd::new("cat"), Some(b"from stdin\x00\xff"))
        .await
        .unwrap();
    assert_eq!(out.stdout, b"from stdin\x00\xff");

    // No stdin given: the command sees EOF at once instead of hanging.
    let out = t.exec(&Cmd::new("wc").arg("-c"), None).await.unwrap();
    assert_eq!(out.stdout_str().trim(), "0");

    let out = t
        .exec(&Cmd::new("ferry-no-such-command"), None)
        .await
        .unwrap();
    assert_eq!(out.status, Some(127));

    // A command that exits without reading a large stdin neither hangs nor fails.
    let big = vec![7u8; 32 * MIB];
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        t.exec(&Cmd::new("true"), Some(&big)),
    )
    .await
    .expect("exec hung on unread stdin")
    .unwrap();
    assert_eq!(out.status, Some(0));
    let out = t.exec(&Cmd::new("wc").arg("-c"), Some(&big)).await.unwrap();
    assert_eq!(out.stdout_str().trim(), (32 * MIB).to_string());

    // Never a PTY: stdin is not a terminal on the remote side.
    let out = t
        .exec(&Cmd::script("test -t 0 || echo notty", "tty?"), None)
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "notty\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_execs_share_one_connection() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let t = std::sync::Arc::new(sshd::connect(client.spec(&server)).await.unwrap());

    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..16 {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            t.exec(
                &Cmd::new("sh")
                    .arg("-c")
                    .arg("sleep 1; echo $0")
                    .arg(i.to_string()),
                None,
            )
            .await
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let out = task.await.unwrap().unwrap();
        assert_eq!(out.stdout_str(), format!("{i}\n"));
    }
    let elapsed = started.elapsed();
    // 16 one-second commands, at most 8 channels at a time: ~2 s; serially it would be 16.
    assert!(elapsed < Duration::from_secs(8), "took {elapsed:?}");
    let logins = server.log().matches("Accepted publickey").count();
    assert_eq!(logins, 1, "execs must share the control connection");
}

/// Deterministic, incompressible-enough test data.
fn chunk(i: usize) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(i.to_le_bytes());
    let seed = h.finalize();
    (0..MIB).map(|j| seed[j % 32] ^ (j / 32) as u8).collect()
}

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_100_mib_each_way_with_flat_memory() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let t = sshd::connect(client.spec(&server)).await.unwrap();
    let size = 100 * MIB;
    let hwm_before = vm_hwm_kib();

    // Upload: local → remote file, hashed on both sides.
    let remote_file = client.dir.path().join("uploaded.bin");
    let mut local_hash = Sha256::new();
    let started = Instant::now();
    let mut s = t
        .exec_stream(
            &Cmd::new("sh")
                .arg("-c")
                .arg("cat > \"$0\" && sha256sum \"$0\"")
                .arg(remote_file.display().to_string()),
        )
        .await
        .unwrap();
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        s.stdout.read_to_end(&mut out).await.unwrap();
        (out, s.exit.await)
    });
    for i in 0..size / MIB {
        let c = chunk(i);
        local_hash.update(&c);
        s.stdin.write_all(&c).await.unwrap();
    }
    s.stdin.shutdown().await.unwrap();
    drop(s.stdin);
    let (out, exit) = reader.await.unwrap();
    let up_secs = started.elapsed().as_secs_f64();
    let exit = exit.unwrap();
    assert_eq!(
        exit.status,
        Some(0),
        "{}",
        String::from_utf8_lossy(&exit.stderr)
    );
    let local_hex = hex::encode(local_hash.finalize());
    let remote_hex = String::from_utf8_lossy(&out)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(remote_hex, local_hex, "upload corrupted");

    // Download: remote file → local hash.
    let started = Instant::now();
    let mut s = t
        .exec_stream(&Cmd::new("cat").arg(remote_file.display().to_string()))
        .await
        .unwrap();
    drop(s.stdin);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0usize;
    loop {
        let n = s.stdout.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        total += n;
        h.update(&buf[..n]);
    }
    let down_secs = started.elapsed().as_secs_f64();
    let exit = s.exit.await.unwrap();
    assert_eq!(exit.status, Some(0));
    assert_eq!(total, size);
    assert_eq!(hex::encode(h.finalize()), local_hex, "download corrupted");

    let grown_mib = (vm_hwm_kib().saturating_sub(hwm_before)) / 1024;
    assert!(
        grown_mib < 80,
        "peak memory grew by {grown_mib} MiB while streaming 100 MiB each way"
    );

    eprintln!(
        "ferry 100 MiB with sha256 on both ends: upload {:.0} MiB/s, download {:.0} MiB/s; \
         peak RSS growth {grown_mib} MiB",
        100.0 / up_secs,
        100.0 / down_secs
    );
}

/// Same 100 MiB file, same server, `cat` on the far side: ferry vs OpenSSH's `ssh`.
/// Prints the figures (run with `--release --nocapture` for meaningful numbers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_against_openssh() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let t = sshd::connect(client.spec(&server)).await.unwrap();
    let file = client.dir.path().join("payload.bin");
    {
        let mut f = std::fs::File::create(&file).unwrap();
        for i in 0..100 {
            std::io::Write::write_all(&mut f, &chunk(i)).unwrap();
        }
    }
    let path = file.display().to_string();

    // Upload with a given write size: tokio::io::copy writes 8 KiB at a time, each write
    // one SSH packet; large writes fill 32 KiB packets.
    let upload = |write_size: usize| {
        let t = &t;
        let file = file.clone();
        async move {
            let started = Instant::now();
            let mut s = t
                .exec_stream(&Cmd::new("sh").arg("-c").arg("cat > /dev/null && echo done"))
                .await
                .unwrap();
            let mut local = tokio::io::BufReader::with_capacity(
                write_size,
                tokio::fs::File::open(&file).await.unwrap(),
            );
            let sent = tokio::io::copy_buf(&mut local, &mut s.stdin).await.unwrap();
            s.stdin.shutdown().await.unwrap();
            let mut out = String::new();
            s.stdout.read_to_string(&mut out).await.unwrap();
            assert_eq!(s.exit.await.unwrap().status, Some(0));
            assert_eq!((sent as usize, out.as_str()), (100 * MIB, "done\n"));
            started.elapsed().as_secs_f64()
        }
    };
    let ferry_up_small = upload(8 * 1024).await;
    let ferry_up = upload(256 * 1024).await;

    let started = Instant::now();
    let mut s = t.exec_stream(&Cmd::new("cat").arg(&path)).await.unwrap();
    drop(s.stdin);
    let got = tokio::io::copy(&mut s.stdout, &mut tokio::io::sink())
        .await
        .unwrap();
    assert_eq!(s.exit.await.unwrap().status, Some(0));
    assert_eq!(got as usize, 100 * MIB);
    let ferry_down = started.elapsed().as_secs_f64();

    let ssh_time = |cipher: Option<&str>, upload: bool| {
        let mut cmd = sshd::openssh(&server, &client);
        if let Some(c) = cipher {
            cmd.args(["-c", c]);
        }
        if upload {
            cmd.arg("cat > /dev/null")
                .stdin(std::fs::File::open(&file).unwrap());
        } else {
            cmd.arg(format!("cat {path}"))
                .stdout(std::process::Stdio::null());
        }
        let started = Instant::now();
        assert!(cmd.status().unwrap().success());
        started.elapsed().as_secs_f64()
    };
    let ossh_up = ssh_time(None, true);
    let ossh_down = ssh_time(None, false);
    let gcm = Some("aes128-gcm@openssh.com");
    let gcm_up = ssh_time(gcm, true);
    let gcm_down = ssh_time(gcm, false);
    let r = |secs: f64| 100.0 / secs;
    eprintln!(
        "THROUGHPUT 100 MiB (MiB/s) upload/download: ferry {:.0}/{:.0} \
         (upload in 8 KiB writes: {:.0}); OpenSSH default cipher {:.0}/{:.0}; OpenSSH aes128-gcm {:.0}/{:.0}",
        r(ferry_up),
        r(ferry_down),
        r(ferry_up_small),
        r(ossh_up),
        r(ossh_down),
        r(gcm_up),
        r(gcm_down)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_applies_backpressure() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let t = sshd::connect(client.spec(&server)).await.unwrap();
    let size = 300 * MIB;
    let hwm_before = vm_hwm_kib();
    let mut s = t
        .exec_stream(
            &Cmd::new("head")
                .arg("-c")
                .arg(size.to_string())
                .arg("/dev/zero"),
        )
        .await
        .unwrap();
    drop(s.stdin);
    // Not reading for a while: without backpressure the whole output would pile up here.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let grown_mib = (vm_hwm_kib().saturating_sub(hwm_before)) / 1024;
    assert!(
        grown_mib < 64,
        "{grown_mib} MiB buffered for an idle reader"
    );

    // Meanwhile the control connection still answers: the stream has its own connection.
    let out = t.exec(&Cmd::new("echo").arg("alive"), None).await.unwrap();
    assert_eq!(out.stdout_str(), "alive\n");
    assert_eq!(server.log().matches("Accepted publickey").count(), 2);

    let mut sink = tokio::io::sink();
    let copied = tokio::io::copy(&mut s.stdout, &mut sink).await.unwrap();
    assert_eq!(copied as usize, size);
    assert_eq!(s.exit.await.unwrap().status, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_killed_mid_stream_is_an_error_not_a_hang() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let t = sshd::connect(client.spec(&server)).await.unwrap();
    let mut s = t
        .exec_stream(&Cmd::new("cat").arg("/dev/zero"))
        .await
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0usize;
    while got < 8 * MIB {
        got += s.stdout.read(&mut buf).await.unwrap();
    }
    assert!(server.kill_connections() > 0, "no sshd child to kill");

    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match s.stdout.read(&mut buf).await {
                Ok(0) => return Ok(()),
                Ok(_) => continue,
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("reading a dead stream hung");
    let err = outcome.expect_err("a killed connection must not look like a clean end");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted);
    let exit = tokio::time::timeout(Duration::from_secs(5), s.exit)
        .await
        .expect("exit hung");
    assert!(
        matches!(exit, Err(TransportError::Disconnected { .. })),
        "{exit:?}"
    );

    // The control connection died too; the next command reconnects.
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        t.exec(&Cmd::new("echo").arg("back"), None),
    )
    .await
    .expect("reconnect hung")
    .unwrap();
    assert_eq!(out.stdout_str(), "back\n");
}

/// A TCP echo server on 127.0.0.1; returns its port.
async fn echo_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = sock.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

async fn roundtrip(pipe: &mut Box<dyn ferry::transport::Duplex>, payload: &[u8]) -> Vec<u8> {
    pipe.write_all(payload).await.unwrap();
    pipe.flush().await.unwrap();
    let mut got = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(10), pipe.read_exact(&mut got))
        .await
        .expect("echo timed out")
        .unwrap();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_uses_direct_tcpip() {
    let server = Sshd::start();
    let client = Client::new(&server);
    // Used as the engine does: a trait object.
    let t: Box<dyn Transport> = Box::new(sshd::connect(client.spec(&server)).await.unwrap());
    let port = echo_server().await;
    let (mut pipe, method) = t.forward("127.0.0.1", port).await.unwrap();
    assert_eq!(method, ForwardMethod::DirectTcpip);
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(roundtrip(&mut pipe, &payload).await, payload);
    // A second tunnel at the same time.
    let (mut pipe2, _) = t.forward("127.0.0.1", port).await.unwrap();
    assert_eq!(roundtrip(&mut pipe2, b"second").await, b"second");
    assert_eq!(roundtrip(&mut pipe, b"first again").await, b"first again");
    // Tunnels ride a connection of their own, next to the control connection.
    assert_eq!(server.log().matches("Accepted publickey").count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_falls_back_to_relay_when_forwarding_is_disabled() {
    let server = Sshd::start_with(SshdOptions {
        tcp_forwarding: false,
        ..Default::default()
    });
    let client = Client::new(&server);
    let t = sshd::connect(client.spec(&server)).await.unwrap();
    let port = echo_server().await;
    let (mut pipe, method) = t.forward("127.0.0.1", port).await.unwrap();
    assert_eq!(method, ForwardMethod::Relay("socat"));
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    assert_eq!(roundtrip(&mut pipe, &payload).await, payload);
    let (mut pipe2, method) = t.forward("127.0.0.1", port).await.unwrap();
    assert_eq!(method, ForwardMethod::Relay("socat"));
    assert_eq!(roundtrip(&mut pipe2, b"again").await, b"again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_failures_have_their_own_kinds() {
    let server = Sshd::start();
    let client = Client::new(&server);

    // Refused: nothing listens.
    let mut spec = client.spec(&server);
    spec.port = Some(sshd::free_port());
    let err = sshd::connect(spec).await.unwrap_err();
    assert!(matches!(err, TransportError::Refused { .. }), "{err}");

    // Timeout: a listener that never speaks SSH.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut spec = client.spec(&server);
    spec.port = Some(silent.local_addr().unwrap().port());
    spec.connect_timeout = Duration::from_secs(1);
    let started = Instant::now();
    let err = sshd::connect(spec).await.unwrap_err();
    assert!(
        matches!(err, TransportError::Timeout { secs: 1, .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // Auth failed: a key the server does not know.
    let other = sshd::keygen(client.dir.path(), "stranger", "ed25519", "", false);
    let mut spec = client.spec(&server);
    spec.identity_files = vec![other.private.clone()];
    let err = sshd::connect(spec).await.unwrap_err();
    match &err {
        TransportError::AuthFailed { user, tried, .. } => {
            assert_eq!(user, "root");
            assert!(tried.contains("stranger"), "{tried}");
        }
        other => panic!("expected AuthFailed, got {other}"),
    }
    assert!(err.is_unreachable());
}

/// The relay falls back to nc, then bash's /dev/tcp, when socat is not on the host's PATH.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_falls_back_to_nc_then_bash() {
    for (tool, bins) in [
        ("nc", &["sh", "nc"][..]),
        ("bash", &["sh", "bash", "cat"][..]),
    ] {
        let bin_dir = tempfile::Builder::new()
            .prefix("ferry-path-")
            .tempdir()
            .unwrap();
        for b in bins {
            let real = String::from_utf8(
                std::process::Command::new("sh")
                    .arg("-c")
                    .arg(format!("command -v {b}"))
                    .output()
                    .unwrap()
                    .stdout,
            )
            .unwrap();
            std::os::unix::fs::symlink(real.trim(), bin_dir.path().join(b)).unwrap();
        }
        std::fs::set_permissions(
            bin_dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let server = Sshd::start_with(SshdOptions {
            tcp_forwarding: false,
            extra: format!("SetEnv PATH={}", bin_dir.path().display()),
            ..Default::default()
        });
        let client = Client::new(&server);
        let t = sshd::connect(client.spec(&server)).await.unwrap();
        let port = echo_server().await;
        let (mut pipe, method) = t.forward("127.0.0.1", port).await.unwrap();
        assert_eq!(method, ForwardMethod::Relay(tool));
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 249) as u8).collect();
        assert_eq!(roundtrip(&mut pipe, &payload).await, payload, "{tool}");
    }
}

/// Run `cmd` on `t` (with `stdin`) and, while it runs, look for `secret` in every
/// process's argv and environment.
async fn secret_seen_while_running(
    t: &ferry::transport::ssh::SshTransport,
    cmd: &Cmd,
    stdin: Option<&[u8]>,
    secret: &str,
) -> Vec<(u32, String)> {
    let run = t.exec(cmd, stdin);
    let watch = async {
        let mut seen = Vec::new();
        // The command sleeps 3 s: look during the middle of it.
        tokio::time::sleep(Duration::from_millis(800)).await;
        for _ in 0..10 {
            seen.extend(sshd::processes_showing(secret));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen
    };
    let (out, seen) = tokio::join!(run, watch);
    let out = out.unwrap();
    assert!(out.success(), "{out:?}");
    assert_eq!(out.stdout_str(), format!("{}\n", secret.len()), "{out:?}");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_a_command_never_shows_in_ps_on_the_host() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let t = sshd::connect(client.spec(&server)).await.unwrap();
    let secret = "Zq8-secret-in-cmd-4711";
    // What a `command` task renders from `cmd = "pw={{ db_password }}; ... sleep 3"`.
    let cmd = Cmd::script(
        format!(
            "pw={}; sleep 3; printf '%s\\n' \"${{#pw}}\"",
            ferry::command::quote(secret)
        ),
        "pw=********; sleep 3; printf '%s\\n' \"${#pw}\"",
    );
    // Through the persistent shell (no stdin) and on a channel of its own (stdin).
    for stdin in [None, Some(&b"input"[..])] {
        let seen = secret_seen_while_running(&t, &cmd, stdin, secret).await;
        assert!(
            seen.is_empty(),
            "the secret is visible on the host (stdin {stdin:?}): {seen:?}"
        );
    }
}

/// A TCP relay to `to` on 127.0.0.1 that can go silent: after `freeze`, nothing crosses in
/// either direction and nobody is told, as when a laptop's Wi-Fi drops. Returns its port.
async fn freezable_relay(to: u16, frozen: std::sync::Arc<tokio::sync::watch::Sender<bool>>) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = tokio::net::TcpStream::connect(("127.0.0.1", to))
                .await
                .unwrap();
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            for (mut r, mut w) in [
                (
                    Box::new(cr) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                    Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                ),
                (Box::new(sr), Box::new(cw)),
            ] {
                let mut frozen = frozen.subscribe();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match r.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        // Silent from now on: hold what was read, forever.
                        if *frozen.borrow_and_update() {
                            let _ = frozen.wait_for(|f| !*f).await;
                            std::future::pending::<()>().await;
                        }
                        if w.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        }
    });
    port
}

/// A link that goes silent (no reset, no EOF) while a command runs: the keepalive probes
/// (inventory `server_alive_interval`/`server_alive_count_max`) find the connection dead
/// and the command fails with "no answer to keepalives". Without the probes it would wait
/// for as long as the link stays silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_link_fails_the_running_command_after_the_keepalives() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let frozen = std::sync::Arc::new(tokio::sync::watch::channel(false).0);
    let relay = freezable_relay(server.port, frozen.clone()).await;
    let mut spec = client.spec(&server);
    spec.port = Some(relay);
    // The relay's port is not in known_hosts (the server's key is, under its own port).
    spec.host_key_policy = Some(ferry::transport::HostKeyPolicy::AcceptNew);
    spec.server_alive = ferry::transport::ServerAlive {
        interval: Some(Duration::from_secs(1)),
        count_max: 2,
    };
    let t = sshd::connect(spec).await.unwrap();
    assert!(t.exec(&Cmd::new("true"), None).await.unwrap().success());

    let running = tokio::spawn(async move {
        let r = t.exec(&Cmd::script("sleep 120", "sleep 120"), None).await;
        (r, t)
    });
    // The command is on its way; then the link goes silent.
    tokio::time::sleep(Duration::from_millis(300)).await;
    frozen.send_replace(true);
    let started = Instant::now();
    let (result, _t) = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the command still waits 30 s after the link went silent")
        .unwrap();
    let err = result.expect_err("a command across a silent link succeeded");
    assert!(
        matches!(&err, TransportError::Disconnected { reason, .. } if reason.contains("keepalives")),
        "{err}"
    );
    // 1 s of silence, then 2 probes a second apart: well before the 120 s of the command.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}
