//! What the task keys around a module mean (see `crate::playbook::task_keys`): the
//! value `register` gives later tasks, one result from a loop's items, and the
//! verdict `changed_when`/`failed_when`/`ignore_errors` make of a result. Pure: the
//! lane (`lane.rs`) calls these around `run_task`.

use serde_json::{json, Map, Value};

use crate::playbook::template::{Renderer, Vars};
use crate::playbook::Task;
use crate::report::{TaskResult, TaskStatus};
use crate::secrets::Secrets;

/// The shape of a registered result before the task has run: what `prepare` checks
/// later templates against (so `{{ r.stdout }}` is known, `{{ r.stdotu }}` is not).
pub(super) fn placeholder() -> Value {
    json!({
        "changed": false, "failed": false, "skipped": false, "would_change": false,
        "status": "ok", "rc": 0, "stdout": "", "stderr": "",
        "stdout_lines": [], "stderr_lines": [], "msg": "", "changes": [],
        "facts": {}, "results": [],
    })
}

fn lines(text: &str) -> Value {
    Value::Array(text.lines().map(|l| Value::String(l.to_string())).collect())
}

/// What `register = "name"` makes of a task's result, as Ansible's registered vars:
/// `changed`, `failed`, `skipped`, `rc`, `stdout`(`_lines`), `stderr`(`_lines`), `msg`,
/// plus the module's `facts`, the planned `changes` and, for a loop, `results`.
pub(super) fn registered(r: &TaskResult, results: Vec<Value>) -> Value {
    let (rc, stdout, stderr) = match &r.output {
        Some(o) => (json!(o.rc), o.stdout.as_str(), o.stderr.as_str()),
        None => (Value::Null, "", ""),
    };
    json!({
        "changed": r.status == TaskStatus::Changed,
        "failed": r.status == TaskStatus::Failed || r.warnings.iter().any(|w| w.starts_with(IGNORED)),
        "skipped": r.status == TaskStatus::Skipped,
        "would_change": r.status == TaskStatus::WouldChange,
        "status": r.status.as_str(),
        "rc": rc,
        "stdout": stdout,
        "stderr": stderr,
        "stdout_lines": lines(stdout),
        "stderr_lines": lines(stderr),
        "msg": r.error.clone().unwrap_or_default(),
        "changes": r.changes,
        "facts": r.facts,
        "results": results,
    })
}

/// The warning an ignored failure leaves (and how `registered` tells it was one).
const IGNORED: &str = "failed, ignored (ignore_errors): ";

/// One result of a loop's item results, in item order: the worst status (failed, then
/// changed, would change, ok), every item's changes and errors named by its item.
pub(super) fn merge_items(mut whole: TaskResult, items: Vec<(String, TaskResult)>) -> TaskResult {
    let mut status = TaskStatus::Ok;
    let mut errors = Vec::new();
    for (label, r) in items {
        status = match (status, r.status) {
            (TaskStatus::Failed, _) | (_, TaskStatus::Failed) => TaskStatus::Failed,
            (TaskStatus::Changed, _) | (_, TaskStatus::Changed) => TaskStatus::Changed,
            (TaskStatus::WouldChange, _) | (_, TaskStatus::WouldChange) => TaskStatus::WouldChange,
            _ => TaskStatus::Ok,
        };
        whole
            .changes
            .extend(r.changes.into_iter().map(|c| format!("[{label}] {c}")));
        whole.diffs.extend(r.diffs);
        whole
            .notes
            .extend(r.notes.into_iter().map(|n| format!("[{label}] {n}")));
        whole
            .warnings
            .extend(r.warnings.into_iter().map(|w| format!("[{label}] {w}")));
        if let Some(e) = r.error {
            errors.push(format!("[{label}] {e}"));
        }
        if r.output.is_some() {
            whole.output = r.output;
        }
    }
    whole.status = status;
    whole.error = (!errors.is_empty()).then(|| errors.join("\n"));
    whole
}

/// `failed_when`, then `changed_when`, then `ignore_errors`, on a finished result. The
/// conditions see the host's vars and, under the task's `register` name, its own
/// result. A condition that does not render fails the task, naming it.
pub(super) fn judge(
    task: &Task,
    r: &mut TaskResult,
    vars: &Vars,
    renderer: &Renderer,
    secrets: &Secrets,
    check: bool,
) {
    if task.failed_when.is_some() || task.changed_when.is_some() {
        let mut own = Map::new();
        if let Some(name) = &task.register {
            own.insert(name.clone(), registered(r, Vec::new()));
        }
        let vars = vars.overlay(&own, secrets);
        let interrupted = r
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("interrupted"));
        if let (Some(cond), false) = (&task.failed_when, interrupted) {
            match renderer.truthy(cond, &vars) {
                Ok(true) => {
                    r.status = TaskStatus::Failed;
                    let why = format!("failed_when `{}` holds", cond.source());
                    r.error = Some(match r.error.take() {
                        Some(e) => format!("{why}: {e}"),
                        None => why,
                    });
                }
                Ok(false) => {
                    // The condition replaces the module's verdict: what the module
                    // called a failure (a command's exit status) is not one.
                    if r.status == TaskStatus::Failed {
                        if let Some(e) = r.error.take() {
                            r.notes.push(format!("not a failure (failed_when): {e}"));
                        }
                        r.status = match (r.changes.is_empty(), check) {
                            (true, _) => TaskStatus::Ok,
                            (false, true) => TaskStatus::WouldChange,
                            (false, false) => TaskStatus::Changed,
                        };
                    }
                }
                Err(e) => fail(r, format!("failed_when: {e}")),
            }
        }
        // In check mode nothing ran: the module's "would change" stands.
        if let (Some(cond), false) = (&task.changed_when, check) {
            if matches!(r.status, TaskStatus::Ok | TaskStatus::Changed) {
                match renderer.truthy(cond, &vars) {
                    Ok(true) => r.status = TaskStatus::Changed,
                    Ok(false) => r.status = TaskStatus::Ok,
                    Err(e) => fail(r, format!("changed_when: {e}")),
                }
            }
        }
    }
    if task.ignore_errors && r.status == TaskStatus::Failed {
        let e = r.error.take().unwrap_or_default();
        r.warnings.push(format!("{IGNORED}{e}"));
        r.status = TaskStatus::Ok;
    }
}

fn fail(r: &mut TaskResult, message: String) {
    r.status = TaskStatus::Failed;
    r.error = Some(message);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::CommandOutput;

    fn task(keys: &str) -> Task {
        let text = format!(
            "[[task]]\nname = \"t\"\nhosts = \"all\"\nregister = \"r\"\n{keys}\n\
             [task.command]\ncmd = \"true\"\n"
        );
        let pb = crate::playbook::Playbook::parse(crate::playbook::source::SourceFile::new(
            "p.toml", text,
        ))
        .unwrap();
        pb.tasks[0].clone()
    }

    fn ran(status: TaskStatus, rc: u32, stdout: &str) -> TaskResult {
        TaskResult {
            status,
            changes: vec!["run command".into()],
            error: (status == TaskStatus::Failed).then(|| format!("command failed (exit {rc})")),
            output: Some(CommandOutput {
                rc: Some(rc),
                stdout: stdout.into(),
                stderr: String::new(),
            }),
            ..TaskResult::default()
        }
    }

    fn judged(keys: &str, mut r: TaskResult, check: bool) -> TaskResult {
        let vars = Vars::new(Map::new(), &Secrets::new());
        judge(
            &task(keys),
            &mut r,
            &vars,
            &Renderer::new(None),
            &Secrets::new(),
            check,
        );
        r
    }

    #[test]
    fn failed_when_replaces_the_modules_verdict() {
        // exit 1 of grep means "no match": not a failure when the condition says so.
        let r = judged(
            "failed_when = \"{{ gt r.rc 1 }}\"",
            ran(TaskStatus::Failed, 1, ""),
            false,
        );
        assert_eq!(r.status, TaskStatus::Changed, "{r:?}");
        assert!(r.error.is_none());
        let r = judged(
            "failed_when = \"{{ gt r.rc 1 }}\"",
            ran(TaskStatus::Failed, 2, ""),
            false,
        );
        assert_eq!(r.status, TaskStatus::Failed);
        // A success can be a failure too, by its output.
        let r = judged(
            "failed_when = \"{{ eq r.stdout 'ERROR' }}\"",
            ran(TaskStatus::Changed, 0, "ERROR"),
            false,
        );
        assert_eq!(r.status, TaskStatus::Failed);
        assert!(r.error.unwrap().contains("failed_when"));
    }

    #[test]
    fn changed_when_decides_changed_except_in_check_mode() {
        let keys = "changed_when = \"{{ eq r.stdout 'made' }}\"";
        assert_eq!(
            judged(keys, ran(TaskStatus::Changed, 0, "same"), false).status,
            TaskStatus::Ok
        );
        assert_eq!(
            judged(keys, ran(TaskStatus::Changed, 0, "made"), false).status,
            TaskStatus::Changed
        );
        let r = TaskResult {
            status: TaskStatus::WouldChange,
            ..ran(TaskStatus::WouldChange, 0, "")
        };
        assert_eq!(judged(keys, r, true).status, TaskStatus::WouldChange);
        // A failure is not made a change.
        assert_eq!(
            judged(keys, ran(TaskStatus::Failed, 1, "made"), false).status,
            TaskStatus::Failed
        );
        // A condition that does not render fails the task, naming the key.
        let r = judged(
            "changed_when = \"{{ r.nope }}\"",
            ran(TaskStatus::Changed, 0, ""),
            false,
        );
        assert_eq!(r.status, TaskStatus::Failed);
        assert!(r.error.unwrap().starts_with("changed_when:"));
    }

    #[test]
    fn an_ignored_failure_is_a_warning_and_still_registers_as_failed() {
        let r = judged(
            "ignore_errors = true",
            ran(TaskStatus::Failed, 3, ""),
            false,
        );
        assert_eq!(r.status, TaskStatus::Ok);
        assert!(r.warnings[0].contains("exit 3"), "{r:?}");
        let v = registered(&r, Vec::new());
        assert_eq!(v["failed"], true);
        assert_eq!(v["rc"], 3);
    }

    #[test]
    fn a_registered_result_has_ansibles_keys_and_the_placeholders_shape() {
        let v = registered(&ran(TaskStatus::Changed, 0, "a\nb\n"), vec![json!(1)]);
        assert_eq!(v["stdout_lines"], json!(["a", "b"]));
        assert_eq!(v["changed"], true);
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(&v), keys(&placeholder()));
    }

    #[test]
    fn a_loop_reports_its_worst_item_and_names_each() {
        let items = vec![
            ("a".to_string(), ran(TaskStatus::Ok, 0, "")),
            ("b".to_string(), ran(TaskStatus::Failed, 1, "")),
            ("c".to_string(), ran(TaskStatus::Changed, 0, "c")),
        ];
        let r = merge_items(TaskResult::default(), items);
        assert_eq!(r.status, TaskStatus::Failed);
        assert_eq!(r.changes[2], "[c] run command");
        assert_eq!(r.error.as_deref(), Some("[b] command failed (exit 1)"));
        assert_eq!(r.output.unwrap().stdout, "c");
    }
}
