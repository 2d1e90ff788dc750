//! `become` through sudo, as a non-root login user created for each test.

#[path = "common/sshd.rs"]
mod sshd;

use std::time::Duration;

use ferry::command::Cmd;
use ferry::transport::{BecomeSpec, ConnectSpec, Transport, TransportError};
use sshd::{Client, Sshd, TestUser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PASSWORD: &str = "Sudo-pass-4242";

fn spec_as(client: &Client, server: &Sshd, user: &TestUser, become_: BecomeSpec) -> ConnectSpec {
    let mut spec = client.spec(server);
    spec.user = Some(user.name.clone());
    spec.become_ = Some(become_);
    spec
}

fn root_with(password: Option<&str>) -> BecomeSpec {
    BecomeSpec {
        user: "root".into(),
        password: password.map(str::to_string),
    }
}

/// Command lines of every process on the machine.
fn all_cmdlines() -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(raw) = std::fs::read(entry.path().join("cmdline")) {
            out.push(String::from_utf8_lossy(&raw).replace('\0', " "));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sudo_with_password() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let mut user = TestUser::create(PASSWORD);
    user.allow_sudo(false);
    let t = std::sync::Arc::new(
        sshd::connect(spec_as(&client, &server, &user, root_with(Some(PASSWORD))))
            .await
            .unwrap(),
    );

    let out = t.exec(&Cmd::new("id").arg("-u"), None).await.unwrap();
    assert_eq!(out.stdout_str(), "0\n", "{}", out.stderr_str());
    assert_eq!(out.stderr_str(), "", "sudo chatter leaked into stderr");

    // The password line is consumed by sudo: stdin reaches the command intact.
    let out = t
        .exec(&Cmd::new("cat"), Some(b"payload\nline two"))
        .await
        .unwrap();
    assert_eq!(out.stdout, b"payload\nline two");

    // Streaming through sudo.
    let mut s = t
        .exec_stream(&Cmd::new("sh").arg("-c").arg("id -u >&2; cat"))
        .await
        .unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 241) as u8).collect();
    let expected = data.clone();
    let writer = tokio::spawn(async move {
        s.stdin.write_all(&data).await.unwrap();
        s.stdin.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    s.stdout.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    let exit = s.exit.await.unwrap();
    assert_eq!(exit.status, Some(0));
    assert_eq!(String::from_utf8_lossy(&exit.stderr), "0\n");
    assert!(got == expected, "stream through sudo corrupted");

    // While a sudo command runs, no process on the machine shows the password.
    let t2 = t.clone();
    let running = tokio::spawn(async move { t2.exec(&Cmd::new("sleep").arg("2"), None).await });
    let mut seen_sleep = false;
    for _ in 0..40 {
        let cmdlines = all_cmdlines();
        assert!(
            cmdlines.iter().all(|c| !c.contains(PASSWORD)),
            "password visible in a command line"
        );
        seen_sleep |= cmdlines.iter().any(|c| c.contains("sudo -k -S -p"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen_sleep, "did not observe the sudo process");
    assert!(running.await.unwrap().unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_sudo_password_is_a_become_error() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let mut user = TestUser::create(PASSWORD);
    user.allow_sudo(false);

    let t = sshd::connect(spec_as(
        &client,
        &server,
        &user,
        root_with(Some("Wrong-pass-1")),
    ))
    .await
    .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(30), t.exec(&Cmd::new("id"), None))
        .await
        .expect("wrong sudo password hung")
        .unwrap_err();
    match &err {
        TransportError::Become { reason, .. } => {
            assert!(reason.contains("incorrect sudo password"), "{reason}")
        }
        other => panic!("expected Become, got {other}"),
    }
    assert!(!err.to_string().contains("Wrong-pass-1"));
    // exec_stream fails the same way, before handing out stdin.
    let err = t.exec_stream(&Cmd::new("cat")).await.err().unwrap();
    assert!(matches!(err, TransportError::Become { .. }), "{err}");

    let t = sshd::connect(spec_as(&client, &server, &user, root_with(None)))
        .await
        .unwrap();
    let err = t.exec(&Cmd::new("id"), None).await.unwrap_err();
    match &err {
        TransportError::Become { reason, .. } => {
            assert!(reason.contains("needs a password"), "{reason}")
        }
        other => panic!("expected Become, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwordless_sudo_and_other_target_users() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let mut user = TestUser::create(PASSWORD);
    user.allow_sudo(true);
    let other = TestUser::create("irrelevant-Pass-1");

    let t = sshd::connect(spec_as(&client, &server, &user, root_with(None)))
        .await
        .unwrap();
    let out = t.exec(&Cmd::new("id").arg("-u"), None).await.unwrap();
    assert_eq!(out.stdout_str(), "0\n", "{}", out.stderr_str());
    let out = t.exec(&Cmd::new("cat"), Some(b"exact")).await.unwrap();
    assert_eq!(out.stdout, b"exact");

    // A password configured although sudo does not ask: it must not end up on stdin.
    let t = sshd::connect(spec_as(&client, &server, &user, root_with(Some(PASSWORD))))
        .await
        .unwrap();
    let out = t.exec(&Cmd::new("cat"), Some(b"exact")).await.unwrap();
    assert_eq!(out.stdout, b"exact");

    let t = sshd::connect(spec_as(
        &client,
        &server,
        &user,
        BecomeSpec {
            user: other.name.clone(),
            password: None,
        },
    ))
    .await
    .unwrap();
    let out = t.exec(&Cmd::new("id").arg("-un"), None).await.unwrap();
    assert_eq!(out.stdout_str().trim(), other.name);

    // Exit codes of the command come through sudo unchanged.
    let out = t
        .exec(&Cmd::new("sh").arg("-c").arg("exit 42"), None)
        .await
        .unwrap();
    assert_eq!(out.status, Some(42));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sudo_password_with_a_newline_is_refused_before_connecting() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let mut user = TestUser::create(PASSWORD);
    user.allow_sudo(false);
    // sudo -S would read "Sudo-pass-4242" and hand "touch /tmp/..." to the command's stdin.
    let marker = client.dir.path().join("injected");
    let password = format!("{PASSWORD}\ntouch {}", marker.display());
    let spec = spec_as(&client, &server, &user, root_with(Some(&password)));
    let err = match sshd::connect(spec).await {
        Err(e) => e,
        Ok(t) => {
            let out = t.exec(&Cmd::new("sh"), None).await;
            panic!("connected and ran ({out:?}); injected: {}", marker.exists());
        }
    };
    assert!(matches!(err, TransportError::Become { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("become password contains a newline"),
        "{text}"
    );
    assert!(!text.contains("touch"), "the password leaked: {text}");
    assert!(
        !server.log().contains("Accepted"),
        "must refuse before connecting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_in_a_command_run_through_sudo_never_shows_in_ps() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let mut user = TestUser::create(PASSWORD);
    user.allow_sudo(false);
    let t = sshd::connect(spec_as(&client, &server, &user, root_with(Some(PASSWORD))))
        .await
        .unwrap();
    let secret = "Kx3-sudo-secret-0815";
    let cmd = Cmd::script(
        format!("pw={}; sleep 3; id -u", ferry::command::quote(secret)),
        "pw=********; sleep 3; id -u",
    );
    let run = t.exec(&cmd, Some(b"ignored"));
    let watch = async {
        let mut seen = Vec::new();
        tokio::time::sleep(Duration::from_millis(800)).await;
        for _ in 0..10 {
            seen.extend(sshd::processes_showing(secret));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        seen
    };
    let (out, seen) = tokio::join!(run, watch);
    let out = out.unwrap();
    assert_eq!(out.stdout_str(), "0\n", "{out:?}");
    assert!(
        seen.is_empty(),
        "the secret is visible on the host: {seen:?}"
    );
    assert!(
        !all_cmdlines().iter().any(|c| c.contains(secret)),
        "still visible after the command"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcsh_login_shell_works_and_a_non_posix_shell_setting_is_named() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let mut user = TestUser::create(PASSWORD);
    user.allow_sudo(false);
    let st = std::process::Command::new("chsh")
        .args(["-s", "/usr/bin/tcsh", &user.name])
        .status()
        .unwrap();
    assert!(st.success(), "chsh");
    // Multi-line scripts with quotes and `!` reach sh intact through tcsh, with and
    // without sudo, through the persistent shell and on channels of their own.
    let multi = Cmd::script(
        "x='it'\"'\"'s !'\nif true; then\n  printf '%s\\n' \"$x\"\nfi",
        "multi-line",
    );
    let mut spec = client.spec(&server);
    spec.user = Some(user.name.clone());
    let t = sshd::connect(spec.clone()).await.unwrap();
    for stdin in [None, Some(&b"in"[..])] {
        let out = t.exec(&multi, stdin).await.unwrap();
        assert_eq!(out.stdout_str(), "it's !\n", "{out:?}");
    }
    let t = sshd::connect(spec_as(&client, &server, &user, root_with(Some(PASSWORD))))
        .await
        .unwrap();
    let out = t.exec(&multi, None).await.unwrap();
    assert_eq!(out.stdout_str(), "it's !\n", "{out:?}");

    // A `shell` that is not POSIX: the error says what ferry needs.
    spec.shell = Some("/usr/bin/tcsh".into());
    let t = sshd::connect(spec).await.unwrap();
    let err = t.exec(&Cmd::new("true"), None).await.unwrap_err();
    assert!(
        matches!(err, TransportError::NotPosixShell { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("ferry needs a POSIX sh"), "{err}");
}
