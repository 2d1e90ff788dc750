//! Playbook and inventory parsing: good and bad fixture files, exact error locations.

use std::path::Path;
use std::sync::Arc;

use ferry::engine::{prepare, PrepareError, RunOptions};
use ferry::inventory::Inventory;
use ferry::playbook::Playbook;
use ferry::secrets::Secrets;

fn fixture(kind: &str, name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(kind)
        .join(name)
}

/// (line, column, field, message fragment) of a bad playbook.
fn playbook_error(name: &str) -> (usize, usize, Option<String>, String) {
    let e = Playbook::load(&fixture("playbooks", name)).expect_err(name);
    assert!(e.location.path.ends_with(name));
    (e.location.line, e.location.column, e.field, e.message)
}

#[test]
fn good_playbook_parses() {
    let pb = Playbook::load(&fixture("playbooks", "good.toml")).unwrap();
    assert_eq!(pb.name, "fixture");
    assert_eq!(pb.tasks.len(), 2);
    assert_eq!(pb.tasks[0].module.name(), "command");
    assert_eq!(pb.tasks[0].tags, vec!["preflight"]);
    assert_eq!(pb.tasks[1].after[0].get_ref(), "Check the data dir");
    assert_eq!(pb.vars["data_dir"], "/srv/data");
}

#[test]
fn unknown_task_key() {
    let (l, c, f, m) = playbook_error("unknown_task_key.toml");
    assert_eq!((l, c, f.as_deref()), (4, 1, Some("tagz")));
    assert!(m.contains("unknown field `tagz`"), "{m}");
}

#[test]
fn unknown_module_key() {
    let (l, c, f, m) = playbook_error("unknown_module_key.toml");
    assert_eq!((l, c, f.as_deref()), (6, 1, Some("creates_")));
    assert!(m.contains("`creates`"), "{m}");
}

#[test]
fn two_modules() {
    let (l, c, _, m) = playbook_error("two_modules.toml");
    assert_eq!((l, c), (4, 7));
    assert!(
        m.contains("exactly one module") && m.contains("`assert` and `command`"),
        "{m}"
    );
}

#[test]
fn no_module() {
    let (l, c, _, m) = playbook_error("no_module.toml");
    assert_eq!((l, c), (7, 1));
    assert!(m.contains("task `lonely` has no module"), "{m}");
}

#[test]
fn wrong_type() {
    let (l, c, f, m) = playbook_error("wrong_type.toml");
    assert_eq!((l, c, f.as_deref()), (6, 11, Some("changed")));
    assert!(m.contains("expected a boolean"), "{m}");
}

#[test]
fn missing_and_cyclic_dependencies() {
    let (l, c, f, m) = playbook_error("missing_dep.toml");
    assert_eq!((l, c, f.as_deref()), (4, 10, Some("after")));
    assert!(m.contains("`b`, which is not an earlier task"), "{m}");
    let (l, c, _, m) = playbook_error("self_dep.toml");
    assert_eq!((l, c), (4, 10));
    assert!(m.contains("itself"), "{m}");
}

#[test]
fn raw_interpolation_in_shell_field() {
    let (l, c, f, m) = playbook_error("raw_shell.toml");
    // `cmd = "echo {{{ data_dir }}}"`: located at the raw expression itself.
    assert_eq!((l, c, f.as_deref()), (5, 13, Some("cmd")));
    assert!(m.contains("raw interpolation"), "{m}");
}

#[test]
fn inventory_errors_are_located() {
    let s = Secrets::new();
    let e = Inventory::load(&fixture("inventory", "unknown_key.toml"), &s).unwrap_err();
    assert_eq!((e.location.line, e.location.column), (3, 1));
    assert_eq!(e.field.as_deref(), Some("identity_fiel"));
    let e = Inventory::load(&fixture("inventory", "bad_policy.toml"), &s).unwrap_err();
    assert_eq!((e.location.line, e.location.column), (3, 21));
    assert_eq!(e.field.as_deref(), Some("host_key_checking"));
    assert!(e.message.contains("accept-new"), "{}", e.message);
}

fn load(pb: &str) -> (Arc<Playbook>, Arc<Inventory>) {
    let inv = Inventory::load(&fixture("inventory", "good.toml"), &Secrets::new()).unwrap();
    let pb = Playbook::load(&fixture("playbooks", pb)).unwrap();
    (Arc::new(pb), Arc::new(inv))
}

#[test]
fn undefined_variable_is_found_before_running_with_its_location() {
    let (pb, inv) = load("undefined_var.toml");
    let Err(PrepareError::Templates(errors)) =
        prepare(pb, inv, RunOptions::default(), &Secrets::new())
    else {
        panic!("expected template errors");
    };
    // Once per host of "all".
    assert_eq!(errors.len(), 2);
    let e = &errors[0];
    assert_eq!(e.variable.as_deref(), Some("nope"));
    let loc = e.location.as_ref().unwrap();
    // `cmd = "echo {{ data_dir }} {{ nope }}"`: the `{{ nope }}` starts at column 28.
    assert_eq!((loc.line, loc.column), (5, 28));
    assert!(e.to_string().contains("undefined variable `nope`"));
}

#[test]
fn vars_precedence_reaches_templates() {
    let (pb, inv) = load("good.toml");
    let p = prepare(pb, inv, RunOptions::default(), &Secrets::new()).unwrap();
    // old: group var beats default and playbook var; new: host var.
    assert_eq!(p.vars["old"].get("data_dir").unwrap(), "/srv/docker");
    assert_eq!(p.vars["new"].get("data_dir").unwrap(), "/srv/new");
    assert_eq!(p.hosts["old"].len(), 1);
    assert_eq!(p.hosts["new"].len(), 1);
}

/// `hostvars` and `groups` are one allocation shared by every host, not a copy in each
/// host's variables (which made memory grow with the square of the host count).
#[test]
fn hosts_share_one_copy_of_hostvars_and_groups() {
    let (pb, inv) = load("good.toml");
    let p = prepare(pb, inv, RunOptions::default(), &Secrets::new()).unwrap();
    let (old, new) = (&p.vars["old"], &p.vars["new"]);
    assert!(Arc::ptr_eq(old.shared(), new.shared()));
    assert!(old.values().get("hostvars").is_none());
    assert!(old.values().get("groups").is_none());
    // Still readable by modules and templates.
    assert_eq!(old.get("hostvars").unwrap()["new"]["data_dir"], "/srv/new");
    assert_eq!(old.get("groups").unwrap()["docker"][0], "old");
    assert_eq!(old.get("group_names").unwrap()[0], "docker");
}

/// Every playbook and inventory the repository ships still parses under the stricter
/// shell-template and variable rules.
#[test]
fn shipped_playbooks_and_inventories_parse() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut playbooks = vec![root.join("playbooks/packagist-migrate.toml")];
    for dir in ["playbooks/examples"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                playbooks.push(path);
            }
        }
    }
    for path in &playbooks {
        if let Err(e) = Playbook::load(path) {
            panic!("{}: {e}", path.display());
        }
    }
    let mut inventories = Vec::new();
    for dir in ["inventory", "vagrant"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                inventories.push(path);
            }
        }
    }
    assert!(!inventories.is_empty());
    for path in &inventories {
        let text = std::fs::read_to_string(path).unwrap();
        let source = ferry::playbook::source::SourceFile::new(path, text);
        // `*_env` settings name variables of the operator's shell: any value will do.
        if let Err(e) = Inventory::parse(&source, &|_| Some("x".into()), &Secrets::new()) {
            panic!("{}: {e}", path.display());
        }
    }
}

#[test]
fn limit_tags_and_start_at_select() {
    let (pb, inv) = load("good.toml");
    let opts = RunOptions {
        limit: Some("new".into()),
        ..Default::default()
    };
    let p = prepare(pb.clone(), inv.clone(), opts, &Secrets::new()).unwrap();
    assert_eq!(p.hosts.keys().collect::<Vec<_>>(), vec!["new"]);
    let opts = RunOptions {
        tags: vec!["preflight".into()],
        ..Default::default()
    };
    let p = prepare(pb.clone(), inv.clone(), opts, &Secrets::new()).unwrap();
    assert_eq!(p.hosts.keys().collect::<Vec<_>>(), vec!["old"]);
    let opts = RunOptions {
        start_at: Some("Make a marker".into()),
        ..Default::default()
    };
    let p = prepare(pb.clone(), inv.clone(), opts, &Secrets::new()).unwrap();
    assert_eq!(p.hosts.keys().collect::<Vec<_>>(), vec!["new"]);
    let opts = RunOptions {
        start_at: Some("nope".into()),
        ..Default::default()
    };
    assert!(matches!(
        prepare(pb, inv, opts, &Secrets::new()),
        Err(PrepareError::StartAt(_))
    ));
}

/// Columns count characters, in the file and inside templates (found while writing the
/// fuzz regression inputs: a template error after multi-byte characters pointed at the
/// wrong column, counting bytes of the template as characters of the line).
#[test]
fn template_error_columns_count_characters() {
    let (_, inv) = load("good.toml");
    let text =
        "[[task]]\nname = \"é\"\nhosts = \"all\"\n[task.command]\ncmd = \"échø 😀 {{ nope }}\"\n";
    let pb = Arc::new(
        Playbook::parse(ferry::playbook::source::SourceFile::new("pb.toml", text)).unwrap(),
    );
    let Err(PrepareError::Templates(errors)) =
        prepare(pb, inv, RunOptions::default(), &Secrets::new())
    else {
        panic!("expected template errors");
    };
    let loc = errors[0].location.as_ref().unwrap();
    // `cmd = "échø 😀 {{ nope }}"`: the `{{` is the 15th character of line 5.
    assert_eq!((loc.line, loc.column), (5, 15), "{}", errors[0]);
}

#[test]
fn non_utf8_and_empty_files_are_located_errors() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pb.toml");
    std::fs::write(&path, b"[[task]]\nname = \"t\xe9\"\n").unwrap();
    let e = Playbook::load(&path).unwrap_err();
    assert_eq!((e.location.line, e.location.column), (2, 10));
    assert_eq!(e.field.as_deref(), Some("name"));
    assert!(e.message.contains("0xe9"), "{}", e.message);
    std::fs::write(&path, "# nothing\n").unwrap();
    let e = Playbook::load(&path).unwrap_err();
    assert_eq!((e.location.line, e.location.column), (1, 1));
    assert!(e.message.contains("no tasks"), "{}", e.message);
    std::fs::write(&path, "").unwrap();
    let e = Inventory::load(&path, &Secrets::new()).unwrap_err();
    assert!(e.message.contains("no hosts"), "{}", e.message);
}

fn parse(text: &str) -> Result<Playbook, ferry::playbook::source::InputError> {
    Playbook::parse(ferry::playbook::source::SourceFile::new("pb.toml", text))
}

#[test]
fn lane_defaults_to_main_and_parses() {
    let pb = parse(
        "[[task]]\nname = \"a\"\nhosts = \"all\"\nlane = \"storage-2_b\"\n[task.command]\ncmd = \"true\"\n\n\
         [[task]]\nname = \"b\"\nhosts = \"all\"\n[task.command]\ncmd = \"true\"\n",
    )
    .unwrap();
    assert_eq!(pb.tasks[0].lane, "storage-2_b");
    assert_eq!(pb.tasks[1].lane, "main");
    assert_eq!(ferry::playbook::DEFAULT_LANE, "main");
}

#[test]
fn bad_lane_names_are_located_errors() {
    for (lane, column) in [("\"\"", 8), ("\"Bad Lane\"", 8), ("\"a/b\"", 8)] {
        let text = format!(
            "[[task]]\nname = \"a\"\nhosts = \"all\"\nlane = {lane}\n[task.command]\ncmd = \"true\"\n"
        );
        let e = parse(&text).expect_err(lane);
        assert!(e.location.path.ends_with("pb.toml"));
        assert_eq!((e.location.line, e.location.column), (4, column), "{lane}");
        assert_eq!(e.field.as_deref(), Some("lane"), "{lane}");
        assert!(
            e.message.contains("is not a lane name") && e.message.contains("task `a`"),
            "{}",
            e.message
        );
    }
    // Not a string: the type error is located too.
    let e = parse(
        "[[task]]\nname = \"a\"\nhosts = \"all\"\nlane = 3\n[task.command]\ncmd = \"true\"\n",
    )
    .unwrap_err();
    assert_eq!(e.location.line, 4);
    assert_eq!(e.field.as_deref(), Some("lane"));
}

#[test]
fn k8s_args_keep_unknown_field_errors_located() {
    // The shared Kubernetes argument set (`k8s_args!`) is plain fields: a misspelling is
    // still refused, and located at the misspelled key.
    let e = parse(
        "[[task]]\nname = \"flush\"\nhosts = \"all\"\n[task.redis_flushdb]\ndb = 5\nnamepsace = \"x\"\n",
    )
    .unwrap_err();
    assert_eq!((e.location.line, e.location.column), (6, 1), "{e}");
    assert_eq!(e.field.as_deref(), Some("namepsace"), "{e}");
    assert!(e.message.contains("unknown field `namepsace`"), "{e}");
    assert!(e.to_string().starts_with("pb.toml:6:1: "), "{e}");
    // Both fields of the set still parse, in every module that takes it.
    for (module, args) in [
        ("redis_flushdb", "db = 5\n"),
        ("migration_marker", ""),
        (
            "k8s_scale",
            "workloads = [\"deployment/ui\"]\nreplicas = 0\n",
        ),
        ("pg_restore_k8s", ""),
        ("redis_restore_openebs", ""),
        ("storage_import", ""),
        ("storage_stream", "source = \"old\"\n"),
        ("storage_stage", "source = \"old\"\ndest = \"/x.tgz\"\n"),
    ] {
        let text = format!(
            "[[task]]\nname = \"t\"\nhosts = \"all\"\n[task.{module}]\n{args}\
             namespace = \"packagist\"\nkubeconfig = \"/etc/k.conf\"\n"
        );
        let pb = parse(&text).unwrap_or_else(|e| panic!("{module}: {e}"));
        let args = serde_json::to_value(&pb.tasks[0].module).unwrap();
        let field = |name: &str| args[module][name].to_string();
        assert!(
            field("namespace").contains("\"packagist\""),
            "{module}: {args}"
        );
        assert!(
            field("kubeconfig").contains("\"/etc/k.conf\""),
            "{module}: {args}"
        );
    }
}

#[test]
fn timeouts_take_plain_seconds_or_text_with_a_unit() {
    for (module, args, field) in [
        ("pg_restore_k8s", "", "timeout"),
        ("redis_restore_openebs", "", "timeout"),
        ("storage_import", "", "timeout"),
        ("storage_stream", "source = \"old\"\n", "timeout"),
        (
            "storage_export",
            "container = \"c\"\ndata_dir = \"/d\"\ndest = \"/x.tgz\"\n",
            "export_timeout",
        ),
    ] {
        for (value, seconds) in [("600", 600), ("\"10m\"", 600), ("\"1h30m\"", 5400)] {
            let text = format!(
                "[[task]]\nname = \"t\"\nhosts = \"all\"\n[task.{module}]\n{args}{field} = {value}\n"
            );
            let pb = parse(&text).unwrap_or_else(|e| panic!("{module} {value}: {e}"));
            let args = serde_json::to_value(&pb.tasks[0].module).unwrap();
            assert_eq!(args[module][field], seconds, "{module} {value}: {args}");
        }
    }
}
