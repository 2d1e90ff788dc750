//! The downtime summary: how long the application was down in this run (from the task
//! that stops it to the task that starts its successor) and how long each stage of the
//! move took. The playbook names the tasks (`[downtime]`); the figures come from the
//! run's task results, so a summary never claims more than what this run saw.

use serde::{Deserialize, Serialize};

use super::{TaskResult, TaskStatus};

/// The playbook's `[downtime]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Downtime {
    /// The task that takes the application down (its start begins the downtime).
    pub from: String,
    /// The task after which the application serves again (its end ends the downtime).
    pub to: String,
    /// What the downtime is spent on, in the order to print them.
    #[serde(default, rename = "stage")]
    pub stages: Vec<Stage>,
}

/// A named group of tasks: one store's dump, transfer and restore, say.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub name: String,
    pub tasks: Vec<String>,
}

/// What the report says about the downtime (also in `--format json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DowntimeSummary {
    pub from_task: String,
    pub to_task: String,
    /// The application was already down when this run started (`from` had nothing to
    /// do): the figure counts from the start of this run.
    pub began_before_run: bool,
    /// `to` finished in this run; when false the application is still down.
    pub ended: bool,
    /// From `from`'s start (or the run's) to `to`'s end (or the run's end).
    pub total_ms: u64,
    pub stages: Vec<StageSpan>,
}

/// One stage: from the first of its tasks that worked to the last one's end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageSpan {
    pub name: String,
    /// `None`: none of its tasks changed anything in this run.
    pub span_ms: Option<u64>,
    /// The tasks that changed something, with their own time (waits excluded).
    pub tasks: Vec<StageTask>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageTask {
    pub task: String,
    pub work_ms: u64,
}

impl Downtime {
    /// The summary of a run whose results are `tasks` and which lasted `run_ms`; `None`
    /// when `from` did not run (limited away, skipped, or the run stopped before it).
    pub fn summarize(&self, tasks: &[TaskResult], run_ms: u64) -> Option<DowntimeSummary> {
        let of =
            |name: &str| -> Vec<&TaskResult> { tasks.iter().filter(|t| t.task == name).collect() };
        let from = of(&self.from);
        let ran = |t: &&TaskResult| matches!(t.status, TaskStatus::Changed | TaskStatus::Ok);
        if !from.iter().any(ran) {
            return None;
        }
        let began_before_run = !from.iter().any(|t| t.status == TaskStatus::Changed);
        let start = if began_before_run {
            0
        } else {
            from.iter()
                .filter(|t| t.status == TaskStatus::Changed)
                .map(|t| t.work_start_ms())
                .min()
                .unwrap_or(0)
        };
        let to = of(&self.to);
        let ended = !to.is_empty() && to.iter().all(ran);
        if began_before_run && ended && !to.iter().any(|t| t.status == TaskStatus::Changed) {
            // Both ends had nothing to do: the app was up (the migration done) already.
            return None;
        }
        let end = if ended {
            to.iter().map(|t| t.end_ms()).max().unwrap_or(run_ms)
        } else {
            run_ms
        };
        let stages = self
            .stages
            .iter()
            .map(|stage| {
                // In the stage's order (the report's is by host).
                let worked: Vec<&TaskResult> = stage
                    .tasks
                    .iter()
                    .flat_map(|name| {
                        tasks
                            .iter()
                            .filter(move |t| &t.task == name && t.status == TaskStatus::Changed)
                    })
                    .collect();
                let first = worked.iter().map(|t| t.work_start_ms()).min();
                let last = worked.iter().map(|t| t.end_ms()).max();
                StageSpan {
                    name: stage.name.clone(),
                    span_ms: first.zip(last).map(|(a, b)| b.saturating_sub(a)),
                    tasks: worked
                        .iter()
                        .map(|t| StageTask {
                            task: t.task.clone(),
                            work_ms: t.work_ms(),
                        })
                        .collect(),
                }
            })
            .collect();
        Some(DowntimeSummary {
            from_task: self.from.clone(),
            to_task: self.to.clone(),
            began_before_run,
            ended,
            total_ms: end.saturating_sub(start),
            stages,
        })
    }
}

impl DowntimeSummary {
    /// The lines after the recap.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "DOWNTIME {}: {} → {}{}\n",
            human_ms(self.total_ms),
            super::visible(&self.from_task),
            super::visible(&self.to_task),
            match (self.began_before_run, self.ended) {
                (false, true) => String::new(),
                (true, true) => " (the app was already down when this run started)".into(),
                (false, false) => " (the app is still down: run ferry again)".into(),
                (true, false) => {
                    " (already down when this run started, and still down: run ferry again)".into()
                }
            }
        );
        let width = self.stages.iter().map(|s| s.name.len()).max().unwrap_or(0);
        for s in &self.stages {
            let detail = match s.span_ms {
                None => "nothing to do in this run".to_string(),
                Some(ms) => {
                    let parts: Vec<String> = s
                        .tasks
                        .iter()
                        .map(|t| format!("{} {}", super::visible(&t.task), human_ms(t.work_ms)))
                        .collect();
                    format!("{:<8} {}", human_ms(ms), parts.join(", "))
                }
            };
            out.push_str(&format!(
                "  {:<width$}  {detail}\n",
                super::visible(&s.name)
            ));
        }
        out
    }
}

/// `12.3s` under a minute, else humantime's `4m 12s` (whole seconds).
pub fn human_ms(ms: u64) -> String {
    if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        humantime::format_duration(std::time::Duration::from_secs(ms / 1000)).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str, status: TaskStatus, start_ms: u64, waited_ms: u64, ms: u64) -> TaskResult {
        TaskResult {
            host: "h".into(),
            task: name.into(),
            status,
            start_ms,
            waited_ms,
            duration_ms: ms,
            ..TaskResult::default()
        }
    }

    fn spec() -> Downtime {
        Downtime {
            from: "stop".into(),
            to: "start".into(),
            stages: vec![
                Stage {
                    name: "PostgreSQL".into(),
                    tasks: vec!["dump".into(), "restore".into()],
                },
                Stage {
                    name: "Redis".into(),
                    tasks: vec!["backup".into()],
                },
            ],
        }
    }

    #[test]
    fn a_full_run_counts_from_the_stop_to_the_start_without_waits() {
        let tasks = vec![
            task("preflight", TaskStatus::Ok, 0, 0, 2_000),
            task("stop", TaskStatus::Changed, 2_000, 500, 1_500),
            // The report's order is by host: the restore (new host) before the dump.
            task("restore", TaskStatus::Changed, 13_500, 1_000, 31_000),
            task("dump", TaskStatus::Changed, 3_500, 0, 10_000),
            task("backup", TaskStatus::Ok, 3_500, 0, 200),
            task("start", TaskStatus::Changed, 44_500, 0, 75_500),
        ];
        let s = spec().summarize(&tasks, 130_000).unwrap();
        // From the stop's work (2.5 s) to the start's end (120 s).
        assert_eq!(s.total_ms, 117_500);
        assert!(s.ended && !s.began_before_run);
        assert_eq!(s.stages[0].span_ms, Some(41_000));
        let worked: Vec<(&str, u64)> = s.stages[0]
            .tasks
            .iter()
            .map(|t| (t.task.as_str(), t.work_ms))
            .collect();
        assert_eq!(worked, vec![("dump", 10_000), ("restore", 30_000)]);
        assert_eq!(s.stages[1].span_ms, None);
        let text = s.to_text();
        assert!(
            text.starts_with("DOWNTIME 1m 57s: stop → start\n"),
            "{text}"
        );
        assert!(
            text.contains("PostgreSQL  41.0s    dump 10.0s, restore 30.0s"),
            "{text}"
        );
        assert!(text.contains("Redis       nothing to do"), "{text}");
    }

    #[test]
    fn a_resumed_run_says_the_app_was_down_already_and_a_failed_one_that_it_still_is() {
        let resumed = vec![
            task("stop", TaskStatus::Ok, 1_000, 0, 300),
            task("start", TaskStatus::Changed, 5_000, 0, 5_000),
        ];
        let s = spec().summarize(&resumed, 11_000).unwrap();
        assert!(s.began_before_run && s.ended);
        assert_eq!(s.total_ms, 10_000);
        assert!(s.to_text().contains("already down when this run started"));

        let failed = vec![
            task("stop", TaskStatus::Changed, 1_000, 0, 300),
            task("dump", TaskStatus::Failed, 1_300, 0, 700),
        ];
        let s = spec().summarize(&failed, 2_500).unwrap();
        assert!(!s.ended);
        assert_eq!(s.total_ms, 1_500);
        assert!(s.to_text().contains("still down: run ferry again"));

        // A re-run of a completed migration: no downtime to speak of.
        let noop = vec![
            task("stop", TaskStatus::Ok, 1_000, 0, 300),
            task("start", TaskStatus::Ok, 5_000, 0, 5_000),
        ];
        assert!(spec().summarize(&noop, 11_000).is_none());

        // The stop never ran (limited away): no summary.
        assert!(spec()
            .summarize(&[task("dump", TaskStatus::Ok, 0, 0, 1)], 10)
            .is_none());
    }
}
