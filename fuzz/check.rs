//! The invariants the parsers must keep on ANY input, shared by the fuzz targets
//! (`fuzz/fuzz_targets/*.rs`) and the regression test (`tests/fuzz_regressions.rs`):
//! no panic, and every error is located at a real `line:column` of the input (with a
//! one-line field name when it names one); a successful parse is internally consistent.

use std::path::Path;
use std::sync::Arc;

use ferry::engine::{prepare, PrepareError, RunOptions};
use ferry::inventory::Inventory;
use ferry::playbook::source::{InputError, Location, SourceFile};
use ferry::playbook::Playbook;
use ferry::secrets::Secrets;

pub const INVENTORY_PATH: &str = "/fuzz/inventory.toml";
pub const PLAYBOOK_PATH: &str = "/fuzz/playbook.toml";

/// The inventory playbooks are checked against: the group and host names the repo's
/// playbooks use, the vars their templates read, and one hostile value.
pub const PLAYBOOK_INVENTORY: &str = r#"
[defaults.vars]
data_dir = "/srv/data"
backup_dir_old = "/srv/backup"
restart_old_app = "yes"
make_marker = "yes"
hostile = "a'b\"c$(touch /tmp/pwn)`id`;\n|&><*"
[hosts.old]
groups = ["packagist_old", "docker"]
[hosts.new]
groups = ["packagist_new", "k8s"]
[hosts.new.vars]
namespace = "default"
n = 3
"#;

/// Environment lookups are deterministic: names of even length are set.
pub fn fuzz_env(name: &str) -> Option<String> {
    name.len()
        .is_multiple_of(2)
        .then(|| format!("value-of-{name}"))
}

/// Panics unless `loc` names `path` and a real 1-based `line:column` of `text` (the
/// column may be one past the line's last character).
pub fn assert_located(loc: &Location, path: &str, text: &str, what: &str) {
    assert_eq!(loc.path, Path::new(path), "{what}: wrong file");
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(
        loc.line >= 1 && loc.line <= lines.len(),
        "{what}: line {} outside 1..={}",
        loc.line,
        lines.len()
    );
    let width = lines[loc.line - 1].chars().count();
    assert!(
        loc.column >= 1 && loc.column <= width + 1,
        "{what}: column {} outside 1..={} on line {}",
        loc.column,
        width + 1,
        loc.line
    );
}

/// An input error: located inside the input, says something, shows `file:line:col: `.
pub fn check_input_error(e: &InputError, path: &str, text: &str) {
    let what = format!("error {e:?}");
    assert_located(&e.location, path, text, &what);
    assert!(!e.message.trim().is_empty(), "{what}: empty message");
    let prefix = format!("{path}:{}:{}: ", e.location.line, e.location.column);
    assert!(e.to_string().starts_with(&prefix), "{what}: shown as {e}");
    if let Some(field) = &e.field {
        assert!(
            !field.is_empty() && !field.contains('\n'),
            "{what}: field {field:?}"
        );
    }
}

/// Parse `text` as an inventory and check the invariants; the result is returned.
pub fn check_inventory(text: &str) -> Result<Inventory, InputError> {
    let parse = || {
        Inventory::parse(
            &SourceFile::new(INVENTORY_PATH, text),
            &fuzz_env,
            &Secrets::new(),
        )
    };
    let result = parse();
    match &result {
        Err(e) => check_input_error(e, INVENTORY_PATH, text),
        Ok(inv) => {
            for (group, members) in &inv.groups {
                assert!(
                    !inv.hosts.contains_key(group),
                    "`{group}` is a host and a group"
                );
                for m in members {
                    assert!(inv.hosts.contains_key(m), "group {group}: unknown {m}");
                }
            }
            for (name, host) in &inv.hosts {
                assert_eq!(host.vars["inventory_hostname"], name.as_str());
                for g in &host.groups {
                    assert!(inv.groups[g].contains(name), "{name} not in its group {g}");
                }
            }
        }
    }
    // The same input gives the same answer.
    assert_eq!(
        format!("{:?}", result.as_ref().err()),
        format!("{:?}", parse().as_ref().err())
    );
    result
}

/// The inventory [`check_playbook`] uses.
pub fn playbook_inventory() -> Arc<Inventory> {
    match check_inventory(PLAYBOOK_INVENTORY) {
        Ok(inv) => Arc::new(inv),
        Err(e) => panic!("PLAYBOOK_INVENTORY does not parse: {e}"),
    }
}

/// Parse `text` as a playbook; when it parses, validate its host patterns against
/// `inventory` and render every template for every host (what `ferry play` does before
/// contacting anyone). Every error must be located inside the playbook.
pub fn check_playbook(text: &str, inventory: &Arc<Inventory>) {
    let pb = match Playbook::parse(SourceFile::new(PLAYBOOK_PATH, text)) {
        Err(e) => return check_input_error(&e, PLAYBOOK_PATH, text),
        Ok(pb) => pb,
    };
    for (i, t) in pb.tasks.iter().enumerate() {
        assert!(
            text.get(t.span.clone()).is_some(),
            "task {i} span {:?}",
            t.span
        );
        assert!(
            !pb.tasks[..i].iter().any(|o| o.name == t.name),
            "duplicate task {}",
            t.name
        );
        for dep in &t.after {
            assert!(
                pb.tasks[..i].iter().any(|o| &o.name == dep.get_ref()),
                "task {} depends on a later or unknown task",
                t.name
            );
        }
    }
    match prepare(
        Arc::new(pb),
        inventory.clone(),
        RunOptions::default(),
        &Secrets::new(),
    ) {
        Ok(_) => {}
        Err(PrepareError::Input(e)) => check_input_error(&e, PLAYBOOK_PATH, text),
        Err(PrepareError::Templates(errors)) => {
            assert!(!errors.is_empty());
            for e in errors {
                let Some(loc) = &e.location else {
                    panic!("template error without a location: {e}");
                };
                assert_located(loc, PLAYBOOK_PATH, text, &format!("template error {e:?}"));
                assert!(e.to_string().starts_with(&format!("{loc}: ")), "{e}");
            }
        }
        Err(other) => panic!("default options cannot fail with: {other}"),
    }
}
