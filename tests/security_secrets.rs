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

/// Run ferry with `args` in `dir` (no env secrets); stdout and stderr.
fn ferry_in(dir: &std::path::Path, args: &[&str]) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .current_dir(dir)
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("RUST_LOG")
        .output()
        .expect("run ferry");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn play_args(format: &str) -> Vec<&str> {
    vec![
        "play",
        "playbook.toml",
        "-i",
        "inventory.toml",
        "--yes",
        "-vv",
        "--format",
        format,
        "--events",
        "events.jsonl",
        "--journal",
        "journal.json",
    ]
}

/// Every value under a secret var is a secret: a number, strings nested in a table and
/// an array, a value that comes from the playbook's `[vars]`, and one with `"` and `\`
/// (in its JSON-escaped and shell-quoted forms too). None reaches the report (both
/// formats), the -vv log, the events or the journal. The events file is mode 0600.
#[test]
fn secret_vars_of_any_type_and_escaped_forms_are_masked() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let dir = tempfile::tempdir().unwrap();
    let quoted = r#"it's-"q\te-S9"#;
    std::fs::write(
        dir.path().join("inventory.toml"),
        format!(
            "{}secret_vars = [\"pin\", \"db\", \"api_key\", \"quoted\"]\n[hosts.target.vars]\npin = 918273\ndb = {{ user = \"dbuser-x1\", passwords = [\"nested-pw-Q7\", 4455667] }}\nquoted = {}\n",
            client.inventory_host("target", server.port),
            toml::Value::String(quoted.into()),
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("playbook.toml"),
        r#"name = "secret vars"
[vars]
api_key = "pb-api-key-Z3"

[[task]]
name = "Print them all and fail"
hosts = "all"
[task.command]
# `creates` puts the value into a shell-quoted operand (logged at -vv); the host also
# prints the value JSON-escaped, as `docker inspect` would.
creates = "/nonexistent/{{ quoted }}"
cmd = """printf '%s ' {{ pin }} {{ db.user }} {{ db.passwords.[0] }} {{ db.passwords.[1] }} {{ api_key }} {{ quoted }}; printf '%s ' {{ pin }} {{ db.user }} {{ db.passwords.[0] }} {{ db.passwords.[1] }} {{ api_key }} {{ quoted }} >&2; printf '%s' {{ quoted }} | sed 's/["\\\\]/\\\\&/g' >&2; exit 3"""
"#,
    )
    .unwrap();
    let json_quoted = serde_json::to_string(quoted).unwrap();
    let json_quoted = json_quoted.trim_matches('"').to_string();
    let debug_quoted = format!("{quoted:?}").trim_matches('"').to_string();
    let secrets = [
        "918273",
        "dbuser-x1",
        "nested-pw-Q7",
        "4455667",
        "pb-api-key-Z3",
        quoted,
        json_quoted.as_str(),
        debug_quoted.as_str(),
        // The tail of every quoted form (raw or shell-quoted, and JSON/debug-escaped).
        r"q\te-S9",
        r"q\\te-S9",
    ];
    for format in ["table", "json"] {
        let (stdout, stderr) = ferry_in(dir.path(), &play_args(format));
        let events = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
        let journal = std::fs::read_to_string(dir.path().join("journal.json")).unwrap();
        assert!(
            stdout.contains("failed"),
            "{format}: the task did not run and fail:\n{stdout}\n{stderr}"
        );
        for (name, text) in [
            ("stdout", &stdout),
            ("stderr (-vv log)", &stderr),
            ("events", &events),
            ("journal", &journal),
        ] {
            for secret in secrets {
                assert!(
                    !text.contains(secret),
                    "{format}: `{secret}` leaked into {name}:\n{text}"
                );
            }
        }
        let mode = std::fs::metadata(dir.path().join("events.jsonl"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "events mode {mode:o}");
    }
}

/// A secret as short as `ok` or `a` is masked in the host's output, but never inside
/// ferry's own words: the status of a passing task is still `ok` in the events, the
/// failure still says "command failed", and the journal (whose statuses are `ok`)
/// still reads for `ferry status`.
#[test]
fn short_secrets_mask_values_not_ferrys_words() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("inventory.toml"),
        format!(
            "{}secret_vars = [\"s1\", \"s2\"]\n[hosts.target.vars]\ns1 = \"ok\"\ns2 = \"a\"\n",
            client.inventory_host("target", server.port),
        ),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("playbook.toml"),
        r#"name = "short"
[[task]]
name = "Passes"
hosts = "all"
[task.command]
cmd = "true"
unless = "true"

[[task]]
name = "Prints and fails"
hosts = "all"
[task.command]
cmd = "echo {{ s1 }}{{ s2 }} >&2; exit 3"
"#,
    )
    .unwrap();
    let (stdout, stderr) = ferry_in(dir.path(), &play_args("json"));
    let events = std::fs::read_to_string(dir.path().join("events.jsonl")).unwrap();
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("report is not JSON ({e}):\n{stdout}\n{stderr}"));
    let tasks = report["tasks"].as_array().unwrap();
    assert_eq!(tasks[0]["status"], "ok", "{stdout}");
    let error = tasks[1]["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("command failed (exit 3)"),
        "ferry's words were masked: {error}"
    );
    assert!(
        error.ends_with(": ****************"),
        "stderr not masked: {error}"
    );
    let statuses: Vec<String> = events
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "task_end")
        .map(|e| e["status"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(statuses, ["ok", "failed"], "{events}");
    let (status_out, status_err) = ferry_in(
        dir.path(),
        &[
            "status",
            "playbook.toml",
            "-i",
            "inventory.toml",
            "--journal",
            "journal.json",
        ],
    );
    assert!(
        status_out.contains("Passes") && status_out.contains(" ok "),
        "ferry status cannot read the journal:\n{status_out}\n{status_err}"
    );
}

/// Control characters from a host's stderr and from a task name reach the terminal
/// escaped (`\x1b`, `\r`, `\x07`), in the report and in `ferry status`.
#[test]
fn terminal_escapes_are_shown_not_obeyed() {
    let server = Sshd::start();
    let client = Client::new(&server);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("inventory.toml"),
        client.inventory_host("target", server.port),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("playbook.toml"),
        r#"name = "escapes"
[[task]]
name = "evil \u001b]0;pwned\u0007 name"
hosts = "all"
[task.command]
cmd = '''printf 'clear\033[2J\rback\n' >&2; exit 1'''
"#,
    )
    .unwrap();
    let (stdout, stderr) = ferry_in(
        dir.path(),
        &[
            "play",
            "playbook.toml",
            "-i",
            "inventory.toml",
            "--journal",
            "journal.json",
        ],
    );
    let (status_out, _) = ferry_in(
        dir.path(),
        &[
            "status",
            "playbook.toml",
            "-i",
            "inventory.toml",
            "--journal",
            "journal.json",
        ],
    );
    for (name, text) in [("report", &stdout), ("status", &status_out)] {
        assert!(
            text.contains("clear\\x1b[2J\\rback"),
            "{name}: stderr not shown escaped:\n{text}\n{stderr}"
        );
        assert!(
            text.contains("evil \\x1b]0;pwned\\x07 name"),
            "{name}: task name not shown escaped:\n{text}"
        );
        assert!(
            !text.contains(['\x1b', '\r', '\x07']),
            "{name}: a control character reaches the terminal:\n{text:?}"
        );
    }
}
