//! The journal's identity of tasks and runs: a task's definition (its module and a
//! digest of what it does) and a run's owner (playbook, inventory, every definition).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::inventory::Inventory;
use crate::journal::{JournalOwner, TaskDefinition};
use crate::playbook::template::without_template_spans;
use crate::playbook::Playbook;

/// What a task does, as the journal identifies it: its module and a digest of the
/// module, its arguments (not where they are written), `hosts`, `when`, and `become`,
/// `loop` and an include's `vars` where given. Name, tags,
/// `after` and `lane` are left out: they do not change what the task does on a host.
pub fn task_definition(task: &crate::playbook::Task) -> TaskDefinition {
    use sha2::Digest;
    let args = without_template_spans(&serde_json::to_value(&task.module).unwrap_or(Value::Null));
    let mut what = serde_json::json!({
        "module": task.module.name(),
        "args": args,
        "hosts": task.hosts.get_ref(),
        "when": task.when.as_ref().map(|w| w.source().to_string()),
    });
    // What else changes what the task does on a host, only where given (so the digest
    // of a task that has none of them stays what earlier ferry versions recorded).
    let extra = [
        ("become", task.become_.map(Value::Bool)),
        (
            "loop",
            task.loop_.as_ref().map(|l| match l {
                crate::playbook::task_keys::Loop::Items(items) => Value::Array(items.clone()),
                crate::playbook::task_keys::Loop::Var { path, .. } => Value::String(path.join(".")),
            }),
        ),
        (
            "vars",
            (!task.vars.is_empty()).then(|| Value::Object(task.vars.clone())),
        ),
    ];
    for (key, value) in extra {
        if let (Some(value), Some(map)) = (value, what.as_object_mut()) {
            map.insert(key.into(), value);
        }
    }
    TaskDefinition {
        module: task.module.name().to_string(),
        digest: hex::encode(sha2::Sha256::digest(what.to_string().as_bytes())),
    }
}

/// The journal identity of a run: the playbook and inventory (canonical paths) and the
/// definition of every task.
pub fn journal_owner(playbook: &Playbook, inventory: &Inventory) -> JournalOwner {
    use sha2::Digest;
    let tasks: BTreeMap<String, TaskDefinition> = playbook
        .tasks
        .iter()
        .map(|t| (t.name.clone(), task_definition(t)))
        .collect();
    let mut all = sha2::Sha256::new();
    for t in &playbook.tasks {
        if let Some(d) = tasks.get(&t.name) {
            all.update(t.name.as_bytes());
            all.update([0]);
            all.update(d.digest.as_bytes());
            all.update([0]);
        }
    }
    JournalOwner {
        playbook_name: playbook.name.clone(),
        paths: Some((
            crate::inventory::canonical_path(&playbook.path),
            crate::inventory::canonical_path(&inventory.path),
        )),
        tasks_digest: hex::encode(all.finalize()),
        tasks,
    }
}
