//! The `http` module through the real binary against a real HTTP server (Python's
//! http.server, tests/fixtures/http/server.py) and a real sshd: checks of status, body,
//! JSON and sha256; basic auth from a secret var that never shows; retries until a
//! route answers; a request through the host's SSH connection; a write that `--check`
//! does not send.

#[path = "common/play.rs"]
mod play;
#[path = "common/sshd.rs"]
mod sshd;

use std::path::Path;
use std::process::{Child, Command};

use play::{error, status, task, Host};
use sha2::{Digest, Sha256};

struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(record: &Path) -> Server {
        let port = sshd::free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/http/server.py");
        let child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(record)
            .spawn()
            .expect("start python3 http server");
        // Ready when it accepts a connection.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "http server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Server { child, port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn host_with_vars(port: u16) -> Host {
    let host = Host::start();
    let inventory = host.dir.path().join("inventory.toml");
    let mut text = std::fs::read_to_string(&inventory).unwrap();
    text.push_str(&format!(
        "secret_vars = [\"repo_token\"]\n[hosts.h.vars]\nrepo_token = \"s3cret-token\"\nweb = {port}\n"
    ));
    std::fs::write(&inventory, text).unwrap();
    host
}

#[test]
fn http_checks_answers_retries_and_keeps_the_secret() {
    let record = tempfile::NamedTempFile::new().unwrap();
    let server = Server::start(record.path());
    let host = host_with_vars(server.port);
    let dist: Vec<u8> = (0..4096).flat_map(|_| 0..=255u8).collect();
    let dist_sha = hex::encode(Sha256::digest(&dist));
    let tasks = [
        task(
            "packages",
            "http",
            "url = \"http://127.0.0.1:{{ web }}/packages.json\"\nuser = \"token\"\n\
             password = \"{{ repo_token }}\"\ncontains = \"metadata-url\"\n\
             json = [{ path = \"/metadata-url\", equals = \"/p2/%package%.json\" },\n\
                     { path = \"/packages/acme~1lib\", exists = true }]",
        )
        .replace("hosts = \"h\"\n", "hosts = \"h\"\nregister = \"repo\"\n"),
        "[[task]]\nname = \"read the answer\"\nhosts = \"h\"\n[task.assert]\n\
         that = '{{ eq repo.facts.status 200 }}'\nmsg = 'status {{ repo.facts.status }}'\n\n"
            .to_string(),
        task(
            "through the host",
            "http",
            "url = \"http://127.0.0.1:{{ web }}/host\"\nvia = \"host\"\ncontains = \"127.0.0.1:{{ web }}\"",
        ),
        task(
            "by name through the host",
            "http",
            "url = \"http://localhost:{{ web }}/dist.zip\"\nvia = \"host\"",
        ),
        task(
            "dist",
            "http",
            &format!("url = \"http://127.0.0.1:{{{{ web }}}}/dist.zip\"\nsha256 = \"{dist_sha}\""),
        ),
        task(
            "flaky",
            "http",
            "url = \"http://127.0.0.1:{{ web }}/flaky\"\nretries = 4\ndelay = \"1s\"",
        )
        // Its own registered facts, in its condition (decided when it ran).
        .replace(
            "hosts = \"h\"\n",
            "hosts = \"h\"\nregister = \"flaky\"\nfailed_when = '{{ ne flaky.facts.status 200 }}'\n",
        ),
        task(
            "hook",
            "http",
            "url = \"http://127.0.0.1:{{ web }}/hook\"\nmethod = \"POST\"\nbody = \"deployed\"\nstatus = [201]",
        ),
    ]
    .concat();

    // --check: the reads are sent and checked, the POST is not.
    let (code, doc) = host.play(&tasks, &["--check"]);
    assert_eq!(code, Some(0), "{doc}");
    for t in [
        "packages",
        "through the host",
        "by name through the host",
        "dist",
        "flaky",
    ] {
        assert_eq!(status(&doc, t), "ok", "{t}: {doc}");
    }
    assert_eq!(status(&doc, "hook"), "would_change", "{doc}");
    assert_eq!(
        std::fs::read_to_string(record.path()).unwrap(),
        "",
        "--check sent the POST"
    );

    let (code, doc) = host.play(&tasks, &["-v"]);
    assert_eq!(code, Some(0), "{doc}");
    assert_eq!(status(&doc, "hook"), "changed", "{doc}");
    assert_eq!(
        std::fs::read_to_string(record.path()).unwrap(),
        "deployed\n"
    );
    assert!(
        !doc.to_string().contains("s3cret-token"),
        "the secret is in the report: {doc}"
    );

    // Failures name what differed.
    let failing = [
        task(
            "no auth",
            "http",
            "url = \"http://127.0.0.1:{{ web }}/packages.json\"",
        ),
        task(
            "wrong value",
            "http",
            "url = \"http://127.0.0.1:{{ web }}/packages.json\"\nuser = \"token\"\n\
             password = \"{{ repo_token }}\"\njson = [{ path = \"/metadata-url\", equals = \"/p/x\" }]",
        ),
        task(
            "wrong sha",
            "http",
            "url = \"http://127.0.0.1:{{ web }}/dist.zip\"\nsha256 = \"00ff\"",
        ),
        task(
            "refused",
            "http",
            &format!("url = \"http://127.0.0.1:{}/\"\nretries = 1\ndelay = \"1s\"", sshd::free_port()),
        ),
    ]
    .concat();
    for (name, expected) in [
        ("no auth", "status 401 (expected 200)".to_string()),
        (
            "wrong value",
            "/metadata-url is \"/p2/%package%.json\", expected \"/p/x\"".to_string(),
        ),
        ("wrong sha", format!("has sha256 {dist_sha}, not 00ff")),
        ("refused", "(from the laptop, 2 tries)".to_string()),
    ] {
        let one = failing
            .split("[[task]]")
            .find(|t| t.contains(&format!("name = \"{name}\"")))
            .unwrap();
        let (code, doc) = host.play(&format!("[[task]]{one}"), &[]);
        assert_eq!(code, Some(2), "{doc}");
        assert!(error(&doc, name).contains(&expected), "{name}: {doc}");
        assert!(!doc.to_string().contains("s3cret-token"), "{doc}");
    }

    // A URL that is not one is refused before anything runs.
    let (code, doc) = host.play(&task("bad", "http", "url = \"ftp://x/\""), &[]);
    assert_eq!(code, Some(4), "{doc}");
}
