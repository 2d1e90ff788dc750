//! No injection through module fields: every string field and var of the migration
//! modules that reaches a remote command is set to one hostile value (quotes, `$( )`,
//! backticks, `;`, newline, `|&><*`); each module runs its facts phase (and `apply`
//! where the scripted host can answer) against a [`FakeTransport`] that records every
//! command line; each line is split into words the way a POSIX shell does (shlex;
//! scripts passed to `sh -c` are split again), and the hostile value must be inside
//! exactly one word, whole — never cut into pieces that a shell would run.
//!
//! Modules whose facts need the Kubernetes API stop at the API (the fake host cannot
//! forward a port); what they send to the host before that (reading the kubeconfig) is
//! checked, and the fields only the API sees are listed in `API_ONLY`.

use std::sync::Arc;

use async_trait::async_trait;
use ferry::journal::Journal;
use ferry::module::{Peers, Predicted, TaskCtx};
use ferry::playbook::source::SourceFile;
use ferry::playbook::Playbook;
use ferry::secrets::Secrets;
use ferry::transport::fake::{output, FakeTransport};
use ferry::transport::{Transport, TransportError};
use serde_json::{json, Value};

/// Quotes of both kinds, command substitution, backticks, separators, a newline,
/// redirections, a glob and a space.
const HOSTILE: &str = "a'b\"c$(touch /tmp/pwn)`id`;\n|&><* x";

/// Pieces of [`HOSTILE`]: a word holding any of them must hold all of it.
const FRAGMENTS: &[&str] = &["touch /tmp/pwn", "pwn)", "`id`", "a'b", "* x"];

struct NoPeers;
#[async_trait]
impl Peers for NoPeers {
    async fn transport(&self, host: &str) -> Result<Arc<dyn Transport>, TransportError> {
        Err(TransportError::Config(format!("no peer `{host}` here")))
    }
}

fn ctx(host: &Arc<FakeTransport>, journal: &Arc<Journal>, vars: Value) -> TaskCtx {
    journal.task_started(host.host(), "t").unwrap();
    ferry::module::testing::task_ctx(
        host.clone(),
        "t",
        Arc::new(NoPeers),
        journal.clone(),
        vars.as_object().cloned().unwrap_or_default(),
    )
}

/// The words a POSIX shell would make of `line`; the script of `sh -c`/`bash -c` (any
/// word after `-c`) is split again, recursively, in place of itself.
fn shell_words(line: &str) -> Vec<String> {
    let Some(words) = shlex::split(line) else {
        panic!("not valid shell words (unbalanced quotes?): {line}");
    };
    let mut out = Vec::new();
    for (i, w) in words.iter().enumerate() {
        let after_c = i > 0 && words[i - 1] == "-c";
        match shlex::split(w) {
            Some(inner) if after_c && inner.len() > 1 => out.extend(shell_words(w)),
            _ => out.push(w.clone()),
        }
    }
    out
}

/// The directory [`HOSTILE`] names when read as a path (it contains a `/`).
fn parent_dir() -> Option<&'static str> {
    HOSTILE.rsplit_once('/').map(|(dir, _)| dir)
}

/// The work directory and part file ferry stages a hostile destination path in
/// (`<dir>/.ferry`, `<dir>/.ferry/<name>.part`).
fn staged_names() -> Vec<String> {
    match HOSTILE.rsplit_once('/') {
        Some((dir, name)) => vec![format!("{dir}/.ferry"), format!("{dir}/.ferry/{name}.part")],
        None => vec![".ferry".into(), format!("./.ferry/{HOSTILE}.part")],
    }
}

/// Every command `host` received keeps [`HOSTILE`] whole; returns how many words held it.
fn assert_no_injection(module: &str, host: &FakeTransport) -> usize {
    let mut whole = 0;
    for line in host.commands() {
        for w in shell_words(&line) {
            if w.contains(HOSTILE) {
                whole += 1;
            } else if Some(w.as_str()) == parent_dir() || staged_names().contains(&w) {
                // `mkdir -p` of the directory a hostile path is in, and ferry's work
                // directory and part file beside it: values of their own, whole.
                continue;
            } else if let Some(f) = FRAGMENTS.iter().find(|f| w.contains(**f)) {
                panic!("{module}: the hostile value was cut at {f:?}: word {w:?} of\n{line}");
            }
        }
    }
    whole
}

/// Panics if `needle` occurs in `line` anywhere but inside single quotes (where a shell
/// expands nothing). Scripts after `-c` are checked again at their own level.
fn assert_single_quoted(module: &str, line: &str, needle: &str) {
    let bytes: Vec<char> = line.chars().collect();
    let (mut single, mut double) = (false, false);
    let mut i = 0;
    while i < bytes.len() {
        let rest: String = bytes[i..].iter().collect();
        if rest.starts_with(needle) {
            assert!(
                single,
                "{module}: {needle:?} is not single-quoted (double: {double}) in\n{line}"
            );
        }
        match bytes[i] {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '\\' if !single => i += 1,
            _ => {}
        }
        i += 1;
    }
    let words = shlex::split(line).unwrap_or_default();
    for (i, w) in words.iter().enumerate() {
        if i > 0 && words[i - 1] == "-c" && w.contains(needle) {
            assert_single_quoted(module, w, needle);
        }
    }
}

/// A module's args, read from a playbook the way `ferry play` reads them.
fn module_args(module: &str, body: &str) -> ferry::registry::ModuleArgs {
    let text = format!("[[task]]\nname = \"t\"\nhosts = \"all\"\n[task.{module}]\n{body}\n");
    match Playbook::parse(SourceFile::new("pb.toml", text)) {
        Ok(pb) => pb.tasks[0].module.clone(),
        Err(e) => panic!("{module}: {e}"),
    }
}

/// The TOML literal of [`HOSTILE`], for fields that are not templates.
fn lit() -> String {
    toml::Value::String(HOSTILE.into()).to_string()
}

/// A scripted host answering every command with success and no output, except
/// `docker inspect` (every container asked for exists and runs) and `test -f` (files
/// are absent, so modules go on to create them).
fn scripted_host(name: &str) -> Arc<FakeTransport> {
    let host = FakeTransport::new(name);
    host.on("", output(0, ""));
    host.on_fn(" inspect ", |line, _| {
        let words = shlex::split(line).unwrap_or_default();
        let names = words.iter().skip_while(|w| *w != "inspect").skip(1);
        let containers: Vec<Value> = names
            .map(|n| {
                json!({
                    "Name": format!("/{n}"),
                    "State": {"Running": true},
                    "Config": {"Image": "packagist/x:1", "Labels": {}},
                })
            })
            .collect();
        output(0, &Value::Array(containers).to_string())
    });
    host.on("test -f ", output(1, ""));
    host
}

/// The outcome of one module on one scripted host.
struct Outcome {
    commands: usize,
    hostile_words: usize,
    result: String,
}

async fn run_module(module: &str, body: &str, vars: Value) -> Outcome {
    let args = module_args(module, body);
    let dir = tempfile::tempdir().unwrap();
    let journal =
        Arc::new(Journal::open(&dir.path().join("j.json"), "pb", Secrets::new(), true).unwrap());
    let host = scripted_host("old");
    let mut result = String::new();
    for check in [true, false] {
        let ctx = ctx(&host, &journal, vars.clone());
        match args.module().plan(&ctx, &Predicted::default()).await {
            Err(e) => result.push_str(&format!("check={check}: facts: {e}; ")),
            Ok(plan) if plan.changes.is_empty() || check => {
                result.push_str(&format!("check={check}: {} changes; ", plan.changes.len()))
            }
            Ok(plan) => match args.module().apply_plan(&ctx, plan).await {
                Ok(a) => result.push_str(&format!("applied changed={}; ", a.changed)),
                Err(e) => result.push_str(&format!("apply: {e}; ")),
            },
        }
    }
    if std::env::var("SHOW_COMMANDS").is_ok() {
        for c in host.commands() {
            println!("  $ {c}");
        }
    }
    let hostile_words = assert_no_injection(module, &host);
    for line in host.commands() {
        for needle in ["$(touch", "`id`"] {
            assert_single_quoted(module, &line, needle);
        }
    }
    Outcome {
        commands: host.commands().len(),
        hostile_words,
        result,
    }
}

/// How a field is written in the playbook.
#[derive(Clone, Copy)]
enum Kind {
    /// A template: `"{{ h }}"`, rendered from the var `h`.
    Template,
    /// A plain string: the hostile value itself.
    Literal,
    /// A list of plain strings.
    List,
    /// A list of templates.
    TemplateList,
}

/// Where a field's value goes.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Reaches {
    /// Into a command run on the host: checked.
    Host,
    /// Only into Kubernetes API requests (no shell); the fake host cannot serve the API.
    ApiOnly,
    /// Only into messages and the journal.
    NoCommand,
}

struct ModuleCase {
    module: &'static str,
    /// Fixed settings (not hostile), TOML lines.
    fixed: &'static str,
    fields: &'static [(&'static str, Kind, Reaches)],
}

use Kind::*;
use Reaches::*;

const K8S: [(&str, Kind, Reaches); 2] = [
    ("namespace", Template, ApiOnly),
    ("kubeconfig", Template, Host),
];

const CASES: &[ModuleCase] = &[
    ModuleCase {
        module: "docker_container",
        fixed: "state = \"stopped\"",
        fields: &[
            ("names", TemplateList, Host),
            ("warning", Template, NoCommand),
        ],
    },
    ModuleCase {
        module: "pg_dump",
        fixed: "",
        fields: &[
            ("container", Template, Host),
            ("database", Template, Host),
            ("user", Template, Host),
            ("dest", Template, Host),
        ],
    },
    ModuleCase {
        module: "redis_backup",
        fixed: "",
        fields: &[
            ("container", Template, Host),
            ("backup_script", Template, Host),
            ("rdb_path", Template, Host),
            ("dest", Template, Host),
        ],
    },
    ModuleCase {
        module: "storage_export",
        fixed: "method = \"tar\"",
        fields: &[
            ("container", Template, Host),
            ("data_dir", Template, Host),
            ("dest", Template, Host),
        ],
    },
    ModuleCase {
        module: "storage_export",
        fixed: "method = \"console\"",
        fields: &[
            ("container", Template, Host),
            ("data_dir", Template, Host),
            ("dest", Template, Host),
        ],
    },
    ModuleCase {
        module: "transfer",
        fixed: "",
        fields: &[("dest", Template, Host), ("artifact", Literal, NoCommand)],
    },
    ModuleCase {
        module: "preflight",
        fixed: "role = \"old\"",
        fields: &[
            ("containers", List, Host),
            ("ui_container", Literal, Host),
            ("postgres_container", Literal, Host),
            ("redis_container", Literal, Host),
            ("database", Literal, Host),
            ("redis_rdb_path", Literal, Host),
            ("data_dir", Template, Host),
            ("backup_dir", Template, Host),
        ],
    },
    ModuleCase {
        module: "preflight",
        fixed: "role = \"new\"",
        fields: &[
            ("deployments", List, ApiOnly),
            ("statefulsets", List, ApiOnly),
            ("ui_deployment", Literal, ApiOnly),
            ("ui_app_container", Literal, ApiOnly),
            ("openebs_base", Template, Host),
            ("staging_dir", Template, Host),
            K8S[0],
            K8S[1],
        ],
    },
    ModuleCase {
        module: "k8s_scale",
        fixed: "replicas = 0\nworkloads = [\"deployment/ui\"]",
        fields: &[("workloads", List, ApiOnly), K8S[0], K8S[1]],
    },
    ModuleCase {
        module: "migration_marker",
        fixed: "",
        fields: &[K8S[0], K8S[1]],
    },
    ModuleCase {
        module: "pg_restore_k8s",
        fixed: "",
        fields: &[
            ("statefulset", Template, ApiOnly),
            ("pvc", Template, ApiOnly),
            ("container", Template, ApiOnly),
            ("database", Template, ApiOnly),
            ("user", Template, ApiOnly),
            K8S[0],
            K8S[1],
        ],
    },
    ModuleCase {
        module: "redis_restore_openebs",
        fixed: "",
        fields: &[
            ("statefulset", Template, ApiOnly),
            ("pvc", Template, ApiOnly),
            ("container", Template, ApiOnly),
            K8S[0],
            K8S[1],
        ],
    },
    ModuleCase {
        module: "storage_import",
        fixed: "",
        fields: &[
            ("deployment", Template, ApiOnly),
            ("container", Template, ApiOnly),
            ("archive", Template, ApiOnly),
            ("verify_dir", Template, ApiOnly),
            K8S[0],
            K8S[1],
        ],
    },
    ModuleCase {
        module: "redis_flushdb",
        fixed: "db = 5",
        fields: &[
            ("statefulset", Template, ApiOnly),
            ("container", Template, ApiOnly),
            K8S[0],
            K8S[1],
        ],
    },
];

/// The TOML line setting `field` to a benign value or to the hostile one.
fn setting(field: &str, kind: Kind, hostile: bool) -> String {
    let one = if hostile {
        match kind {
            Template | TemplateList => "\"{{ h }}\"".to_string(),
            // Workloads are checked as kind/name when the playbook is read: the
            // hostile part is the name.
            List if field == "workloads" => {
                toml::Value::String(format!("deployment/{HOSTILE}")).to_string()
            }
            Literal | List => lit(),
        }
    } else if field == "workloads" {
        "\"deployment/benign\"".to_string()
    } else {
        format!("\"benign-{field}\"")
    };
    match kind {
        List | TemplateList => format!("{field} = [{one}]"),
        Template | Literal => format!("{field} = {one}"),
    }
}

/// The module table of `case` with `field` set to the hostile template or value and
/// every other field benign.
fn hostile_body(case: &ModuleCase, field: &str, kind: Kind) -> String {
    let mut body: Vec<String> = case.fixed.lines().map(str::to_string).collect();
    for (other, other_kind, _) in case.fields {
        if *other != field && !case.fixed.contains(&format!("{other} =")) {
            body.push(setting(other, *other_kind, false));
        }
    }
    body.retain(|l| !l.starts_with(&format!("{field} =")));
    body.push(setting(field, kind, true));
    body.join("\n")
}

/// Each string field of each migration module, set alone to the hostile value: every
/// command the host receives keeps it whole and single-quoted, and fields that feed
/// host commands really reach one.
#[tokio::test]
async fn hostile_field_values_stay_one_argument() {
    let mut covered = 0;
    let mut api_only = Vec::new();
    let mut report = Vec::new();
    for case in CASES {
        for (field, kind, reaches) in case.fields {
            let body = hostile_body(case, field, *kind);
            let outcome = run_module(case.module, &body, json!({ "h": HOSTILE })).await;
            let line = format!(
                "{}.{field}: {} commands, {} words hold the value; {}",
                case.module, outcome.commands, outcome.hostile_words, outcome.result
            );
            match reaches {
                Host => {
                    assert!(outcome.hostile_words > 0, "never reached the host: {line}");
                    covered += 1;
                }
                ApiOnly => {
                    assert_eq!(outcome.hostile_words, 0, "reached the host: {line}");
                    api_only.push(format!("{}.{field}", case.module));
                }
                NoCommand => assert_eq!(outcome.hostile_words, 0, "reached the host: {line}"),
            }
            report.push(line);
        }
    }
    println!("{}", report.join("\n"));
    println!(
        "fields checked on host commands: {covered}; Kubernetes-API-only (not covered here): {}",
        api_only.join(", ")
    );
    assert!(
        covered >= 25,
        "only {covered} fields reached a host command"
    );
}

/// The exact argv of a command that gets a hostile value, and vars (not fields) that
/// reach commands: `docker_bin` (the program itself) and `kubeconfig`.
#[tokio::test]
async fn exact_argv_and_hostile_vars() {
    let args = module_args(
        "docker_container",
        "names = [\"{{ h }}\"]\nstate = \"stopped\"",
    );
    let dir = tempfile::tempdir().unwrap();
    let journal =
        Arc::new(Journal::open(&dir.path().join("j.json"), "pb", Secrets::new(), true).unwrap());
    let host = scripted_host("old");
    let vars = json!({ "h": HOSTILE, "docker_bin": HOSTILE });
    let task = ctx(&host, &journal, vars);
    let plan = args
        .module()
        .plan(&task, &Predicted::default())
        .await
        .unwrap();
    args.module().apply_plan(&task, plan).await.unwrap();
    let argv: Vec<Vec<String>> = host.commands().iter().map(|l| shell_words(l)).collect();
    assert_eq!(
        argv,
        vec![
            vec![HOSTILE.to_string(), "inspect".into(), HOSTILE.into()],
            vec![HOSTILE.to_string(), "stop".into(), HOSTILE.into()],
        ]
    );
    // The program word is quoted strictly too: not an assignment, not an expansion.
    assert!(
        host.commands()[0].starts_with(['\'', '"']),
        "{}",
        host.commands()[0]
    );

    let args = module_args("migration_marker", "");
    let host = scripted_host("new");
    let ctx = ctx(&host, &journal, json!({ "kubeconfig": HOSTILE }));
    assert!(
        args.module()
            .plan(&ctx, &Predicted::default())
            .await
            .is_err(),
        "the fake serves no API"
    );
    let argv: Vec<Vec<String>> = host.commands().iter().map(|l| shell_words(l)).collect();
    assert_eq!(argv[0], vec!["cat".to_string(), HOSTILE.into()]);
    for line in host.commands() {
        assert_single_quoted("migration_marker", &line, "$(touch");
    }
}

// ---------------------------------------------------------------------------------------
// Over a real sshd: the argv a program on the host really receives.

#[path = "common/sshd.rs"]
mod sshd;

/// Hostile values for the real-host run: those of `security_secrets.rs` plus an empty
/// string, a leading dash, a lone quote, a tab and a backslash at the end.
fn real_host_values(canary: &std::path::Path) -> Vec<String> {
    let c = canary.display();
    vec![
        HOSTILE.replace("/tmp/pwn", &c.to_string()),
        format!("a'; touch {c} #"),
        format!("$(touch {c})"),
        format!("`touch {c}`"),
        format!("x\ntouch {c}"),
        format!("\"; touch {c}; echo \""),
        "*".into(),
        " leading and trailing ".into(),
        String::new(),
        "-rf".into(),
        "'".into(),
        "tab\there".into(),
        "ends with \\".into(),
    ]
}

/// Every call of the recorder: its argv after the program name, one file per call.
fn recorded_calls(dir: &std::path::Path) -> Vec<Vec<String>> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            let bytes = std::fs::read(f).unwrap();
            String::from_utf8(bytes)
                .unwrap()
                .split_terminator('\0')
                .map(str::to_string)
                .collect()
        })
        .collect()
}

/// Through the real binary over real SSH: a recorder program on the host writes down
/// the argv it gets, as the `command` module's program and as the docker client of
/// `docker_container`; every hostile value arrives as exactly one argument, verbatim,
/// and nothing was executed.
#[test]
fn real_host_sees_the_exact_argv() {
    let server = sshd::Sshd::start();
    let client = sshd::Client::new(&server);
    let dir = tempfile::tempdir().unwrap();
    let calls = dir.path().join("calls");
    std::fs::create_dir(&calls).unwrap();
    let canary = dir.path().join("pwned");
    let values = real_host_values(&canary);

    // `docker inspect` answers that every container asked for exists and runs.
    let inspect: Vec<Value> = values
        .iter()
        .map(|n| json!({"Name": format!("/{n}"), "State": {"Running": true}, "Config": {"Image": "x:1", "Labels": {}}}))
        .collect();
    let inspect_json = dir.path().join("inspect.json");
    std::fs::write(&inspect_json, Value::Array(inspect).to_string()).unwrap();
    let recorder = dir.path().join("record-argv");
    std::fs::write(
        &recorder,
        format!(
            "#!/bin/sh\nf=$(mktemp {calls}/call.$(date +%s%N).XXXXXX)\nfor a in \"$@\"; do printf '%s\\0' \"$a\"; done > \"$f\"\n[ \"$1\" = inspect ] && cat {json}\nexit 0\n",
            calls = calls.display(),
            json = inspect_json.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &recorder,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    let mut vars = format!(
        "recorder = {}\ndocker_bin = {}\n",
        toml::Value::String(recorder.display().to_string()),
        toml::Value::String(recorder.display().to_string())
    );
    let mut words = Vec::new();
    let mut names = Vec::new();
    for (i, v) in values.iter().enumerate() {
        vars.push_str(&format!("v{i} = {}\n", toml::Value::String(v.clone())));
        words.push(format!("{{{{ v{i} }}}}"));
        // An option-like container name is refused before anything runs (see
        // `option_like_values_are_refused_before_reaching_the_host`).
        if !v.starts_with('-') {
            names.push(format!("\"{{{{ v{i} }}}}\""));
        }
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
        format!(
            "name = \"argv\"\n[[task]]\nname = \"command\"\nhosts = \"all\"\n[task.command]\ncmd = {}\n\n[[task]]\nname = \"docker\"\nhosts = \"all\"\nafter = [\"command\"]\n[task.docker_container]\nnames = [{}]\nstate = \"stopped\"\n",
            // The program is written literally: a value in command position is refused.
            toml::Value::String(format!(
                "{} {}",
                ferry::command::quote(&recorder.display().to_string()),
                words.join(" ")
            )),
            names.join(", ")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args([
            "play",
            "playbook.toml",
            "-i",
            "inventory.toml",
            "--yes",
            "--journal",
            "journal.json",
        ])
        .current_dir(dir.path())
        .env_remove("SSH_AUTH_SOCK")
        .output()
        .unwrap();
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{report}");
    let got = recorded_calls(&calls);
    let name_values = values.iter().filter(|v| !v.starts_with('-')).cloned();
    let mut inspect_argv = vec!["inspect".to_string()];
    inspect_argv.extend(name_values.clone());
    let mut stop_argv = vec!["stop".to_string()];
    stop_argv.extend(name_values);
    assert_eq!(
        got,
        vec![values.clone(), inspect_argv, stop_argv],
        "argv seen on the host\n{report}"
    );
    assert!(!canary.exists(), "a hostile value was executed on the host");
    println!(
        "{} hostile values arrived verbatim in 4 calls",
        values.len()
    );
}

/// A value that a program would read as an option (`-…`) is refused in every field the
/// host sees as a name or path, before any command carries it: quoting keeps the shell
/// out, but `cat -n` or `docker inspect --format=…` would still change what runs.
#[tokio::test]
async fn option_like_values_are_refused_before_reaching_the_host() {
    const OPTION: &str = "--ferry-option-canary";
    let mut refused = 0;
    for case in CASES {
        for (field, kind, reaches) in case.fields {
            if !matches!(reaches, Host) || !matches!(kind, Template | TemplateList) {
                continue;
            }
            let body = hostile_body(case, field, *kind);
            let args = module_args(case.module, &body);
            let dir = tempfile::tempdir().unwrap();
            let journal = Arc::new(
                Journal::open(&dir.path().join("j.json"), "pb", Secrets::new(), true).unwrap(),
            );
            let host = scripted_host("old");
            let ctx = ctx(&host, &journal, json!({ "h": OPTION }));
            let err = match args.module().plan(&ctx, &Predicted::default()).await {
                Ok(_) => panic!("{}.{field}: an option-like value was accepted", case.module),
                Err(e) => e.to_string(),
            };
            assert!(
                err.contains("starting with `-`"),
                "{}.{field}: unclear error: {err}",
                case.module
            );
            for line in host.commands() {
                assert!(
                    !shell_words(&line).iter().any(|w| w.starts_with(OPTION)),
                    "{}.{field}: reached the host: {line}",
                    case.module
                );
            }
            refused += 1;
        }
    }
    println!("option-like values refused in {refused} fields");
    assert!(refused >= 20, "only {refused} fields checked");
}
