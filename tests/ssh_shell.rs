//! SshTransport::exec through the control connection's persistent shell, against a real
//! OpenSSH sshd: commands share one remote `sh` (one round trip each, no channel per
//! command), yet behave as on channels of their own: separate stdout/stderr, exit
//! status, no state leaking between commands, stdin at EOF; a command dropped midway
//! or a shell that dies does not break the next command.

#[path = "common/sshd.rs"]
mod sshd;

use std::time::Duration;

use ferry::command::Cmd;
use ferry::transport::{Transport, TransportError};
use sshd::{Client, Sshd};

fn script(s: &str) -> Cmd {
    Cmd::script(s, s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_commands_share_one_remote_shell() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let t = sshd::connect(client.spec(&server)).await.unwrap();

    // Every command is a subshell of the same long-lived shell (`$$` is that shell).
    let mut parents = Vec::new();
    for _ in 0..5 {
        let out = t.exec(&script("echo $$"), None).await.unwrap();
        assert!(out.success(), "{out:?}");
        parents.push(out.stdout_str().trim().to_string());
    }
    assert!(
        parents.iter().all(|p| p == &parents[0]),
        "commands ran under different parents: {parents:?}"
    );
    // ... which is a shell the sshd session runs (a descendant of the sshd), not the
    // sshd itself (the parent of a command on a channel of its own).
    let parent: u32 = parents[0].parse().unwrap();
    let comm = std::fs::read_to_string(format!("/proc/{parent}/comm")).unwrap();
    assert_eq!(comm.trim(), "sh", "the commands' parent is not a shell");
    assert!(
        sshd::descendants(server.pid()).contains(&parent),
        "{parent} is not under sshd {}",
        server.pid()
    );
    let logins = server.log().matches("Accepted publickey").count();
    assert_eq!(logins, 1, "one connection for all commands");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_status_and_isolation_are_those_of_a_channel_of_its_own() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let t = sshd::connect(client.spec(&server)).await.unwrap();

    let out = t
        .exec(&script("echo out; echo err >&2; exit 3"), None)
        .await
        .unwrap();
    assert_eq!(out.status, Some(3));
    assert_eq!(out.stdout_str(), "out\n");
    assert_eq!(out.stderr_str(), "err\n");

    // No trailing newline, empty output, blank lines, binary bytes: kept exactly.
    let out = t.exec(&script("printf abc"), None).await.unwrap();
    assert_eq!(out.stdout, b"abc");
    let out = t.exec(&Cmd::new("true"), None).await.unwrap();
    assert_eq!(
        (out.status, out.stdout.len(), out.stderr.len()),
        (Some(0), 0, 0)
    );
    let out = t.exec(&script("printf '\\n\\n'"), None).await.unwrap();
    assert_eq!(out.stdout, b"\n\n");
    let out = t
        .exec(
            &script("printf '\\000\\377x\\n' ; printf 'e\\n\\n' >&2"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(out.stdout, b"\x00\xffx\n");
    assert_eq!(out.stderr, b"e\n\n");

    // Large output arrives whole.
    let out = t
        .exec(&script("head -c 3000000 /dev/zero | tr '\\0' y"), None)
        .await
        .unwrap();
    assert_eq!(out.stdout.len(), 3_000_000);
    assert!(out.stdout.iter().all(|&b| b == b'y'));

    // Output that looks like a marker does not end the command.
    let out = t
        .exec(&script("echo 'ferry-0000 1 0'; echo after"), None)
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "ferry-0000 1 0\nafter\n");

    // Nothing leaks from one command into the next.
    let out = t
        .exec(
            &script("cd /; export FERRY_LEAK=1; X=2; umask 077; pwd"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "/\n");
    let out = t
        .exec(
            &script("pwd; echo \"${FERRY_LEAK:-unset} ${X:-unset}\"; umask"),
            None,
        )
        .await
        .unwrap();
    let text = out.stdout_str();
    let lines: Vec<&str> = text.lines().collect();
    assert_ne!(lines[0], "/", "cd leaked");
    assert_eq!(lines[1], "unset unset", "variables leaked");
    assert_ne!(lines[2], "0077", "umask leaked");
    // `exit` ends the command, not the shell.
    let out = t.exec(&script("exit 5"), None).await.unwrap();
    assert_eq!(out.status, Some(5));
    let out = t.exec(&Cmd::new("echo").arg("still"), None).await.unwrap();
    assert_eq!(out.stdout_str(), "still\n");

    // stdin is at EOF, and a command reading it cannot eat the next command.
    let out = t.exec(&Cmd::new("wc").arg("-c"), None).await.unwrap();
    assert_eq!(out.stdout_str().trim(), "0");
    let out = t.exec(&Cmd::new("cat"), None).await.unwrap();
    assert_eq!(out.stdout.len(), 0);
    let out = t
        .exec(&script("test -t 0 || echo notty"), None)
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "notty\n");

    let out = t
        .exec(&Cmd::new("ferry-no-such-command"), None)
        .await
        .unwrap();
    assert_eq!(out.status, Some(127));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_command_or_a_dead_shell_does_not_break_the_next_command() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let t = sshd::connect(client.spec(&server)).await.unwrap();
    let first_shell = t.exec(&script("echo $$"), None).await.unwrap();

    // Abandoned midway (a caller's timeout): the next command must not wait for it nor
    // see its output, and the abandoned command is stopped on the host, not left to
    // run on (and print into a later command's output).
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let woke = dir.path().join("woke");
    let pidfile = dir.path().join("pid");
    // Dropped once it runs (not while the login shell still starts: its startup files
    // are not what this is about).
    let t = std::sync::Arc::new(t);
    let running = {
        let (t, woke, pidfile) = (t.clone(), woke.clone(), pidfile.clone());
        tokio::spawn(async move {
            t.exec(
                &Cmd::new("sh")
                    .arg("-c")
                    .arg("echo $$ > \"$2\"; sleep 2; touch \"$1\"; echo late; echo late >&2")
                    .arg("sh")
                    .arg(woke.display().to_string())
                    .arg(pidfile.display().to_string()),
                None,
            )
            .await
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&pidfile).is_ok_and(|p| p.ends_with('\n')) {
        assert!(
            std::time::Instant::now() < deadline,
            "the command never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.abort();
    assert!(
        running.await.is_err_and(|e| e.is_cancelled()),
        "the command finished before it was dropped"
    );
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        t.exec(&script("echo next; echo $$"), None),
    )
    .await
    .expect("the next command hung behind the abandoned one")
    .unwrap();
    let lines: Vec<String> = out.stdout_str().lines().map(str::to_string).collect();
    assert_eq!(lines[0], "next", "{lines:?}");
    assert_ne!(
        lines[1],
        first_shell.stdout_str().trim(),
        "the abandoned command's shell was reused"
    );
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z ")) {
        assert!(
            std::time::Instant::now() < deadline,
            "the abandoned command (pid {pid}) still runs 10 s after it was dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !woke.exists(),
        "the abandoned command ran on after it was stopped"
    );
    for _ in 0..3 {
        let out = t.exec(&Cmd::new("echo").arg("clean"), None).await.unwrap();
        assert_eq!(
            (out.stdout_str().as_str(), out.stderr_str().as_str()),
            ("clean\n", "")
        );
    }

    // A command that kills the shell it runs in: an error (it may or may not have
    // done its work), and the next command gets a new shell.
    let err = t
        .exec(&script("kill -9 $$; sleep 5"), None)
        .await
        .expect_err("the shell died under the command");
    assert!(
        matches!(err, TransportError::Disconnected { .. }),
        "{err:?}"
    );
    let out = t
        .exec(&Cmd::new("echo").arg("recovered"), None)
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "recovered\n");
    let logins = server.log().matches("Accepted publickey").count();
    assert_eq!(
        logins, 1,
        "recovering needs a new shell, not a new connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_still_run_side_by_side() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let t = std::sync::Arc::new(sshd::connect(client.spec(&server)).await.unwrap());
    // Four commands that only finish once all four have started: if they were
    // serialised through the one shell, this would never finish.
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let d = dir.path().display().to_string();
    let mut tasks = Vec::new();
    for i in 0..4 {
        let t = t.clone();
        let d = d.clone();
        tasks.push(tokio::spawn(async move {
            t.exec(
                &Cmd::new("sh")
                    .arg("-c")
                    .arg("touch \"$1/$2\"; while [ \"$(ls \"$1\" | wc -l)\" -lt 4 ]; do sleep 0.05; done; echo $2")
                    .arg("sh")
                    .arg(&d)
                    .arg(i.to_string()),
                None,
            )
            .await
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let out = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("concurrent commands were serialised")
            .unwrap()
            .unwrap();
        assert_eq!(out.stdout_str(), format!("{i}\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_process_holding_the_output_never_hangs_later_commands() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let t = sshd::connect(client.spec(&server)).await.unwrap();
    // A "daemon" that keeps writing to the shell's stdout and stderr for 10 s.
    let out = t
        .exec(
            &script(
                "(i=0; while [ $i -lt 1000 ]; do echo tick; echo tock >&2; sleep 0.01; \
                 i=$((i+1)); done) & echo started",
            ),
            None,
        )
        .await
        .unwrap();
    // The daemon may print its first tick before `started`: order is not the point.
    assert!(out.stdout_str().contains("started"), "{out:?}");
    for n in 0..30 {
        let out = tokio::time::timeout(
            Duration::from_secs(10),
            t.exec(&script(&format!("echo mine-{n}; exit 3")), None),
        )
        .await
        .unwrap_or_else(|_| panic!("command {n} hung behind the background process"))
        .unwrap();
        assert_eq!(out.status, Some(3), "{out:?}");
        assert!(out.stdout_str().contains(&format!("mine-{n}")), "{out:?}");
    }
    // On a channel of its own (stdin given): `sleep &` keeps the pipes open for 60 s.
    let out = tokio::time::timeout(
        Duration::from_secs(15),
        t.exec(&script("sleep 60 & echo forked"), Some(b"x")),
    )
    .await
    .expect("a channel command waited for its background child")
    .unwrap();
    assert_eq!(out.stdout_str(), "forked\n", "{out:?}");
    assert_eq!(out.status, Some(0));
}

/// russh hands every message of a channel to a bounded queue and its session reader
/// waits while that queue is full: an idle shell nobody reads would stop every other
/// channel of the connection. A process left in the background writing to the shell's
/// output, while the next commands run on channels of their own, must not do that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_shell_that_a_background_process_writes_to_never_stalls_other_channels() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let t = sshd::connect(client.spec(&server)).await.unwrap();
    // Thousands of small writes in a few seconds: far more messages than russh's queue
    // of a channel holds (100 by default).
    let out = t
        .exec(
            &script(
                "(i=0; while [ $i -lt 3000 ]; do echo tick; echo tock >&2; \
                 i=$((i+1)); done; sleep 5) >/dev/stdout & echo started",
            ),
            None,
        )
        .await
        .unwrap();
    assert!(out.stdout_str().contains("started"), "{out:?}");
    // Channels of their own (stdin given), each running long enough for the shell's
    // queue to fill while nothing reads it.
    for n in 0..3 {
        let out = tokio::time::timeout(
            Duration::from_secs(20),
            t.exec(&script(&format!("sleep 1; echo own-{n}")), Some(b"x")),
        )
        .await
        .unwrap_or_else(|_| panic!("channel command {n} stalled behind the idle shell"))
        .unwrap();
        assert_eq!(out.stdout_str(), format!("own-{n}\n"), "{out:?}");
    }
    // The shell still runs commands afterwards.
    let out = t.exec(&script("echo after; exit 4"), None).await.unwrap();
    assert_eq!(out.status, Some(4), "{out:?}");
    assert!(out.stdout_str().contains("after"), "{out:?}");
}
