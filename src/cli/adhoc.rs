//! `ferry run -i INV PATTERN -- COMMAND...`: one command on many hosts, as `ansible
//! PATTERN -a` and `pyinfra INV exec` run one. It is a one-task playbook of the `command`
//! module, so it runs on the same engine (forks, check mode, masking, the report and
//! exit codes) and keeps no journal: an ad-hoc command has nothing to resume.

use std::sync::Arc;

use crate::engine::{self, RunOptions};
use crate::journal::Journal;
use crate::playbook::source::{InputError, SourceFile};
use crate::playbook::Playbook;
use crate::report::{visible, PlayReport, TaskStatus};
use crate::secrets::Secrets;
use crate::transport::Connector;

use super::args::{Format, RunArgs};
use super::{load_inventory, parse_error, prepare_failed, print_report};

/// The name the one task has in the report and the events.
const TASK: &str = "command";

/// The playbook of an ad-hoc command: one `command` task on `pattern`. The words are
/// joined with spaces, as ssh joins a remote command's words, and stay a template whose
/// values are quoted, like any `cmd`.
pub fn playbook(pattern: &str, words: &[String]) -> Result<Playbook, InputError> {
    let quoted = |s: &str| toml::Value::String(s.to_string()).to_string();
    let text = format!(
        "name = \"ad-hoc\"\n\n[[task]]\nname = {}\nhosts = {}\n[task.command]\ncmd = {}\n",
        quoted(TASK),
        quoted(pattern),
        quoted(&words.join(" ")),
    );
    Playbook::parse(SourceFile::new("(ferry run)", text))
}

pub async fn run(
    args: RunArgs,
    connector: Arc<dyn Connector>,
    secrets: Secrets,
    verbose: u8,
) -> u8 {
    let inventory = match load_inventory(&args.inventory, &args.connect, &args.extra_vars, &secrets)
    {
        Ok(i) => Arc::new(i),
        Err(code) => return code,
    };
    // The pattern is an option here, not a playbook's field: one that names nothing is
    // a bad option (5), as `--limit`'s is.
    if let Err(e) = inventory.select(&args.pattern) {
        return super::bad_options(format!("host pattern `{}`: {e}", args.pattern));
    }
    let playbook = match playbook(&args.pattern, &args.command) {
        Ok(p) => Arc::new(p),
        Err(e) => return parse_error(e),
    };
    let options = RunOptions {
        check: args.check,
        forks: args.forks.map(usize::from),
        ..RunOptions::default()
    };
    let prepared = match engine::prepare(playbook.clone(), inventory.clone(), options, &secrets) {
        Ok(p) => p,
        Err(e) => return prepare_failed(e),
    };
    let owner = engine::journal_owner(&playbook, &inventory);
    let journal = Arc::new(Journal::unsaved(&owner, secrets.clone()));
    let report = match super::run_prepared(
        prepared,
        journal,
        connector,
        secrets,
        args.events.as_deref(),
        args.format,
        Arc::new(crate::module::NeverConfirm),
    )
    .await
    {
        Ok(r) => r,
        Err(code) => return code,
    };
    if matches!(args.format, Format::Table) {
        print!("{}", per_host(&report));
        print!("{}", report.recap());
        return super::exit::of_report(&report);
    }
    print_report(&report, args.format, verbose)
}

/// Ansible's ad-hoc layout: `HOST | CHANGED | rc=0 >>`, then what the command printed.
pub fn per_host(report: &PlayReport) -> String {
    let mut out = String::new();
    for (host, summary) in &report.hosts {
        let host_shown = visible(host);
        if let Some(reason) = &summary.unreachable_reason {
            out.push_str(&format!(
                "{host_shown} | UNREACHABLE! => {}\n",
                visible(reason)
            ));
            continue;
        }
        let Some(task) = report.tasks.iter().find(|t| &t.host == host) else {
            continue;
        };
        let status = match task.status {
            TaskStatus::Changed => "CHANGED",
            TaskStatus::Ok => "SUCCESS",
            TaskStatus::WouldChange => "WOULD RUN (check mode)",
            TaskStatus::Skipped => "SKIPPED",
            TaskStatus::Failed => "FAILED",
        };
        let rc = task
            .output
            .as_ref()
            .filter(|_| task.status != TaskStatus::WouldChange)
            .map(|o| match o.rc {
                Some(rc) => format!(" | rc={rc}"),
                None => " | killed by a signal".to_string(),
            })
            .unwrap_or_default();
        out.push_str(&format!("{host_shown} | {status}{rc} >>\n"));
        if let Some(o) = &task.output {
            for text in [&o.stdout, &o.stderr] {
                if !text.is_empty() {
                    out.push_str(&visible(text));
                    if !text.ends_with('\n') {
                        out.push('\n');
                    }
                }
            }
        }
        if let Some(e) = &task.error {
            out.push_str(&format!("{}\n", visible(e)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_words_become_one_command_task_on_the_pattern() {
        let p = playbook("web*:!web3", &["echo".into(), "a \"b\"".into()]).unwrap();
        assert_eq!(p.tasks.len(), 1);
        assert_eq!(p.tasks[0].hosts.get_ref(), "web*:!web3");
        let args = serde_json::to_value(&p.tasks[0].module).unwrap();
        assert_eq!(
            args["command"]["cmd"]["$ferry_template"], "echo a \"b\"",
            "{args}"
        );
    }

    #[test]
    fn a_raw_template_in_the_command_is_refused_as_in_a_playbook() {
        let e = playbook("all", &["echo {{{ x }}}".into()]).unwrap_err();
        assert!(e.to_string().contains("(ferry run)"), "{e}");
    }
}
