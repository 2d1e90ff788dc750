//! Secrets never leak: a secret var, the sudo password and a failing command that prints
//! the secret on stderr, run through the real binary against a real sshd at -vv, with
//! events, the journal and both report formats; none of them may contain the secret.
//! Also: the journal is mode 0600.

#[path = "common/sshd.rs"]
mod sshd;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use sshd::{Client, Sshd};

const SECRET: &str = "s3cr3t-'\"$(x)-pa55";
const SUDO_PW: &str = "sudo-pw-Zq9";

fn run_ferry(dir: &std::path::Path, format: &str) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "play",
            "playbook.toml",
            "-i",
            "inventory.toml",
            "--yes",
            "-vv",
        ])
        .args([
            "--format",
            format,
            "--events",
            "events.jsonl",
            "--journal",
            "journal.json",
        ])
        .current_dir(dir)
        .env_remove("SSH_AUTH_SOCK")
        .env("FERRY_TEST_DB_PASSWORD", SECRET)
        .env("FERRY_TEST_SUDO_PASSWORD", SUDO_PW)
        .output()
        .expect("run ferry");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn secrets_appear_nowhere() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("inventory.toml"),
        format!(
            r#"[hosts.target]
address = "127.0.0.1"
port = {port}
user = "root"
identity_file = "{key}"
known_hosts = "{kh}"
ssh_config = "{cfg}"
become = true
become_password_env = "FERRY_TEST_SUDO_PASSWORD"
[hosts.target.vars]
db_password = {{ secret_env = "FERRY_TEST_DB_PASSWORD" }}
"#,
            port = server.port,
            key = client.key.private.display(),
            kh = client.known_hosts.display(),
            cfg = client.ssh_config.display(),
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("playbook.toml"),
        r#"name = "secrets"
[[task]]
name = "Use the secret"
hosts = "all"
[task.command]
cmd = "printf '%s' {{ db_password }} > /dev/null"

[[task]]
name = "Leak it on stderr and fail"
hosts = "all"
[task.command]
cmd = "echo {{ db_password }} >&2; echo {{ db_password }}; exit 3"
"#,
    )
    .unwrap();

    for format in ["table", "json"] {
        let (stdout, stderr) = run_ferry(dir.path(), format);
        let events = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
        let journal = std::fs::read_to_string(dir.path().join("journal.json")).unwrap();
        for (name, text) in [
            ("stdout", &stdout),
            ("stderr", &stderr),
            ("events", &events),
            ("journal", &journal),
        ] {
            assert!(
                !text.contains(SECRET),
                "{format}: the secret leaked into {name}:\n{text}"
            );
            assert!(
                !text.contains(SUDO_PW),
                "{format}: the sudo password leaked into {name}:\n{text}"
            );
        }
        // The secret really went through every path (masked), and the failure was seen.
        assert!(
            stdout.contains("********"),
            "{format}: no masked value in the report:\n{stdout}"
        );
        assert!(
            journal.contains("********"),
            "journal has no masked value:\n{journal}"
        );
        assert!(
            stdout.contains("failed"),
            "{format}: the failing task is not reported:\n{stdout}"
        );
        let mode = std::fs::metadata(dir.path().join("journal.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "journal mode {mode:o}");
    }
}

/// Shell metacharacters, quotes and newlines in vars reach the host as one argument each,
/// verbatim: nothing is executed, nothing is split.
#[test]
fn hostile_values_arrive_verbatim() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let canary = dir.path().join("pwned");
    let hostile = [
        format!("a'; touch {} #", canary.display()),
        format!("$(touch {})", canary.display()),
        format!("`touch {}`", canary.display()),
        format!("x\ntouch {}", canary.display()),
        format!("\"; touch {}; echo \"", canary.display()),
        "*".to_string(),
        " leading and trailing ".to_string(),
    ];
    let mut vars = String::new();
    let mut tasks = String::new();
    for (i, v) in hostile.iter().enumerate() {
        vars.push_str(&format!("v{i} = {}\n", toml::Value::String(v.clone())));
        tasks.push_str(&format!(
            "[[task]]\nname = \"write {i}\"\nhosts = \"all\"\n[task.command]\ncmd = \"printf '%s' {{{{ v{i} }}}} > {}/{i}\"\n\n",
            out_dir.display()
        ));
    }
    std::fs::write(
        dir.path().join("inventory.toml"),
        format!(
            "{}[hosts.target.vars]\n{vars}",
            client.inventory_host("target", server.port)
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("playbook.toml"),
        format!("name = \"hostile\"\n{tasks}"),
    )
    .unwrap();
    let (stdout, stderr) = run_ferry(dir.path(), "table");
    for (i, v) in hostile.iter().enumerate() {
        let got = std::fs::read_to_string(out_dir.join(i.to_string()))
            .unwrap_or_else(|e| panic!("value {i} not written ({e}):\n{stdout}\n{stderr}"));
        assert_eq!(&got, v, "value {i} changed on the way");
    }
    assert!(!canary.exists(), "a hostile value was executed on the host");
}
