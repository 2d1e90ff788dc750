//! The engine's contract, against in-memory fake hosts.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ferry::engine::{self, RunEnv, RunOptions};
use ferry::inventory::Inventory;
use ferry::journal::{Journal, RecordStatus};
use ferry::module::NeverConfirm;
use ferry::playbook::source::SourceFile;
use ferry::playbook::Playbook;
use ferry::report::{EventSink, PlayReport, TaskStatus};
use ferry::secrets::Secrets;
use ferry::transport::fake::{output, FakeConnector, FakeTransport};

const INVENTORY: &str = r#"
[hosts.old]
address = "10.0.0.1"
groups = ["docker"]
[hosts.old.vars]
hostile = "a'; rm -rf / #"
[hosts.new]
address = "10.0.0.2"
[defaults.vars]
marker = "/srv/marker"
"#;

struct World {
    dir: tempfile::TempDir,
    inventory: Arc<Inventory>,
    secrets: Secrets,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let secrets = Secrets::new();
        let inventory = Inventory::parse(
            &SourceFile::new(dir.path().join("inv.toml"), INVENTORY),
            &|_| None,
            &secrets,
        )
        .unwrap();
        World {
            dir,
            inventory: Arc::new(inventory),
            secrets,
        }
    }

    async fn play(
        &self,
        playbook: &str,
        options: RunOptions,
        connector: impl ferry::transport::Connector + 'static,
    ) -> PlayReport {
        let pb = Arc::new(Playbook::parse(SourceFile::new("pb.toml", playbook)).unwrap());
        let prepared =
            engine::prepare(pb, self.inventory.clone(), options.clone(), &self.secrets).unwrap();
        let journal = Journal::open(
            &self.dir.path().join("pb.journal.json"),
            "pb",
            self.secrets.clone(),
            !options.check,
        )
        .unwrap();
        let env = RunEnv {
            connector: Arc::new(connector),
            journal: Arc::new(journal),
            events: EventSink::to_file(&self.dir.path().join("events.jsonl"), self.secrets.clone())
                .unwrap(),
            secrets: self.secrets.clone(),
            interrupt: Default::default(),
            confirmer: Arc::new(NeverConfirm),
        };
        engine::run(prepared, env).await
    }

    fn events(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join("events.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

const MARKER_PLAY: &str = r#"
[[task]]
name = "Make the marker"
hosts = "all"
[task.command]
cmd = "touch {{ marker }}"
creates = "{{ marker }}"
"#;

/// A host with a file system of one bit: whether the marker exists.
fn marker_host(name: &str, exists: Arc<AtomicBool>) -> Arc<FakeTransport> {
    let t = FakeTransport::new(name);
    let e = exists.clone();
    t.on_fn("test -e /srv/marker", move |_, _| {
        output(if e.load(Ordering::SeqCst) { 0 } else { 1 }, "")
    });
    t.on_fn("touch /srv/marker", move |_, _| {
        exists.store(true, Ordering::SeqCst);
        output(0, "")
    });
    t
}

#[tokio::test]
async fn check_mode_applies_nothing() {
    let w = World::new();
    let old = marker_host("old", Arc::default());
    let new = marker_host("new", Arc::default());
    let report = w
        .play(
            MARKER_PLAY,
            RunOptions {
                check: true,
                ..Default::default()
            },
            FakeConnector::new([old.clone(), new.clone()]),
        )
        .await;
    assert!(report.check_mode);
    for t in &report.tasks {
        assert_eq!(t.status, TaskStatus::WouldChange, "{t:?}");
        assert_eq!(t.changes, vec!["run command\n  $ touch /srv/marker"]);
    }
    for host in [&old, &new] {
        assert_eq!(
            host.commands(),
            vec!["test -e /srv/marker"],
            "only facts were gathered"
        );
    }
    // A check writes no journal.
    assert!(!w.dir.path().join("pb.journal.json").exists());
}

#[tokio::test]
async fn second_run_changes_nothing() {
    let w = World::new();
    let (old_fs, new_fs) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let first = w
        .play(
            MARKER_PLAY,
            RunOptions::default(),
            FakeConnector::new([
                marker_host("old", old_fs.clone()),
                marker_host("new", new_fs.clone()),
            ]),
        )
        .await;
    assert!(first.success());
    assert_eq!(first.hosts["old"].changed, 1);
    assert_eq!(first.hosts["new"].changed, 1);
    let old = marker_host("old", old_fs);
    let second = w
        .play(
            MARKER_PLAY,
            RunOptions::default(),
            FakeConnector::new([old.clone(), marker_host("new", new_fs)]),
        )
        .await;
    for (host, s) in &second.hosts {
        assert_eq!((s.changed, s.ok), (0, 1), "{host}");
    }
    assert!(!old.commands().iter().any(|c| c.starts_with("touch")));
    // The --format json document has exactly the documented shape.
    let doc: serde_json::Value = serde_json::from_str(&second.to_json()).unwrap();
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        keys(&doc),
        [
            "check_mode",
            "duration_ms",
            "ferry",
            "hosts",
            "playbook",
            "started_at",
            "tasks"
        ]
    );
    assert_eq!(
        keys(&doc["hosts"]["old"]),
        ["changed", "failed", "ok", "skipped", "unreachable"]
    );
    assert_eq!(
        keys(&doc["tasks"][0]),
        [
            "changes",
            "commands",
            "duration_ms",
            "error",
            "host",
            "output",
            "start_ms",
            "status",
            "task",
            "waited_ms"
        ]
    );
    assert_eq!(doc["tasks"][0]["status"], "ok");
    // Each command the task ran, with its exit status (the marker's test found it).
    assert_eq!(
        doc["tasks"][0]["commands"][0]["cmd"], "test -e /srv/marker",
        "{doc}"
    );
    assert_eq!(doc["tasks"][0]["commands"][0]["exit_status"], 0, "{doc}");
    assert_eq!(doc["tasks"][0]["error"], serde_json::Value::Null);
    // The journal says what happened, the events file too.
    let data = Journal::read(&w.dir.path().join("pb.journal.json")).unwrap();
    assert_eq!(
        data.hosts["old"]["Make the marker"].status,
        RecordStatus::Ok
    );
    let events = w.events();
    assert!(events
        .iter()
        .any(|e| e["event"] == "task_start" && e["host"] == "old"));
    assert!(events.iter().any(|e| e["event"] == "task_end"
        && e["status"] == "ok"
        && e["task"] == "Make the marker"));
}

#[tokio::test]
async fn hostile_values_reach_the_host_quoted() {
    let w = World::new();
    let old = FakeTransport::new("old");
    old.on("", output(0, ""));
    let play = "[[task]]\nname = \"t\"\nhosts = \"old\"\n[task.command]\ncmd = \"test -d {{ hostile }}\"\n";
    let report = w
        .play(
            play,
            RunOptions::default(),
            FakeConnector::new([old.clone()]),
        )
        .await;
    assert!(report.success(), "{report:?}");
    let line = old.commands().pop().unwrap();
    let words = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("for w in {line}; do printf '%s\\n' \"$w\"; done"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(words.stdout).unwrap(),
        "test\n-d\na'; rm -rf / #\n"
    );
}

#[tokio::test]
async fn unreachable_host_does_not_stop_the_others() {
    let w = World::new();
    let mut connector = FakeConnector::new([marker_host("new", Arc::default())]);
    connector.unreachable.insert("old".into());
    let report = w.play(MARKER_PLAY, RunOptions::default(), connector).await;
    assert!(report.hosts["old"].unreachable);
    assert_eq!(report.hosts["new"].changed, 1);
    assert!(!report.success());
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["hosts"]["old"]["unreachable"], true);
    assert!(w
        .events()
        .iter()
        .any(|e| e["event"] == "host_unreachable" && e["host"] == "old"));
}

const DEPENDENT_PLAY: &str = r#"
[[task]]
name = "Dump"
hosts = "old"
[task.command]
cmd = "dump"

[[task]]
name = "Restore"
hosts = "new"
after = ["Dump"]
[task.command]
cmd = "restore"

[[task]]
name = "Cleanup"
hosts = "new"
[task.command]
cmd = "cleanup"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependent_task_waits_for_the_other_host() {
    let w = World::new();
    let order = Arc::new(Mutex::new(Vec::new()));
    let old = FakeTransport::new("old");
    let o = order.clone();
    old.on_fn("dump", move |_, _| {
        // The dump is slow; the restore must still come after it.
        std::thread::sleep(std::time::Duration::from_millis(200));
        o.lock().unwrap().push("dump");
        output(0, "")
    });
    let new = FakeTransport::new("new");
    let o = order.clone();
    new.on_fn("restore", move |_, _| {
        o.lock().unwrap().push("restore");
        output(0, "")
    });
    new.on("cleanup", output(0, ""));
    // forks = 1: waiting for a dependency must not hold the only slot.
    let connector = FakeConnector::new([old, new]);
    let report = w
        .play(
            DEPENDENT_PLAY,
            RunOptions {
                forks: Some(1),
                ..Default::default()
            },
            connector,
        )
        .await;
    assert!(report.success(), "{report:?}");
    assert_eq!(*order.lock().unwrap(), vec!["dump", "restore"]);
}

#[tokio::test]
async fn failed_dependency_fails_the_dependant_without_running_it() {
    let w = World::new();
    let old = FakeTransport::new("old");
    old.on("dump", output(1, ""));
    let new = FakeTransport::new("new");
    new.on("", output(0, ""));
    let connector = FakeConnector::new([old, new.clone()]);
    let report = w
        .play(DEPENDENT_PLAY, RunOptions::default(), connector)
        .await;
    let by_task: BTreeMap<_, _> = report
        .tasks
        .iter()
        .map(|t| ((t.host.as_str(), t.task.as_str()), t))
        .collect();
    assert_eq!(by_task[&("old", "Dump")].status, TaskStatus::Failed);
    let restore = by_task[&("new", "Restore")];
    assert_eq!(restore.status, TaskStatus::Failed);
    assert!(restore
        .error
        .as_deref()
        .unwrap()
        .contains("dependency `Dump` failed on `old`"));
    // The host stops at its first failure.
    assert!(!by_task.contains_key(&("new", "Cleanup")));
    assert!(new.commands().is_empty());
}

#[tokio::test]
async fn connects_once_per_host_and_skips_by_when() {
    let w = World::new();
    let play = r#"
[[task]]
name = "one"
hosts = "old"
[task.command]
cmd = "one"
[[task]]
name = "two"
hosts = "old"
[task.command]
cmd = "two"
[[task]]
name = "never"
hosts = "old"
when = "{{#if nothing_here}}yes{{/if}}"
[task.command]
cmd = "never"
"#;
    let old = FakeTransport::new("old");
    old.on("", output(0, ""));
    let connector = Arc::new(FakeConnector::new([old.clone()]));
    let pb = Arc::new(Playbook::parse(SourceFile::new("pb.toml", play)).unwrap());
    let prepared =
        engine::prepare(pb, w.inventory.clone(), RunOptions::default(), &w.secrets).unwrap();
    let env = RunEnv {
        connector: connector.clone(),
        journal: Arc::new(
            Journal::open(
                &w.dir.path().join("j.journal.json"),
                "pb",
                w.secrets.clone(),
                true,
            )
            .unwrap(),
        ),
        events: EventSink::none(),
        secrets: w.secrets.clone(),
        interrupt: Default::default(),
        confirmer: Arc::new(NeverConfirm),
    };
    let report = engine::run(prepared, env).await;
    assert_eq!(connector.connects.lock().unwrap()["old"], 1);
    assert_eq!(old.commands(), vec!["one", "two"]);
    assert_eq!(report.hosts["old"].skipped, 1);
    assert_eq!(report.tasks[2].status, TaskStatus::Skipped);
}

/// A one-shot signal between fake commands of different lanes. The fakes answer
/// synchronously, so a command that waits blocks its thread: it waits inside
/// `block_in_place`, which hands the worker's other tasks to another thread.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    opened: std::sync::Condvar,
}

impl Gate {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }

    /// Whether the gate opened within `GATE_TIMEOUT`.
    fn wait(&self) -> bool {
        tokio::task::block_in_place(|| {
            let open = self.open.lock().unwrap();
            let (open, _) = self
                .opened
                .wait_timeout_while(open, GATE_TIMEOUT, |open| !*open)
                .unwrap();
            *open
        })
    }
}

/// Long enough never to be hit when the engine works; a deadlock turns into a failure.
const GATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A command answer: exit 0, or exit 1 with `why` on stderr.
fn ok_or(holds: bool, why: &str) -> ferry::transport::ExecOutput {
    if holds {
        output(0, "")
    } else {
        ferry::transport::ExecOutput {
            status: Some(1),
            stdout: Vec::new(),
            stderr: why.as_bytes().to_vec(),
        }
    }
}

/// `World::play`, failing instead of hanging if the engine deadlocks.
async fn play_or_deadlock(
    w: &World,
    playbook: &str,
    options: RunOptions,
    connector: FakeConnector,
) -> PlayReport {
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        w.play(playbook, options, connector),
    )
    .await
    .expect("the run did not end: the engine deadlocked")
}

fn by_task(report: &PlayReport) -> BTreeMap<(String, String), ferry::report::TaskResult> {
    report
        .tasks
        .iter()
        .map(|t| ((t.host.clone(), t.task.clone()), t.clone()))
        .collect()
}

fn key(host: &str, task: &str) -> (String, String) {
    (host.to_string(), task.to_string())
}

const TWO_LANES_PLAY: &str = r#"
[[task]]
name = "Stream the storage"
hosts = "new"
lane = "storage"
[task.command]
cmd = "stream"

[[task]]
name = "Restore PostgreSQL"
hosts = "new"
[task.command]
cmd = "restore"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lanes_of_one_host_run_at_the_same_time() {
    let w = World::new();
    let new = FakeTransport::new("new");
    let (stream_started, restore_started) = (Arc::<Gate>::default(), Arc::<Gate>::default());
    // Each command ends only once the other (the other lane's task) has started: run one
    // after the other, in either order, the first would wait in vain and fail.
    let (me, other) = (stream_started.clone(), restore_started.clone());
    new.on_fn("stream", move |_, _| {
        me.open();
        ok_or(
            other.wait(),
            "the restore never started while the stream ran: lanes did not run at the same time",
        )
    });
    let (me, other) = (restore_started.clone(), stream_started.clone());
    new.on_fn("restore", move |_, _| {
        me.open();
        ok_or(
            other.wait(),
            "the stream never started while the restore ran: lanes did not run at the same time",
        )
    });
    let report = play_or_deadlock(
        &w,
        TWO_LANES_PLAY,
        RunOptions::default(),
        FakeConnector::new([new.clone()]),
    )
    .await;
    assert!(report.success(), "{report:?}");
    assert_eq!(report.hosts["new"].changed, 2, "{report:?}");
    let mut commands = new.commands();
    commands.sort();
    assert_eq!(commands, vec!["restore", "stream"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_of_one_lane_run_in_playbook_order() {
    // `First` waits for `Dump` on old, which waits for `Side` (lane aux of new): the
    // main lane's `Second` is ready long before `First`, and must still come after it.
    let play = r#"
[[task]]
name = "Dump"
hosts = "old"
[task.command]
cmd = "dump"

[[task]]
name = "First"
hosts = "new"
after = ["Dump"]
[task.command]
cmd = "first"

[[task]]
name = "Second"
hosts = "new"
[task.command]
cmd = "second"

[[task]]
name = "Side"
hosts = "new"
lane = "aux"
[task.command]
cmd = "side"
"#;
    let w = World::new();
    let side_ran = Arc::new(Gate::default());
    let old = FakeTransport::new("old");
    let g = side_ran.clone();
    old.on_fn("dump", move |_, _| {
        ok_or(
            g.wait(),
            "`Side` never ran: the aux lane waited behind the main lane",
        )
    });
    let new = FakeTransport::new("new");
    new.on("", output(0, ""));
    let g = side_ran.clone();
    new.on_fn("side", move |_, _| {
        g.open();
        output(0, "")
    });
    let report = play_or_deadlock(
        &w,
        play,
        RunOptions::default(),
        FakeConnector::new([old, new.clone()]),
    )
    .await;
    assert!(report.success(), "{report:?}");
    assert_eq!(new.commands(), vec!["side", "first", "second"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_in_one_lane_stops_the_host() {
    let play = r#"
[[task]]
name = "Stream the storage"
hosts = "new"
lane = "storage"
[task.command]
cmd = "stream"

[[task]]
name = "Restore PostgreSQL"
hosts = "new"
[task.command]
cmd = "restore"

[[task]]
name = "Migrate"
hosts = "new"
[task.command]
cmd = "migrate"

[[task]]
name = "Announce"
hosts = "old"
after = ["Migrate"]
[task.command]
cmd = "announce"
"#;
    let w = World::new();
    let new = FakeTransport::new("new");
    let restore_started = Arc::new(Gate::default());
    let g = restore_started.clone();
    // The stream fails while the restore runs...
    new.on_fn("stream", move |_, _| {
        let overlapped = g.wait();
        ok_or(
            false,
            if overlapped {
                "disk full"
            } else {
                "the restore never started: lanes did not run at the same time"
            },
        )
    });
    let g = restore_started.clone();
    let events = w.dir.path().join("events.jsonl");
    // ...and the restore ends only once the stream's failure was reported (the
    // `--events` stream is written as it happens), so the main lane then knows.
    new.on_fn("restore", move |_, _| {
        g.open();
        let reported = tokio::task::block_in_place(|| {
            let deadline = std::time::Instant::now() + GATE_TIMEOUT;
            while std::time::Instant::now() < deadline {
                let text = std::fs::read_to_string(&events).unwrap_or_default();
                if text.lines().any(|l| {
                    l.contains(r#""event":"task_end""#) && l.contains("Stream the storage")
                }) {
                    return true;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            false
        });
        ok_or(reported, "the stream's failure was never reported")
    });
    new.on("migrate", output(0, ""));
    let old = FakeTransport::new("old");
    old.on("", output(0, ""));
    let report = play_or_deadlock(
        &w,
        play,
        RunOptions::default(),
        FakeConnector::new([old.clone(), new.clone()]),
    )
    .await;
    let tasks = by_task(&report);
    let stream = &tasks[&key("new", "Stream the storage")];
    assert_eq!(stream.status, TaskStatus::Failed);
    assert!(
        stream
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("disk full"),
        "{stream:?}"
    );
    // The running task of the other lane finished; its next one never started.
    assert_eq!(
        tasks[&key("new", "Restore PostgreSQL")].status,
        TaskStatus::Changed,
        "{report:?}"
    );
    assert!(!tasks.contains_key(&key("new", "Migrate")), "{report:?}");
    let mut commands = new.commands();
    commands.sort();
    assert_eq!(commands, vec!["restore", "stream"]);
    // Another host waiting on the task that never ran is released, with the reason.
    let announce = &tasks[&key("old", "Announce")];
    assert_eq!(announce.status, TaskStatus::Failed);
    assert!(
        announce
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("dependency `Migrate` failed on `new`"),
        "{announce:?}"
    );
    assert!(old.commands().is_empty());
    assert!(!report.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forks_bound_hosts_not_lanes() {
    // Each host's `Slow` (main lane) ends only once its `Fast` (side lane) has started:
    // with one permit per task and `--forks 1`, that would never happen.
    let play = r#"
[[task]]
name = "Slow"
hosts = "all"
[task.command]
cmd = "slow"

[[task]]
name = "Fast"
hosts = "all"
lane = "side"
[task.command]
cmd = "fast"
"#;
    let w = World::new();
    let host = |name: &str| {
        let t = FakeTransport::new(name);
        // Each waits for the other, so both are running at once: had `Fast` been free to
        // start and end before `Slow` began, the events would show no overlap (a race
        // that failed this test under load).
        let fast_started = Arc::new(Gate::default());
        let slow_started = Arc::new(Gate::default());
        let (g, s) = (fast_started.clone(), slow_started.clone());
        t.on_fn("slow", move |_, _| {
            s.open();
            ok_or(
                g.wait(),
                "`Fast` never started while `Slow` ran: the host's lanes did not share its --forks slot",
            )
        });
        t.on_fn("fast", move |_, _| {
            fast_started.open();
            ok_or(slow_started.wait(), "`Slow` never started while `Fast` ran")
        });
        t
    };
    let report = play_or_deadlock(
        &w,
        play,
        RunOptions {
            forks: Some(1),
            ..Default::default()
        },
        FakeConnector::new([host("old"), host("new")]),
    )
    .await;
    assert!(report.success(), "{report:?}");
    assert_eq!(report.tasks.len(), 4);
    // The events are written as they happen, each task's start and end inside its
    // host's slot: no task of one host may start while a task of the other is open.
    let mut open: BTreeMap<String, usize> = BTreeMap::new();
    let mut most_open_on_one_host = 0;
    for e in w.events() {
        let host = e["host"].as_str().unwrap_or_default().to_string();
        match e["event"].as_str() {
            Some("task_start") => {
                let others: usize = open
                    .iter()
                    .filter(|(h, _)| **h != host)
                    .map(|(_, n)| n)
                    .sum();
                assert_eq!(
                    others, 0,
                    "`{host}` started a task while another host ran one"
                );
                let n = open.entry(host).or_default();
                *n += 1;
                most_open_on_one_host = most_open_on_one_host.max(*n);
            }
            Some("task_end") => *open.entry(host).or_default() -= 1,
            _ => {}
        }
    }
    assert_eq!(most_open_on_one_host, 2, "a host's two lanes overlapped");
}

/// Refuses every connection, after a while: long enough for both lanes of a host to be
/// waiting for the one connection attempt when it fails.
struct SlowRefusal;

#[async_trait::async_trait]
impl ferry::transport::Connector for SlowRefusal {
    async fn connect(
        &self,
        spec: &ferry::transport::ConnectSpec,
        _: &Secrets,
    ) -> Result<Arc<dyn ferry::transport::Transport>, ferry::transport::TransportError> {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        Err(ferry::transport::TransportError::Refused {
            addr: spec.address.clone(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_host_with_lanes_is_reported_once() {
    let w = World::new();
    let play = TWO_LANES_PLAY.replace("\"new\"", "\"old\"");
    let report = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        w.play(&play, RunOptions::default(), SlowRefusal),
    )
    .await
    .expect("the run did not end: the engine deadlocked");
    assert!(report.hosts["old"].unreachable);
    assert!(report.tasks.is_empty(), "{report:?}");
    let reported = w
        .events()
        .iter()
        .filter(|e| e["event"] == "host_unreachable" && e["host"] == "old")
        .count();
    assert_eq!(reported, 1);
}

/// Run `playbook` as a run from files would: the journal at `journal`, owned by the
/// playbook (its task definitions recorded).
async fn play_owned(
    w: &World,
    playbook: &str,
    options: RunOptions,
    connector: impl ferry::transport::Connector + 'static,
) -> Result<PlayReport, String> {
    let pb =
        Arc::new(Playbook::parse(SourceFile::new(w.dir.path().join("pb.toml"), playbook)).unwrap());
    let owner = engine::journal_owner(&pb, &w.inventory);
    let prepared = engine::prepare(pb, w.inventory.clone(), options, &w.secrets).unwrap();
    let journal = Arc::new(
        Journal::open_for(
            &w.dir.path().join("owned.journal.json"),
            &owner,
            w.secrets.clone(),
            true,
        )
        .map_err(|e| e.to_string())?,
    );
    engine::check_start_at(&prepared, &journal).map_err(|e| e.to_string())?;
    let env = RunEnv {
        connector: Arc::new(connector),
        journal,
        events: EventSink::none(),
        secrets: w.secrets.clone(),
        interrupt: Default::default(),
        confirmer: Arc::new(NeverConfirm),
    };
    Ok(engine::run(prepared, env).await)
}

/// A dependency outside the run (`--limit`) counts as done only if its journal record
/// was made by the task as it is now; `--start-at` likewise does not skip an edited task,
/// but skips unchanged and never-run ones.
#[tokio::test]
async fn journal_records_of_an_edited_task_are_not_trusted() {
    let w = World::new();
    let old = || {
        let t = FakeTransport::new("old");
        t.on("", output(0, ""));
        t
    };
    let new = || {
        let t = FakeTransport::new("new");
        t.on("", output(0, ""));
        t
    };
    let full = play_owned(
        &w,
        DEPENDENT_PLAY,
        RunOptions::default(),
        FakeConnector::new([old(), new()]),
    )
    .await
    .unwrap();
    assert!(full.success(), "{full:?}");
    // Unchanged: the record of Dump on old stands for the dependency and for --start-at.
    let limited = RunOptions {
        limit: Some("new".into()),
        ..Default::default()
    };
    let report = play_owned(
        &w,
        DEPENDENT_PLAY,
        limited.clone(),
        FakeConnector::new([new()]),
    )
    .await
    .unwrap();
    assert!(report.success(), "{report:?}");
    let start_at = RunOptions {
        start_at: Some("Restore".into()),
        ..Default::default()
    };
    play_owned(
        &w,
        DEPENDENT_PLAY,
        start_at.clone(),
        FakeConnector::new([old(), new()]),
    )
    .await
    .unwrap();
    // Dump edited (another command): its record no longer says it is done.
    let edited = DEPENDENT_PLAY.replace("cmd = \"dump\"", "cmd = \"dump --all\"");
    assert_ne!(edited, DEPENDENT_PLAY);
    let new_host = new();
    let report = play_owned(&w, &edited, limited, FakeConnector::new([new_host.clone()]))
        .await
        .unwrap();
    let restore = report.tasks.iter().find(|t| t.task == "Restore").unwrap();
    assert_eq!(restore.status, TaskStatus::Failed);
    assert!(
        restore
            .error
            .as_deref()
            .unwrap()
            .contains("only as it was before the playbook was edited"),
        "{restore:?}"
    );
    assert!(new_host.commands().is_empty());
    let refused = play_owned(&w, &edited, start_at, FakeConnector::new([old(), new()]))
        .await
        .unwrap_err();
    assert!(
        refused.contains("task `Dump` is skipped but has been edited"),
        "{refused}"
    );
    // Moving a task in the file (its spans) is not an edit.
    let moved = format!("\n\n# a comment\n{DEPENDENT_PLAY}");
    let pb_a = Playbook::parse(SourceFile::new("a.toml", DEPENDENT_PLAY)).unwrap();
    let pb_b = Playbook::parse(SourceFile::new("a.toml", moved.as_str())).unwrap();
    assert_eq!(
        engine::task_definition(&pb_a.tasks[0]),
        engine::task_definition(&pb_b.tasks[0])
    );
}

/// Text fields (a message, a warning) may start with `-`; names and paths may not, and
/// that is found for every host before anything is contacted.
#[test]
fn operand_rule_spares_text_fields() {
    let w = World::new();
    let prepare = |play: &str| {
        let pb = Arc::new(Playbook::parse(SourceFile::new("pb.toml", play)).unwrap());
        engine::prepare(pb, w.inventory.clone(), RunOptions::default(), &w.secrets)
    };
    let text = r#"
[[task]]
name = "Say"
hosts = "all"
[task.assert]
that = "yes"
msg = "- {{ marker }} is a list item"

[[task]]
name = "Stop"
hosts = "old"
[task.docker_container]
names = ["a"]
state = "stopped"
warning = "-- changes on the old app are lost from now on"
"#;
    prepare(text).unwrap();
    let operand = r#"
[[task]]
name = "Make"
hosts = "all"
[task.command]
cmd = "true"
creates = "-{{ marker }}"
"#;
    let err = prepare(operand).unwrap_err().to_string();
    assert!(
        err.contains("renders to a value starting with `-`"),
        "{err}"
    );
    // Reported per host: both hosts of `all`.
    assert!(
        err.contains("host `old`") && err.contains("host `new`"),
        "{err}"
    );
}

/// A host var a module declares, set to the wrong kind, is found by `prepare` for the
/// host that has it, naming the host, the var, both kinds and the task (at its place in
/// the playbook), before anything is contacted.
#[test]
fn prepare_checks_the_kind_of_declared_host_vars() {
    let dir = tempfile::tempdir().unwrap();
    let secrets = Secrets::new();
    let inventory = Inventory::parse(
        &SourceFile::new(
            dir.path().join("inv.toml"),
            r#"
[hosts.old]
address = "10.0.0.1"
[hosts.old.vars]
docker_bin = 5
[hosts.new]
address = "10.0.0.2"
"#,
        ),
        &|_| None,
        &secrets,
    )
    .unwrap();
    let play = r#"
[[task]]
name = "Stop"
hosts = "all"
[task.docker_container]
names = ["a"]
state = "stopped"
"#;
    let pb = Arc::new(Playbook::parse(SourceFile::new("pb.toml", play)).unwrap());
    let err = engine::prepare(pb, Arc::new(inventory), RunOptions::default(), &secrets)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("task `Stop` on inventory host `old`")
            && err.contains("host var `docker_bin` must be a string, found an integer")
            && err.contains("pb.toml:"),
        "{err}"
    );
    assert!(!err.contains("host `new`"), "{err}");
}

/// In a run (the engine sets `declared`), a module reads only the host vars it lists in
/// `Module::VARS`; a declared one must have its kind.
#[test]
fn a_module_reads_only_the_host_vars_it_declares() {
    use ferry::module::artifact_stream::BACKUP_DIR;
    use ferry::module::docker::DOCKER_BIN;
    let dir = tempfile::tempdir().unwrap();
    let journal =
        Arc::new(Journal::open(&dir.path().join("j.json"), "pb", Secrets::new(), false).unwrap());
    let mut vars = serde_json::Map::new();
    vars.insert("docker_bin".into(), "podman".into());
    vars.insert("backup_dir".into(), 5.into());
    let mut ctx = ferry::module::testing::task_ctx(
        FakeTransport::new("old"),
        "t",
        Arc::new(ferry::module::testing::NoPeers),
        journal,
        vars,
    );
    // A test harness context checks kinds only.
    assert_eq!(ctx.var_str_of(&DOCKER_BIN).unwrap(), Some("podman"));
    ctx.reader.declared = Some(vec![&BACKUP_DIR]);
    let err = ctx.var_of(&DOCKER_BIN).unwrap_err().to_string();
    assert!(
        err.contains("reads host var `docker_bin`, which its module does not declare"),
        "{err}"
    );
    let err = ctx.var_of(&BACKUP_DIR).unwrap_err().to_string();
    assert!(
        err.contains("host var `backup_dir` must be a string, found an integer"),
        "{err}"
    );
}

#[tokio::test]
async fn next_steps_are_shown_only_after_everything_finished() {
    let play = format!(
        "next_steps = [\"Move DNS to the new instance.\", \"Shut down the old one.\"]\n{MARKER_PLAY}"
    );
    let w = World::new();
    let old = marker_host("old", Arc::default());
    let new = marker_host("new", Arc::default());
    let check = w
        .play(
            &play,
            RunOptions {
                check: true,
                ..Default::default()
            },
            FakeConnector::new([old.clone(), new.clone()]),
        )
        .await;
    assert!(check.next_steps.is_empty(), "check mode finished nothing");
    assert!(!check.recap().contains("Left to you"));

    let done = w
        .play(&play, RunOptions::default(), FakeConnector::new([old, new]))
        .await;
    assert_eq!(
        done.next_steps,
        ["Move DNS to the new instance.", "Shut down the old one."]
    );
    assert!(
        done.recap().contains(
            "Left to you:\n  1. Move DNS to the new instance.\n  2. Shut down the old one.\n"
        ),
        "{}",
        done.recap()
    );

    // A host whose task fails: nothing is "left to you" yet.
    let w = World::new();
    let broken = FakeTransport::new("old");
    broken.on_fn("test -e /srv/marker", |_, _| output(1, ""));
    broken.on_fn("touch /srv/marker", |_, _| {
        output(1, "read-only file system")
    });
    let failed = w
        .play(
            &play,
            RunOptions::default(),
            FakeConnector::new([broken, marker_host("new", Arc::default())]),
        )
        .await;
    assert!(failed.next_steps.is_empty());
}
