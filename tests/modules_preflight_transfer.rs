//! `preflight` and `transfer`: fixture tests of `decide` (facts in → changes out), facts
//! gathering against scripted hosts, and `transfer`'s apply against hosts whose commands
//! really run (locally, through `sh -c`, in a temp dir): the real receive script, real
//! `cat`/`tail`/`sha256sum`, with the bytes each side received captured.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use async_trait::async_trait;
use ferry::journal::{Artifact, Journal};
use ferry::k8s::WorkloadKind;
use ferry::module::docker::ContainerState;
use ferry::module::{Change, DynModule, Peers, Predicted, TaskCtx};
use ferry::modules::transfer::{self, Transfer, TransferChange, TransferFacts};
use ferry::packagist::preflight::{
    self, DataSizes, DiskFree, Measured, NewFacts, OldFacts, Preflight, PreflightFacts,
    WorkloadCheck, OLD_SIZES_KEY,
};
use ferry::playbook::template::Template;
use ferry::secrets::Secrets;
use ferry::transport::fake::{output, FakeTransport};
use ferry::transport::{ExecOutput, Transport, TransportError};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------
// Test plumbing

struct MapPeers(BTreeMap<String, Arc<FakeTransport>>);

#[async_trait]
impl Peers for MapPeers {
    async fn transport(&self, host: &str) -> Result<Arc<dyn Transport>, TransportError> {
        self.0
            .get(host)
            .map(|t| t.clone() as Arc<dyn Transport>)
            .ok_or_else(|| TransportError::Config(format!("no host {host}")))
    }
}

/// A context for `task` on `host`, peers `peers`, sharing `journal`.
fn ctx(
    host: &Arc<FakeTransport>,
    task: &str,
    peers: &[&Arc<FakeTransport>],
    journal: &Arc<Journal>,
    vars: Value,
) -> TaskCtx {
    journal.task_started(host.host(), task).unwrap();
    task_ctx(
        host.clone(),
        host.host(),
        task,
        Arc::new(MapPeers(
            peers
                .iter()
                .map(|t| (t.host().to_string(), (*t).clone()))
                .collect(),
        )),
        journal,
        vars,
    )
}

/// A context as the engine builds it (guarded transport) for `task` on `host`.
fn task_ctx(
    transport: Arc<dyn Transport>,
    _host: &str,
    task: &str,
    peers: Arc<dyn Peers>,
    journal: &Arc<Journal>,
    vars: Value,
) -> TaskCtx {
    ferry::module::testing::task_ctx(
        transport,
        task,
        peers,
        journal.clone(),
        vars.as_object().cloned().unwrap_or_default(),
    )
}

fn journal(dir: &tempfile::TempDir) -> Arc<Journal> {
    Arc::new(Journal::open(&dir.path().join("j.json"), "t", Secrets::new(), true).unwrap())
}

/// Run a shell line on this machine with `stdin`, as a host's `sh -c` would.
fn run_local(shell: &str, stdin: Option<&[u8]>) -> ExecOutput {
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(shell)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("sh runs");
    let input = stdin.map(<[u8]>::to_vec).unwrap_or_default();
    let mut child_stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        // The command may not read all of it (e.g. `cat FILE`): a broken pipe is fine.
        let _ = child_stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("sh finishes");
    writer.join().unwrap();
    ExecOutput {
        status: out.status.code().map(|c| c as u32),
        stdout: out.stdout,
        stderr: out.stderr,
    }
}

/// A host whose every command really runs here.
fn local_host(name: &str) -> Arc<FakeTransport> {
    let t = FakeTransport::new(name);
    t.on_fn("", run_local);
    // The far end of a transfer consumes its stdin: answer once it is closed.
    t.on_stream("ferry-receive", |shell, stdin| {
        run_local(shell, Some(stdin))
    });
    t
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

// ---------------------------------------------------------------------------------------
// preflight, old host: fixtures

fn container(name: &str, image: &str, label: Option<&str>) -> ContainerState {
    ContainerState {
        name: name.into(),
        running: true,
        image: image.into(),
        labels: label
            .map(|l| BTreeMap::from([("com.packagist.version".to_string(), l.to_string())]))
            .unwrap_or_default(),
    }
}

const SIX: [&str; 6] = [
    "packagist-ui",
    "packagist-repo",
    "packagist-web",
    "packagist-worker",
    "packagist-postgres",
    "packagist-redis",
];

fn old_facts() -> OldFacts {
    let mut containers: BTreeMap<String, ContainerState> = SIX
        .iter()
        .map(|n| (n.to_string(), container(n, "busybox", None)))
        .collect();
    containers.insert(
        "packagist-ui".into(),
        container("packagist-ui", "packagist/ui:1.12.10", Some("1.12.10")),
    );
    OldFacts {
        host: "old".into(),
        min_version: "1.12.10".into(),
        ui_container: "packagist-ui".into(),
        containers,
        required: SIX.iter().map(|s| s.to_string()).collect(),
        version_override: None,
        postgres_container: "packagist-postgres".into(),
        redis_container: "packagist-redis".into(),
        data_dir: "/data/packagist".into(),
        backup_dir: Some("/backup".into()),
        storage: Measured::Bytes(600),
        database: Measured::Bytes(300),
        redis: Measured::Bytes(100),
        disk: Ok(DiskFree {
            path: "/backup".into(),
            existing: "/".into(),
            mount: "/".into(),
            available: 1100,
        }),
        already_backed_up: 0,
        safety_factor: 1.1,
    }
}

fn failures(f: PreflightFacts) -> String {
    match preflight::decide(&f) {
        Ok(c) => {
            assert!(c.is_empty());
            String::new()
        }
        Err(e) => e.to_string(),
    }
}

#[test]
fn old_preflight_passes_when_everything_is_there() {
    // 1000 bytes of data × 1.1 = 1100 needed, exactly 1100 available.
    assert_eq!(failures(PreflightFacts::Old(old_facts())), "");
}

#[test]
fn old_preflight_lists_every_failed_check_at_once() {
    let mut f = old_facts();
    f.containers.insert(
        "packagist-ui".into(),
        container("packagist-ui", "packagist/ui:1.12.9", None),
    );
    f.containers.remove("packagist-web");
    f.containers.remove("packagist-worker");
    if let Ok(d) = &mut f.disk {
        d.available = 1099;
    }
    let msg = failures(PreflightFacts::Old(f));
    assert!(
        msg.starts_with("preflight failed on old: 3 check(s) failed"),
        "{msg}"
    );
    assert!(
        msg.contains("1. old: Private Packagist must be version 1.12.10 or newer"),
        "{msg}"
    );
    assert!(
        msg.contains("found 1.12.9 (from image packagist/ui:1.12.9)"),
        "{msg}"
    );
    assert!(
        msg.contains("not found: packagist-web, packagist-worker"),
        "{msg}"
    );
    assert!(msg.contains("need 1.1 KiB (1100 bytes)"), "{msg}");
    assert!(
        msg.contains("found 1.1 KiB (1099 bytes) available"),
        "{msg}"
    );
    assert!(
        msg.contains("storage 600 B + database 300 B + Redis 100 B"),
        "{msg}"
    );
}

#[test]
fn old_preflight_version_sources_label_and_override() {
    // Untagged image: the label decides.
    let mut f = old_facts();
    f.containers.insert(
        "packagist-ui".into(),
        container("packagist-ui", "packagist/ui:latest", Some("1.13.2")),
    );
    assert_eq!(
        preflight::detected_version(&f).unwrap().0.to_string(),
        "1.13.2"
    );
    assert_eq!(failures(PreflightFacts::Old(f.clone())), "");
    // The var wins over both.
    f.version_override = Some("1.11.0".into());
    let msg = failures(PreflightFacts::Old(f.clone()));
    assert!(
        msg.contains("found 1.11.0 (from var packagist_version)"),
        "{msg}"
    );
    // Neither: the operator is told to set the var.
    f.version_override = None;
    f.containers.insert(
        "packagist-ui".into(),
        container("packagist-ui", "packagist/ui:latest", None),
    );
    let msg = failures(PreflightFacts::Old(f));
    assert!(msg.contains("Set var packagist_version"), "{msg}");
    // A missing ui container is one failure (missing containers), not two.
    let mut f = old_facts();
    f.containers.remove("packagist-ui");
    let msg = failures(PreflightFacts::Old(f));
    assert!(msg.contains("1 check(s) failed"), "{msg}");
    assert!(msg.contains("not found: packagist-ui"), "{msg}");
}

#[test]
fn old_preflight_sizes_unknown_recorded_and_already_backed_up() {
    let mut f = old_facts();
    f.database = Measured::Unknown("packagist-postgres is not running".into());
    let msg = failures(PreflightFacts::Old(f.clone()));
    assert!(msg.contains("cannot measure the database size"), "{msg}");
    assert!(msg.contains("start packagist-postgres"), "{msg}");
    // A re-run after the backup stopped it: the recorded figure stands in.
    f.database = Measured::Recorded(300);
    assert_eq!(failures(PreflightFacts::Old(f.clone())), "");
    // Less room, but part of the backup is already there.
    if let Ok(d) = &mut f.disk {
        d.available = 700;
    }
    assert!(!failures(PreflightFacts::Old(f.clone())).is_empty());
    f.already_backed_up = 400;
    assert_eq!(failures(PreflightFacts::Old(f.clone())), "");
    // No backup dir at all.
    f.backup_dir = None;
    let msg = failures(PreflightFacts::Old(f));
    assert!(msg.contains("set var backup_dir_old"), "{msg}");
}

// ---------------------------------------------------------------------------------------
// preflight, new host: fixtures

fn disk(path: &str, mount: &str, available: u64) -> DiskFree {
    DiskFree {
        path: path.into(),
        existing: path.into(),
        mount: mount.into(),
        available,
    }
}

fn new_facts() -> NewFacts {
    let w = |kind, name: &str| WorkloadCheck {
        kind,
        name: name.into(),
        problem: None,
    };
    NewFacts {
        host: "new".into(),
        namespace: "packagist".into(),
        cluster_error: None,
        namespace_error: None,
        workloads: vec![
            w(WorkloadKind::Deployment, "ui"),
            w(WorkloadKind::Deployment, "repo"),
            w(WorkloadKind::Deployment, "worker"),
            w(WorkloadKind::StatefulSet, "postgres"),
            w(WorkloadKind::StatefulSet, "redis"),
        ],
        ui_deployment: "ui".into(),
        ui_app_container: "ui".into(),
        ui_containers: Some(vec!["ui".into(), "nginx".into()]),
        completed_marker: None,
        openebs: Ok(disk("/var/openebs/local", "/var", 2000)),
        staging: None,
        already_staged: 0,
        blob_store: None,
        server_version: Some((1, 33, "v1.33.0".into())),
        direct_unavailable: None,
        old_sizes: Some((
            "old".into(),
            DataSizes {
                storage: 600,
                database: 300,
                redis: 100,
            },
        )),
        safety_factor: 1.1,
    }
}

#[test]
fn new_preflight_passes_and_checks_workloads_and_ui_container() {
    assert_eq!(failures(PreflightFacts::New(new_facts())), "");
    let mut f = new_facts();
    f.workloads[2].problem = Some("not found".into());
    f.workloads[4].problem = Some("not found".into());
    f.ui_containers = Some(vec!["app".into(), "nginx".into()]);
    let msg = failures(PreflightFacts::New(f));
    assert!(msg.contains("2 check(s) failed"), "{msg}");
    assert!(
        msg.contains("missing: deployment/worker (not found), statefulset/redis (not found)"),
        "{msg}"
    );
    assert!(msg.contains("in namespace packagist"), "{msg}");
    assert!(
        msg.contains("expected a container named ui in deployment/ui; found: app, nginx"),
        "{msg}"
    );
}

/// The object store of host var `blob_store` must answer before anything changes: the
/// storage import is proven there.
#[test]
fn new_preflight_fails_when_the_blob_store_cannot_be_read() {
    let mut f = new_facts();
    f.blob_store = Some(Ok("bucket packagist at http://127.0.0.1:9000".into()));
    assert_eq!(failures(PreflightFacts::New(f.clone())), "");
    f.blob_store = Some(Err("listing failed: InvalidAccessKeyId".into()));
    let msg = failures(PreflightFacts::New(f));
    assert!(msg.contains("1 check(s) failed"), "{msg}");
    assert!(
        msg.contains("the blob storage (host var blob_store) cannot be read: listing failed: InvalidAccessKeyId"),
        "{msg}"
    );
}

/// `route = "direct"` that cannot be used fails the new host's preflight, before the old
/// app is stopped, naming why and what to set instead.
#[test]
fn new_preflight_fails_when_the_direct_route_asked_for_cannot_be_used() {
    let mut f = new_facts();
    f.direct_unavailable = Some("host old cannot reach new's sshd (tried 10.0.0.9:1)".into());
    let msg = failures(PreflightFacts::New(f));
    assert!(msg.contains("1 check(s) failed"), "{msg}");
    assert!(
        msg.contains("route = \"direct\" cannot be used: host old cannot reach new's sshd (tried 10.0.0.9:1). Set stream_route = \"auto\""),
        "{msg}"
    );
}

#[test]
fn new_preflight_api_and_namespace_failures_replace_the_workload_checks() {
    let mut f = new_facts();
    f.cluster_error = Some("could not read the kubeconfig".into());
    f.workloads.clear();
    f.ui_containers = None;
    let msg = failures(PreflightFacts::New(f));
    assert!(msg.contains("1 check(s) failed"), "{msg}");
    assert!(msg.contains("the Kubernetes API is not usable"), "{msg}");
    let mut f = new_facts();
    f.namespace_error = Some("namespace packagist not found".into());
    let msg = failures(PreflightFacts::New(f));
    assert!(
        msg.contains("expected namespace packagist to exist"),
        "{msg}"
    );
    assert!(msg.contains("Set var namespace"), "{msg}");
}

#[test]
fn new_preflight_disk_against_old_sizes_summed_per_filesystem() {
    // Volumes and staging on the same filesystem: 1100 + 1100 > 2000.
    let mut f = new_facts();
    f.staging = Some(Ok(disk("/root/ferry", "/var", 2000)));
    let msg = failures(PreflightFacts::New(f.clone()));
    assert!(
        msg.contains("not enough free disk on filesystem /var"),
        "{msg}"
    );
    assert!(msg.contains("need 2.1 KiB (2200 bytes)"), "{msg}");
    assert!(msg.contains("the old side's data on old"), "{msg}");
    // Staged already (a re-run): only the volumes' share is needed.
    f.already_staged = 1000;
    assert_eq!(failures(PreflightFacts::New(f.clone())), "");
    // On separate filesystems each one only needs its own share.
    f.already_staged = 0;
    f.staging = Some(Ok(disk("/root/ferry", "/", 1100)));
    assert_eq!(failures(PreflightFacts::New(f.clone())), "");
    // Unknown old sizes: nothing to compare with, no failure.
    f.old_sizes = None;
    f.openebs = Ok(disk("/var/openebs/local", "/var", 1));
    assert_eq!(failures(PreflightFacts::New(f.clone())), "");
    // Completed migration: the data is there already.
    let mut f = new_facts();
    f.openebs = Ok(disk("/var/openebs/local", "/var", 1));
    assert!(!failures(PreflightFacts::New(f.clone())).is_empty());
    f.completed_marker = Some(BTreeMap::new());
    assert_eq!(failures(PreflightFacts::New(f)), "");
}

// ---------------------------------------------------------------------------------------
// preflight: facts from scripted hosts

const INSPECT: &str = r#"[
 {"Name":"/packagist-ui","State":{"Running":true},"Config":{"Image":"packagist/ui:1.12.10","Labels":{"com.packagist.version":"1.12.10"}}},
 {"Name":"/packagist-repo","State":{"Running":true},"Config":{"Image":"busybox","Labels":{}}},
 {"Name":"/packagist-web","State":{"Running":true},"Config":{"Image":"busybox","Labels":{}}},
 {"Name":"/packagist-worker","State":{"Running":true},"Config":{"Image":"busybox","Labels":{}}},
 {"Name":"/packagist-postgres","State":{"Running":true},"Config":{"Image":"pg","Labels":{}}},
 {"Name":"/packagist-redis","State":{"Running":true},"Config":{"Image":"redis","Labels":{}}}]"#;

const DF_OUT: &str = "/srv\nFilesystem 1-blocks Used Available Capacity Mounted on\n\
                      /dev/vda1 100000000 1000 50000000 1% /\n";

fn preflight_args(toml_text: &str) -> Preflight {
    toml::from_str(toml_text).unwrap()
}

#[tokio::test]
async fn old_facts_measure_record_and_feed_the_new_side() {
    let dir = tempfile::tempdir().unwrap();
    let j = journal(&dir);
    let old = FakeTransport::new("old");
    old.on("docker inspect", output(0, INSPECT));
    old.on(
        "du -sb /data/packagist",
        output(0, "3000000\t/data/packagist\n"),
    );
    old.on("pg_database_size", output(0, "8000000\n"));
    old.on("stat -c %s /data/dump.rdb", output(0, "50000\n"));
    old.on("ferry-df", output(0, DF_OUT));
    let args = preflight_args("role = \"old\"");
    let c = ctx(
        &old,
        "Preflight (old host)",
        &[],
        &j,
        json!({"backup_dir_old": "/srv/backup"}),
    );
    let plan = args.plan(&c, &Predicted::default()).await.unwrap();
    assert!(plan.changes.is_empty(), "{plan:?}");
    let cmds = old.commands();
    assert!(
        cmds.iter().any(|c| c
            == "docker exec packagist-postgres psql -X -At -U postgres -d packagist_db -c 'select pg_database_size(current_database())'"),
        "{cmds:#?}"
    );
    assert!(
        cmds.iter()
            .all(|c| !c.contains(" -t ") && !c.contains(" -it ")),
        "{cmds:#?}"
    );
    assert!(
        cmds.iter().any(|c| c.ends_with("ferry-df /srv/backup")),
        "{cmds:#?}"
    );
    // A memo for the new side (the engine records it; facts cannot write).
    assert!(
        j.record("old", "Preflight (old host)")
            .unwrap()
            .fingerprints
            .is_empty(),
        "facts wrote the journal"
    );
    assert_eq!(plan.memos.len(), 1, "{:?}", plan.memos);
    assert_eq!(plan.memos[0].name, OLD_SIZES_KEY);
    assert_eq!(
        plan.memos[0].value,
        json!({"storage": 3000000, "database": 8000000, "redis": 50000})
    );
    // As the engine does.
    for m in &plan.memos {
        j.record_fingerprint("old", "Preflight (old host)", m.name, m.value.clone())
            .unwrap();
    }

    // Too little room: the same facts now fail, with the figures.
    old.on(
        "ferry-df",
        output(
            0,
            "/srv\nFilesystem 1-blocks Used Available Capacity Mounted on\n/dev/vda1 1 1 1000 1% /\n",
        ),
    );
    let err = args
        .plan(&c, &Predicted::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("not enough free disk for the backup in /srv/backup"),
        "{err}"
    );

    // Postgres stopped since (the backup ran): the recorded size stands in.
    old.on(
        "docker inspect",
        output(
            0,
            &INSPECT.replace(
                r#"{"Name":"/packagist-postgres","State":{"Running":true}"#,
                r#"{"Name":"/packagist-postgres","State":{"Running":false}"#,
            ),
        ),
    );
    old.on("ferry-df", output(0, DF_OUT));
    let plan = args.plan(&c, &Predicted::default()).await.unwrap();
    assert_eq!(plan.facts["Old"]["database"], json!({"Recorded": 8000000}));

    // The new side: the API is unreachable (kubeconfig unreadable) and the node's disk
    // is smaller than the old side's data; both are reported together.
    let new = FakeTransport::new("new");
    new.on("cat /etc/kubernetes/admin.conf", output(1, ""));
    new.on(
        "ferry-df",
        output(
            0,
            "/var\nFilesystem 1-blocks Used Available Capacity Mounted on\n/dev/vdb 1 1 9000000 1% /var\n",
        ),
    );
    let args = preflight_args("role = \"new\"");
    let c = ctx(&new, "Preflight (new host)", &[], &j, json!({}));
    let err = args
        .plan(&c, &Predicted::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("2 check(s) failed"), "{err}");
    assert!(err.contains("the Kubernetes API is not usable"), "{err}");
    assert!(
        err.contains("not enough free disk on filesystem /var"),
        "{err}"
    );
    assert!(
        err.contains("found 8.6 MiB (9000000 bytes) available"),
        "{err}"
    );
    assert!(
        new.commands()
            .iter()
            .any(|c| c.ends_with("ferry-df /var/openebs/local")),
        "{:#?}",
        new.commands()
    );
}

#[test]
fn preflight_args_are_strict() {
    assert!(toml::from_str::<Preflight>("role = \"old\"\nbogus = 1").is_err());
    assert!(toml::from_str::<Preflight>("role = \"middle\"").is_err());
}

#[tokio::test]
async fn preflight_refuses_args_of_the_other_role() {
    let dir = tempfile::tempdir().unwrap();
    let j = journal(&dir);
    let h = FakeTransport::new("new");
    let args = preflight_args("role = \"new\"\nbackup_dir = \"/b\"");
    let err = args
        .plan(&ctx(&h, "p", &[], &j, json!({})), &Predicted::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not take backup_dir"), "{err}");
    assert!(
        h.commands().is_empty(),
        "nothing may run: {:?}",
        h.commands()
    );
}

// ---------------------------------------------------------------------------------------
// transfer: fixtures

fn artifact(size: u64, sha256: &str) -> Artifact {
    Artifact {
        name: "packagist_db".into(),
        host: "old".into(),
        path: "/b/packagist_db.sql".into(),
        sha256: sha256.into(),
        size,
    }
}

fn tfacts() -> TransferFacts {
    TransferFacts {
        host: "new".into(),
        artifact_name: "packagist_db".into(),
        artifact: Some(artifact(1000, "aaa")),
        artifact_pending: false,
        dest: "/n/packagist_db.sql".into(),
        mode: 0o600,
        dest_file: None,
        dest_mode: None,
        part_size: None,
        part_sha256: None,
        source_prefix_sha256: None,
        taken: Vec::new(),
        laptop_copy: None,
        direct: ferry::module::direct_route::DirectFacts::new(
            ferry::module::direct_route::RouteSetting::Controller,
        ),
        guard: None,
    }
}

fn offset_of(c: &[TransferChange]) -> (u64, bool) {
    match c {
        [TransferChange::Send {
            offset,
            discard_part,
            ..
        }] => (*offset, *discard_part),
        other => panic!("expected one send, got {other:?}"),
    }
}

#[test]
fn transfer_decides_ok_chmod_send_resume_restart() {
    // Already there with the recorded content and mode: ok.
    let mut f = tfacts();
    f.dest_file = Some((1000, "aaa".into()));
    f.dest_mode = Some(0o600);
    assert!(transfer::decide(&f).unwrap().is_empty());
    // Right content, loose mode: chmod only.
    f.dest_mode = Some(0o644);
    let c = transfer::decide(&f).unwrap();
    assert_eq!(c[0].commands(), vec!["chmod 0600 /n/packagist_db.sql"]);
    // Different content: send from the start.
    f.dest_file = Some((1000, "bbb".into()));
    let c = transfer::decide(&f).unwrap();
    assert_eq!(offset_of(&c), (0, false));
    assert_eq!(
        c[0].describe(),
        "send packagist_db (1000 B) from old:/b/packagist_db.sql to /n/packagist_db.sql"
    );
    assert_eq!(
        c[0].commands(),
        vec!["ssh old cat /b/packagist_db.sql | ssh new 'tee /n/.ferry/packagist_db.sql.part' | sha256sum, then mv /n/.ferry/packagist_db.sql.part /n/packagist_db.sql"]
    );
    // A part whose prefix matches the source's: resume after it.
    let mut f = tfacts();
    f.part_size = Some(400);
    f.part_sha256 = Some("p".into());
    f.source_prefix_sha256 = Some("p".into());
    let c = transfer::decide(&f).unwrap();
    assert_eq!(offset_of(&c), (400, false));
    assert!(c[0]
        .describe()
        .contains("resuming after 400 B already there (400 bytes; 600 B to send)"));
    assert!(
        c[0].commands()[0].starts_with(
            "ssh old tail -c +401 /b/packagist_db.sql | ssh new '{ cat /n/.ferry/packagist_db.sql.part && tee -a /n/.ferry/packagist_db.sql.part; }' | sha256sum"
        ),
        "{:?}",
        c[0].commands()
    );
    // A part that does not match: start over.
    f.source_prefix_sha256 = Some("q".into());
    let c = transfer::decide(&f).unwrap();
    assert_eq!(offset_of(&c), (0, true));
    assert!(c[0].describe().contains("starting over"));
    // Longer than the artifact (no hashes taken): start over.
    let mut f = tfacts();
    f.part_size = Some(2000);
    assert_eq!(offset_of(&transfer::decide(&f).unwrap()), (0, true));
    // Empty part: a plain send.
    f.part_size = Some(0);
    assert_eq!(offset_of(&transfer::decide(&f).unwrap()), (0, false));
}

#[test]
fn transfer_before_the_artifact_exists() {
    let mut f = tfacts();
    f.artifact = None;
    f.artifact_pending = true;
    let c = transfer::decide(&f).unwrap();
    assert!(
        matches!(c[..], [TransferChange::SendWhenProduced { .. }]),
        "{c:?}"
    );
    f.artifact_pending = false;
    let err = transfer::decide(&f).unwrap_err().to_string();
    assert!(
        err.contains("`packagist_db` has not been produced yet"),
        "{err}"
    );
}

#[test]
fn transfer_args_are_strict_and_modes_octal() {
    assert!(toml::from_str::<Transfer>("artifact = \"a\"\ndest = \"/x\"\nbogus = 1").is_err());
    assert_eq!(transfer::parse_mode("0600").unwrap(), 0o600);
    assert_eq!(transfer::parse_mode("640").unwrap(), 0o640);
    assert!(transfer::parse_mode("0900").is_err());
    assert!(transfer::parse_mode("rw").is_err());
}

// ---------------------------------------------------------------------------------------
// transfer: apply with scripted hosts (bytes captured on both sides)

#[tokio::test]
async fn transfer_apply_resumes_sending_only_the_missing_suffix() {
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let prefix = 120_000usize;
    let dir = tempfile::tempdir().unwrap();
    let j = journal(&dir);

    // The old host holds the artifact; it answers the prefix hash and the suffix.
    let old = FakeTransport::new("old");
    let a = Artifact {
        name: "blob".into(),
        host: "old".into(),
        path: "/b/blob".into(),
        sha256: sha(&data),
        size: data.len() as u64,
    };
    old.on(
        &format!("head -c {prefix} /b/blob | sha256sum"),
        output(0, &format!("{}  -\n", sha(&data[..prefix]))),
    );
    let suffix = data[prefix..].to_vec();
    old.on_fn(&format!("tail -c +{} /b/blob", prefix + 1), move |_, _| {
        ExecOutput {
            status: Some(0),
            stdout: suffix.clone(),
            stderr: Vec::new(),
        }
    });
    // Producing the artifact is the old side's job; here it is simply recorded.
    let producer = ctx(&old, "Dump", &[], &j, json!({}));
    producer.record_artifact(a.clone()).unwrap();

    // The new host has the first `prefix` bytes in the .part; its receiver hashes the
    // part plus what arrives, as the real script does.
    let new = FakeTransport::new("new");
    new.on(
        "ferry-state",
        output(
            0,
            &format!("0\n0 2 4096 700 directory\n0 1 {prefix} 600 regular file\nabsent\n"),
        ),
    );
    new.on(
        "sha256sum /n/.ferry/blob.part",
        output(
            0,
            &format!("{}  /n/.ferry/blob.part\n", sha(&data[..prefix])),
        ),
    );
    let have = data[..prefix].to_vec();
    new.on_stream("ferry-receive", move |shell, stdin| {
        assert!(shell.ends_with(" 1"), "resume flag: {shell}");
        let mut whole = have.clone();
        whole.extend_from_slice(stdin);
        output(0, &format!("{}\n", sha(&whole)))
    });

    let args: Transfer = toml::from_str("artifact = \"blob\"\ndest = \"/n/blob\"").unwrap();
    let c = ctx(&new, "Send", &[&old, &new], &j, json!({}));
    let plan = args.plan(&c, &Predicted::default()).await.unwrap();
    assert_eq!(plan.changes.len(), 1, "{plan:?}");
    assert!(
        plan.changes[0]
            .description
            .contains("resuming after 117.2 KiB"),
        "{plan:?}"
    );
    let applied = args.apply_plan(&c, plan).await.unwrap();
    assert!(applied.changed);

    // Only the suffix went over the wire, and the source was read from there on.
    let received = new
        .received()
        .into_iter()
        .find(|r| r.shell.contains("ferry-receive"))
        .unwrap();
    assert_eq!(received.stdin.as_deref(), Some(&data[prefix..]));
    assert!(old
        .commands()
        .iter()
        .any(|c| c == "tail -c +120001 /b/blob"));
    assert!(!old.commands().iter().any(|c| c == "cat /b/blob"));
}

#[tokio::test]
async fn transfer_apply_fails_when_the_far_end_disagrees() {
    let data = b"the whole artifact".to_vec();
    let dir = tempfile::tempdir().unwrap();
    let j = journal(&dir);
    let old = FakeTransport::new("old");
    let bytes = data.clone();
    old.on_fn("cat /b/a", move |_, _| ExecOutput {
        status: Some(0),
        stdout: bytes.clone(),
        stderr: Vec::new(),
    });
    ctx(&old, "Dump", &[], &j, json!({}))
        .record_artifact(Artifact {
            name: "a".into(),
            host: "old".into(),
            path: "/b/a".into(),
            sha256: sha(&data),
            size: data.len() as u64,
        })
        .unwrap();
    let new = FakeTransport::new("new");
    new.on("ferry-state", output(0, "0\nabsent\nabsent\nabsent\n"));
    new.on_stream("ferry-receive", |_, _| ExecOutput {
        status: Some(3),
        stdout: b"0000\n".to_vec(),
        stderr: b"the received file's sha256 is 0000".to_vec(),
    });
    let args: Transfer = toml::from_str("artifact = \"a\"\ndest = \"/n/a\"").unwrap();
    let c = ctx(&new, "Send", &[&old, &new], &j, json!({}));
    let plan = args.plan(&c, &Predicted::default()).await.unwrap();
    let err = args.apply_plan(&c, plan).await.unwrap_err().to_string();
    assert!(
        err.contains("receiving a into /n/a on new failed (exit 3)"),
        "{err}"
    );
    assert!(err.contains("sha256 is 0000"), "{err}");
    let received = new
        .received()
        .into_iter()
        .find(|r| r.shell.contains("ferry-receive"))
        .unwrap();
    assert_eq!(received.stdin.as_deref(), Some(&data[..]));
}

// ---------------------------------------------------------------------------------------
// transfer: end to end with real commands (both "hosts" run here)

struct Local {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    journal: Arc<Journal>,
    old: Arc<FakeTransport>,
    new: Arc<FakeTransport>,
    data: Vec<u8>,
}

fn local_setup(size: usize) -> Local {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let j = journal(&dir);
    let data: Vec<u8> = (0..size as u64)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::create_dir_all(root.join("old")).unwrap();
    let src = root.join("old/packagist_storage.tar.gz");
    std::fs::write(&src, &data).unwrap();
    let old = local_host("old");
    let new = local_host("new");
    ctx(&old, "Export storage", &[], &j, json!({}))
        .record_artifact(Artifact {
            name: "packagist_storage".into(),
            host: "old".into(),
            path: src.to_string_lossy().into_owned(),
            sha256: sha(&data),
            size: data.len() as u64,
        })
        .unwrap();
    Local {
        _dir: dir,
        root,
        journal: j,
        old,
        new,
        data,
    }
}

impl Local {
    fn dest(&self) -> std::path::PathBuf {
        self.root.join("new/staging dir/packagist_storage.tar.gz")
    }
    fn part(&self) -> std::path::PathBuf {
        self.root
            .join("new/staging dir/.ferry/packagist_storage.tar.gz.part")
    }
    fn args(&self) -> Transfer {
        Transfer {
            artifact: "packagist_storage".into(),
            dest: Template::new(self.dest().to_string_lossy()),
            mode: None,
            record_as: Some("packagist_storage_new".into()),
            route: None,
            guard: None,
        }
    }
    fn ctx(&self, vars: Value) -> TaskCtx {
        ctx(
            &self.new,
            "Send storage",
            &[&self.old, &self.new],
            &self.journal,
            vars,
        )
    }
    fn receiver_stdin(&self) -> Vec<u8> {
        self.new
            .received()
            .into_iter()
            .rev()
            .find(|r| r.shell.contains("ferry-receive"))
            .and_then(|r| r.stdin)
            .unwrap_or_default()
    }
}

fn mode_of(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[tokio::test]
async fn transfer_for_real_sends_checks_is_idempotent_and_tees_to_the_laptop() {
    let l = local_setup(3 << 20);
    let laptop = l.root.join("laptop backup");
    let vars = json!({"backup_dir": laptop.to_string_lossy()});
    let args = l.args();

    // Check mode: planned, nothing touched.
    let plan = args
        .plan(&l.ctx(vars.clone()), &Predicted::default())
        .await
        .unwrap();
    assert_eq!(plan.changes.len(), 1);
    assert!(!l.root.join("new").exists());

    let c = l.ctx(vars.clone());
    let plan = args.plan(&c, &Predicted::default()).await.unwrap();
    args.apply_plan(&c, plan).await.unwrap();
    assert_eq!(std::fs::read(l.dest()).unwrap(), l.data);
    assert_eq!(mode_of(&l.dest()), 0o600);
    assert!(!l.part().exists());
    assert_eq!(l.receiver_stdin().len(), l.data.len());
    // The laptop copy, private too.
    let copy = laptop.join("packagist_storage.tar.gz");
    assert_eq!(std::fs::read(&copy).unwrap(), l.data);
    assert_eq!(mode_of(&copy), 0o600);
    // The delivered copy is recorded for later steps.
    let rec = l.journal.record("new", "Send storage").unwrap();
    assert_eq!(rec.artifacts["packagist_storage_new"].sha256, sha(&l.data));

    // Again: ok, nothing sent.
    let sent_before = l.new.commands().len();
    let plan = args.plan(&c, &Predicted::default()).await.unwrap();
    assert!(plan.changes.is_empty(), "{plan:?}");
    assert!(
        !l.new.commands()[sent_before..]
            .iter()
            .any(|c| c.contains("ferry-receive")),
        "nothing may be sent on a re-run"
    );

    // Mode loosened by someone: only a chmod.
    std::fs::set_permissions(l.dest(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let plan = args.plan(&c, &Predicted::default()).await.unwrap();
    assert_eq!(plan.changes.len(), 1);
    assert!(
        plan.changes[0].description.starts_with("set the mode"),
        "{plan:?}"
    );
    args.apply_plan(&c, plan).await.unwrap();
    assert_eq!(mode_of(&l.dest()), 0o600);

    // Content changed at the destination: sent again from the start.
    std::fs::write(l.dest(), b"tampered").unwrap();
    let plan = args.plan(&c, &Predicted::default()).await.unwrap();
    assert!(plan.changes[0]
        .description
        .starts_with("send packagist_storage"));
    args.apply_plan(&c, plan).await.unwrap();
    assert_eq!(std::fs::read(l.dest()).unwrap(), l.data);
}

#[tokio::test]
async fn transfer_for_real_resumes_from_a_partial_copy_and_restarts_from_a_bad_one() {
    let l = local_setup(2 << 20);
    let args = l.args();
    let c = l.ctx(json!({}));
    let have = 777_777usize;
    // The part an earlier run left in ferry's own directory.
    let work = l.part().parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&work).unwrap();
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(l.part(), &l.data[..have]).unwrap();

    let plan = args.plan(&c, &Predicted::default()).await.unwrap();
    assert!(
        plan.changes[0].description.contains("resuming after"),
        "{plan:?}"
    );
    args.apply_plan(&c, plan).await.unwrap();
    assert_eq!(std::fs::read(l.dest()).unwrap(), l.data);
    assert_eq!(mode_of(&l.dest()), 0o600);
    assert!(!l.part().exists());
    // Exactly the missing bytes crossed.
    assert_eq!(l.receiver_stdin(), &l.data[have..]);

    // A part that is not a prefix of the source: discarded, everything sent.
    std::fs::remove_file(l.dest()).unwrap();
    let mut bad = l.data[..have].to_vec();
    bad[10] ^= 0xff;
    std::fs::write(l.part(), &bad).unwrap();
    let plan = args.plan(&c, &Predicted::default()).await.unwrap();
    assert!(
        plan.changes[0].description.contains("starting over"),
        "{plan:?}"
    );
    args.apply_plan(&c, plan).await.unwrap();
    assert_eq!(std::fs::read(l.dest()).unwrap(), l.data);
    assert_eq!(l.receiver_stdin().len(), l.data.len());
}

#[tokio::test]
async fn transfer_for_real_keeps_what_arrived_when_the_source_breaks_off() {
    let l = local_setup(1 << 20);
    let src = l.root.join("old/packagist_storage.tar.gz");
    // The source dies after 300000 bytes (as when ferry or the link goes away).
    let cut = 300_000usize;
    let path = src.to_string_lossy().into_owned();
    l.old.on_fn(&format!("cat {path}"), move |_, _| {
        let mut out = run_local(&format!("head -c {cut} '{path}'"), None);
        out.status = Some(1);
        out.stderr = b"connection lost".to_vec();
        out
    });
    let args = l.args();
    let c = l.ctx(json!({}));
    let plan = args.plan(&c, &Predicted::default()).await.unwrap();
    let err = args.apply_plan(&c, plan).await.unwrap_err().to_string();
    assert!(err.contains("connection lost"), "{err}");
    assert!(
        err.contains("incomplete: 300000 of 1048576 bytes arrived"),
        "{err}"
    );
    assert!(!l.dest().exists(), "no file under the final name");
    assert_eq!(std::fs::read(l.part()).unwrap(), &l.data[..cut]);

    // The source is back (a newer rule answers for real again): the re-run resumes and
    // sends only the rest.
    l.old
        .on_fn(&format!("cat {}", src.to_string_lossy()), run_local);
    let c = l.ctx(json!({}));
    let plan = args.plan(&c, &Predicted::default()).await.unwrap();
    assert!(
        plan.changes[0].description.contains("resuming after"),
        "{plan:?}"
    );
    args.apply_plan(&c, plan).await.unwrap();
    assert_eq!(std::fs::read(l.dest()).unwrap(), l.data);
    assert_eq!(l.receiver_stdin(), &l.data[cut..]);
}

// ---------------------------------------------------------------------------------------
// Over a real sshd: names another user prepared are never written through or reused

#[path = "common/sshd.rs"]
mod sshd;

struct DynPeers(Arc<dyn Transport>);

#[async_trait]
impl Peers for DynPeers {
    async fn transport(&self, _host: &str) -> Result<Arc<dyn Transport>, TransportError> {
        Ok(self.0.clone())
    }
}

/// A host reached over a real sshd (as root), standing for both the old and the new host.
struct RealHost {
    _server: sshd::Sshd,
    _client: sshd::Client,
    transport: Arc<dyn Transport>,
    dir: tempfile::TempDir,
    journal: Arc<Journal>,
}

/// The uid another user's files get (nobody).
const OTHER_UID: u32 = 65534;

async fn real_host() -> RealHost {
    let server = sshd::Sshd::start();
    let client = sshd::Client::new(&server);
    let ssh = sshd::connect(client.spec(&server)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let journal = journal(&dir);
    RealHost {
        _server: server,
        _client: client,
        transport: Arc::new(ssh),
        dir,
        journal,
    }
}

impl RealHost {
    fn ctx(&self, task: &str, vars: Value) -> TaskCtx {
        self.journal.task_started("new", task).unwrap();
        task_ctx(
            self.transport.clone(),
            "new",
            task,
            Arc::new(DynPeers(self.transport.clone())),
            &self.journal,
            vars,
        )
    }

    /// A directory anyone may write to (like `/tmp`: mode 1777).
    fn shared_dir(&self) -> std::path::PathBuf {
        let d = self.dir.path().join("shared");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
        // The temp dir itself must be reachable.
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        d
    }

    /// The artifact `data` at `old/<name>` on the host, recorded as produced.
    fn artifact(&self, name: &str, data: &[u8]) -> Artifact {
        let old = self.dir.path().join("old");
        std::fs::create_dir_all(&old).unwrap();
        let path = old.join(name);
        std::fs::write(&path, data).unwrap();
        let a = Artifact {
            name: name.into(),
            host: "new".into(),
            path: path.to_string_lossy().into_owned(),
            sha256: sha(data),
            size: data.len() as u64,
        };
        self.journal.task_started("new", "Dump").unwrap();
        self.journal
            .record_artifact("new", "Dump", a.clone())
            .unwrap();
        a
    }

    /// The victim of a planted link: a file nobody must touch.
    fn victim(&self) -> std::path::PathBuf {
        let v = self.dir.path().join("victim");
        std::fs::write(&v, b"precious").unwrap();
        std::fs::set_permissions(&v, std::fs::Permissions::from_mode(0o644)).unwrap();
        v
    }
}

/// Another user's planted symlink (`ln -s target link`, owned by that user).
fn plant_link(target: &std::path::Path, link: &std::path::Path) {
    std::os::unix::fs::symlink(target, link).unwrap();
    std::os::unix::fs::lchown(link, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
}

/// Another user's directory, open to all, as if they had made it first.
fn plant_dir(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::lchown(dir, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
}

fn transfer_to(artifact: &str, dest: &std::path::Path) -> Transfer {
    Transfer {
        artifact: artifact.into(),
        dest: Template::new(dest.to_string_lossy()),
        mode: None,
        record_as: Some(format!("{artifact}_new")),
        route: None,
        guard: None,
    }
}

async fn plan_and_apply(args: &dyn DynModule, c: &TaskCtx) -> Result<bool, String> {
    let plan = args
        .plan(c, &Predicted::default())
        .await
        .map_err(|e| e.to_string())?;
    if plan.changes.is_empty() {
        return Ok(false);
    }
    args.apply_plan(c, plan)
        .await
        .map(|a| a.changed)
        .map_err(|e| e.to_string())
}

/// Another user planted symlinks to a victim at the names a `.part` could have (next to
/// the destination, and in a `.ferry` directory of theirs): the transfer fails clearly
/// and the victim is untouched.
#[tokio::test]
async fn real_transfer_never_writes_through_a_planted_part() {
    let h = real_host().await;
    let data = vec![b'x'; 100_000];
    h.artifact("blob", &data);
    let shared = h.shared_dir();
    let victim = h.victim();
    let dest = shared.join("blob");
    plant_link(&victim, &shared.join("blob.part"));
    plant_dir(&shared.join(".ferry"));
    plant_link(&victim, &shared.join(".ferry/blob.part"));

    let c = h.ctx("Send", json!({}));
    let err = plan_and_apply(&transfer_to("blob", &dest), &c)
        .await
        .unwrap_err();
    assert!(
        std::fs::read(&victim).unwrap() == b"precious",
        "the victim was written through: {err}"
    );
    assert_eq!(mode_of(&victim), 0o644);
    assert!(err.contains("was not created by ferry"), "{err}");
    assert!(err.contains(&format!("owned by uid {OTHER_UID}")), "{err}");
    assert!(!dest.exists());
}

/// A destination that another user created, even with the right content, is not taken
/// as the delivered copy (nor chmod'ed, nor recorded); through a symlink neither.
#[tokio::test]
async fn real_transfer_does_not_reuse_a_destination_of_another_user() {
    let h = real_host().await;
    let data = b"the artifact's bytes".to_vec();
    h.artifact("blob", &data);
    let shared = h.shared_dir();

    // Another user's file with exactly the artifact's bytes.
    let dest = shared.join("blob");
    std::fs::write(&dest, &data).unwrap();
    std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o666)).unwrap();
    std::os::unix::fs::lchown(&dest, Some(OTHER_UID), Some(OTHER_UID)).unwrap();
    let c = h.ctx("Send", json!({}));
    let err = plan_and_apply(&transfer_to("blob", &dest), &c)
        .await
        .unwrap_err();
    assert!(err.contains("was not created by ferry"), "{err}");
    assert!(err.contains(&format!("owned by uid {OTHER_UID}")), "{err}");
    assert_eq!(mode_of(&dest), 0o666, "not chmod'ed");
    let rec = h.journal.record("new", "Send");
    assert!(
        rec.is_none_or(|r| !r.artifacts.contains_key("blob_new")),
        "another user's file was recorded as the delivered copy"
    );

    // A symlink to a file with the right content and a loose mode: not followed (the
    // target keeps its mode), not reused.
    let victim = h.dir.path().join("look-alike");
    std::fs::write(&victim, &data).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    let dest = shared.join("linked");
    plant_link(&victim, &dest);
    let c = h.ctx("Send linked", json!({}));
    let err = plan_and_apply(&transfer_to("blob", &dest), &c)
        .await
        .unwrap_err();
    assert!(err.contains("(a symlink)"), "{err}");
    assert_eq!(mode_of(&victim), 0o644, "the link's target was chmod'ed");
    assert_eq!(std::fs::read(&victim).unwrap(), data);
}

/// The artifact writer (pg_dump, redis_backup, storage_export): a planted `.part` (and
/// a planted work directory) is refused, the victim untouched; a clean directory works,
/// and the part is created in ferry's private directory.
#[tokio::test]
async fn real_write_artifact_never_writes_through_a_planted_part() {
    let h = real_host().await;
    let shared = h.shared_dir();
    let victim = h.victim();
    let dest = shared.join("packagist_db.sql");
    plant_link(&victim, &shared.join("packagist_db.sql.part"));
    plant_dir(&shared.join(".ferry"));
    plant_link(&victim, &shared.join(".ferry/packagist_db.sql.part"));
    let c = h.ctx("Dump", json!({}));
    let producer = ferry::command::Cmd::new("printf").arg("dump bytes");
    let err = ferry::module::artifact::write_artifact(
        &c,
        "packagist_db",
        producer.clone(),
        &dest.to_string_lossy(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        std::fs::read(&victim).unwrap() == b"precious",
        "the victim was written through: {err}"
    );
    assert!(err.contains("was not created by ferry"), "{err}");
    assert!(!dest.exists());

    // A symlink at the destination itself: refused before the producer runs.
    let clean = h.dir.path().join("clean");
    std::fs::create_dir_all(&clean).unwrap();
    let dest = clean.join("packagist_db.sql");
    plant_link(&victim, &dest);
    let err = ferry::module::artifact::write_artifact(
        &c,
        "packagist_db",
        producer.clone(),
        &dest.to_string_lossy(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("(a symlink)"), "{err}");
    assert!(std::fs::read(&victim).unwrap() == b"precious");
    std::fs::remove_file(&dest).unwrap();

    // Nothing planted: written, private.
    let (a, _) = ferry::module::artifact::write_artifact(
        &c,
        "packagist_db",
        producer,
        &dest.to_string_lossy(),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), b"dump bytes");
    assert_eq!(a.sha256, sha(b"dump bytes"));
    assert_eq!(mode_of(&dest), 0o600);
    assert_eq!(mode_of(&clean.join(".ferry")), 0o700);
    assert!(!clean.join(".ferry/packagist_db.sql.part").exists());
}

// ---------------------------------------------------------------------------------------
// The laptop's copy (var `backup_dir`): never partial under its final name, repaired

/// The source breaks off mid-stream: the laptop keeps only `NAME.part`, never a partial
/// file under the final name; the resumed run (which sends only the rest to the far
/// end) still leaves a complete, checked copy on the laptop.
#[tokio::test]
async fn laptop_copy_of_an_interrupted_transfer_is_only_a_part_then_completed() {
    let l = local_setup(1 << 20);
    let laptop = l.root.join("laptop");
    let vars = json!({"backup_dir": laptop.to_string_lossy()});
    let src = l.root.join("old/packagist_storage.tar.gz");
    let cut = 300_000usize;
    let path = src.to_string_lossy().into_owned();
    l.old.on_fn(&format!("cat {path}"), move |_, _| {
        let mut out = run_local(&format!("head -c {cut} '{path}'"), None);
        out.status = Some(1);
        out.stderr = b"connection lost".to_vec();
        out
    });
    let args = l.args();
    let c = l.ctx(vars.clone());
    let plan = args.plan(&c, &Predicted::default()).await.unwrap();
    args.apply_plan(&c, plan).await.unwrap_err();
    let copy = laptop.join("packagist_storage.tar.gz");
    assert!(
        !copy.exists(),
        "a partial laptop copy ({} bytes) sits under the final name",
        std::fs::metadata(&copy).map(|m| m.len()).unwrap_or(0)
    );

    // The source is back: the far end resumes; the laptop copy is made whole anyway.
    l.old
        .on_fn(&format!("cat {}", src.to_string_lossy()), run_local);
    let c = l.ctx(vars.clone());
    let plan = args.plan(&c, &Predicted::default()).await.unwrap();
    assert!(
        plan.changes
            .iter()
            .any(|c| c.description.contains("resuming after")),
        "{plan:?}"
    );
    assert!(args.apply_plan(&c, plan).await.unwrap().changed);
    assert_eq!(std::fs::read(l.dest()).unwrap(), l.data);
    assert!(
        std::fs::read(&copy).unwrap() == l.data,
        "laptop copy incomplete"
    );
    assert_eq!(mode_of(&copy), 0o600);
    assert!(!laptop.join("packagist_storage.tar.gz.part").exists());
    // And now all is ok.
    let plan = args.plan(&c, &Predicted::default()).await.unwrap();
    assert!(plan.changes.is_empty(), "{plan:?}");
}

/// A laptop copy cut short (or with other bytes of the same size) under its final name,
/// as an earlier ferry left it: the re-run sees it, makes it again and reports a change.
#[tokio::test]
async fn laptop_copy_that_is_partial_or_different_is_repaired_by_the_rerun() {
    let l = local_setup(1 << 20);
    let laptop = l.root.join("laptop");
    let vars = json!({"backup_dir": laptop.to_string_lossy()});
    let args = l.args();
    let c = l.ctx(vars.clone());
    let plan = args.plan(&c, &Predicted::default()).await.unwrap();
    args.apply_plan(&c, plan).await.unwrap();
    let copy = laptop.join("packagist_storage.tar.gz");
    assert!(std::fs::read(&copy).unwrap() == l.data);

    for (what, damaged) in [
        ("truncated", l.data[..1000].to_vec()),
        ("different bytes", {
            let mut d = l.data.clone();
            d[500_000] ^= 0xff;
            d
        }),
    ] {
        std::fs::write(&copy, &damaged).unwrap();
        let c = l.ctx(vars.clone());
        let plan = args.plan(&c, &Predicted::default()).await.unwrap();
        assert_eq!(plan.changes.len(), 1, "{what}: {plan:?}");
        assert!(
            plan.changes[0].description.contains("laptop"),
            "{what}: {plan:?}"
        );
        let applied = args.apply_plan(&c, plan).await.unwrap();
        assert!(applied.changed, "{what}");
        assert!(
            std::fs::read(&copy).unwrap() == l.data,
            "{what}: not repaired"
        );
        // The far end's copy was fine: it was not sent again.
        assert_eq!(std::fs::read(l.dest()).unwrap(), l.data);
        let plan = args.plan(&c, &Predicted::default()).await.unwrap();
        assert!(plan.changes.is_empty(), "{what}: {plan:?}");
    }
}

/// The route of a transfer follows the setting and the probe, as the storage stream's
/// does; what an earlier direct transfer left is removed first, even when nothing is
/// left to send.
#[test]
fn transfer_route_follows_the_setting_and_the_probe() {
    use ferry::module::direct_route::{DirectProbe, DirectTarget, Route, RouteSetting};
    let node = DirectTarget {
        addr: "10.0.0.2".into(),
        port: 22,
        user: "root".into(),
        host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBv".into(),
    };
    let mut f = tfacts();
    f.direct.route = RouteSetting::Auto;
    f.direct.probe = DirectProbe::Reachable(node.clone());
    let c = transfer::decide(&f).unwrap();
    match &c[..] {
        [TransferChange::Send {
            route,
            may_fall_back,
            ..
        }] => {
            assert_eq!(route, &Route::Direct(node.clone()));
            assert!(*may_fall_back);
        }
        other => panic!("expected one send, got {other:?}"),
    }
    assert!(
        c[0].describe()
            .ends_with("; route direct: old → 10.0.0.2:22"),
        "{}",
        c[0].describe()
    );
    assert!(
        c[0].commands()[0].starts_with(
            "on old: cat /b/packagist_db.sql | ssh -i <temporary key> -p 22 root@10.0.0.2"
        ),
        "{:?}",
        c[0].commands()
    );
    // Not reachable: auto falls back and says why; direct refuses before anything.
    f.direct.probe = DirectProbe::Unavailable("host old cannot reach new's sshd".into());
    let c = transfer::decide(&f).unwrap();
    assert!(
        c[0].describe()
            .contains("auto fell back, host old cannot reach new's sshd"),
        "{}",
        c[0].describe()
    );
    f.direct.route = RouteSetting::Direct;
    let e = transfer::decide(&f).unwrap_err().to_string();
    assert!(e.contains("route = \"direct\" cannot be used"), "{e}");
    // A key a crash left: removed first, also when the copy is already there.
    let mut f = tfacts();
    f.dest_file = Some((1000, "aaa".into()));
    f.dest_mode = Some(0o600);
    f.direct.trust_left = Some(ferry::module::direct_route::plan_record(
        "ferry-direct-0a0b",
        "old",
        "/root/.ssh/authorized_keys",
        "/n/.ferry/direct-ferry-direct-0a0b.sh",
    ));
    let c = transfer::decide(&f).unwrap();
    assert_eq!(c.len(), 1, "{c:?}");
    assert!(matches!(c[0], TransferChange::RemoveTrust(_)));
    assert!(
        c[0].describe().contains("ferry-direct-0a0b"),
        "{}",
        c[0].describe()
    );
}
