//! The simulator driven by the real kubectl 1.32, as ferry's testbed uses it.

mod common;

use std::path::PathBuf;

use common::Sim;
use sha2::{Digest, Sha256};

fn psql(sim: &Sim, sql: &str) -> std::process::Output {
    sim.kubectl_output(
        &[
            "exec",
            "-i",
            "postgres-0",
            "--",
            "psql",
            "-U",
            "postgres",
            "-d",
            "packagist_db",
            "-v",
            "ON_ERROR_STOP=1",
            "-tA",
        ],
        Some(sql.as_bytes()),
    )
}

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

fn volume_of(sim: &Sim, claim: &str) -> (String, PathBuf) {
    let pv = sim.kubectl(&["get", "pvc", claim, "-o", "jsonpath={.spec.volumeName}"]);
    assert!(pv.starts_with("pvc-"), "PV name {pv:?}");
    let path = sim.kubectl(&["get", "pv", &pv, "-o", "jsonpath={.spec.local.path}"]);
    (pv, PathBuf::from(path))
}

#[test]
fn kubectl_get_scale_exec_configmaps_and_pvc_protection() {
    let sim = Sim::start(&[]);
    sim.wait_all_ready("default");
    sim.wait_all_ready("packagist-alt");

    let listing = sim.kubectl(&["get", "pods,deploy,sts,pvc,pv"]);
    for needle in [
        "pod/postgres-0",
        "pod/redis-0",
        "deployment.apps/ui",
        "deployment.apps/repo",
        "deployment.apps/worker",
        "statefulset.apps/postgres",
        "statefulset.apps/redis",
        "persistentvolumeclaim/postgres-data-postgres-0",
        "persistentvolumeclaim/redis-data-redis-0",
        "persistentvolume/pvc-",
        "openebs-hostpath",
    ] {
        assert!(listing.contains(needle), "{needle} missing in:\n{listing}");
    }
    let alt = sim.kubectl(&["-n", "packagist-alt", "get", "deploy", "-o", "name"]);
    assert_eq!(
        alt.lines().collect::<Vec<_>>(),
        [
            "deployment.apps/repo",
            "deployment.apps/ui",
            "deployment.apps/worker"
        ]
    );

    // The ui pod: two containers, both ready; each container has its own /tmp.
    let ui = sim.pod_name("default", "ui");
    assert!(ui.starts_with("ui-"), "{ui}");
    assert_eq!(
        sim.kubectl(&[
            "get",
            "pod",
            &ui,
            "-o",
            "jsonpath={.spec.containers[*].name}"
        ]),
        "ui sidecar"
    );
    assert_eq!(
        sim.kubectl(&[
            "get",
            "pod",
            &ui,
            "-o",
            "jsonpath={.status.containerStatuses[*].ready}"
        ]),
        "true true"
    );
    sim.kubectl(&[
        "exec",
        &ui,
        "-c",
        "ui",
        "--",
        "sh",
        "-c",
        "echo hi > /tmp/only-in-ui",
    ]);
    let in_ui = sim.kubectl_output(
        &[
            "exec",
            &ui,
            "-c",
            "ui",
            "--",
            "test",
            "-e",
            "/tmp/only-in-ui",
        ],
        None,
    );
    assert_eq!(in_ui.status.code(), Some(0));
    let in_sidecar = sim.kubectl_output(
        &[
            "exec",
            &ui,
            "-c",
            "sidecar",
            "--",
            "test",
            "-e",
            "/tmp/only-in-ui",
        ],
        None,
    );
    assert_eq!(
        in_sidecar.status.code(),
        Some(1),
        "the sidecar must not see ui's /tmp"
    );

    // Volumes: OpenEBS-hostpath-like PVs.
    let (redis_pv, redis_dir) = volume_of(&sim, "redis-data-redis-0");
    assert_eq!(
        redis_dir,
        sim.openebs_base.canonicalize().unwrap().join(&redis_pv)
    );
    assert!(redis_dir.is_dir());
    assert_eq!(
        sim.kubectl(&[
            "get",
            "pv",
            &redis_pv,
            "-o",
            "jsonpath={.spec.persistentVolumeReclaimPolicy}"
        ]),
        "Delete"
    );

    // Exec: output, stdin, exit codes.
    assert_eq!(
        sim.kubectl(&["exec", "redis-0", "--", "redis-cli", "-p", "9869", "dbsize"])
            .trim(),
        "0"
    );
    let select = psql(&sim, "select 1");
    assert!(select.status.success(), "{}", stderr(&select));
    assert_eq!(stdout(&select), "1");
    let created = psql(
        &sim,
        "create table marker(x int); insert into marker values (42);",
    );
    assert!(created.status.success(), "{}", stderr(&created));
    let failing = sim.kubectl_output(&["exec", "redis-0", "--", "sh", "-c", "exit 3"], None);
    assert_eq!(failing.status.code(), Some(3), "{}", stderr(&failing));

    // ConfigMaps (ferry records the completed migration in one).
    // (`kubectl create configmap NAME` sends protobuf: see
    // kubectl_create_configmap_and_secret_as_kubectl_sends_them.)
    let manifest = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ferry-migration\ndata:\n  state: started\n";
    let created = sim.kubectl_output(&["create", "-f", "-"], Some(manifest));
    assert!(created.status.success(), "{}", stderr(&created));
    let again = sim.kubectl_output(&["create", "-f", "-"], Some(manifest));
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("(AlreadyExists)"),
        "{}",
        stderr(&again)
    );
    sim.kubectl(&[
        "patch",
        "configmap",
        "ferry-migration",
        "--type",
        "merge",
        "-p",
        r#"{"data":{"state":"completed"}}"#,
    ]);
    assert_eq!(
        sim.kubectl(&[
            "get",
            "configmap",
            "ferry-migration",
            "-o",
            "jsonpath={.data.state}"
        ]),
        "completed"
    );
    sim.kubectl(&["delete", "configmap", "ferry-migration"]);
    let missing = sim.kubectl_output(&["get", "configmap", "ferry-migration"], None);
    assert!(
        stderr(&missing).contains("(NotFound)"),
        "{}",
        stderr(&missing)
    );

    // Scale a deployment to 0 and back.
    sim.kubectl(&["scale", "deploy/ui", "--replicas=0"]);
    sim.kubectl(&[
        "wait",
        "--for=delete",
        &format!("pod/{ui}"),
        "--timeout=30s",
    ]);
    assert_eq!(
        sim.kubectl(&["get", "pods", "-l", "app=ui", "-o", "name"]),
        ""
    );
    sim.kubectl(&["scale", "deploy/ui", "--replicas=1"]);
    sim.kubectl(&[
        "wait",
        "--for=condition=Available",
        "deploy/ui",
        "--timeout=30s",
    ]);
    assert_ne!(
        sim.pod_name("default", "ui"),
        ui,
        "a new ui pod replaces the old one"
    );

    // PVC deletion while the pod runs stays pending (pvc-protection) ...
    let (old_pv, old_dir) = volume_of(&sim, "postgres-data-postgres-0");
    assert!(old_dir.join("PG_VERSION").is_file());
    sim.kubectl(&["delete", "pvc", "postgres-data-postgres-0", "--wait=false"]);
    let marker = psql(&sim, "select x from marker");
    assert_eq!(
        stdout(&marker),
        "42",
        "the pod keeps its volume: {}",
        stderr(&marker)
    );
    let deleting = sim.kubectl(&[
        "get",
        "pvc",
        "postgres-data-postgres-0",
        "-o",
        "jsonpath={.metadata.deletionTimestamp} {.metadata.finalizers}",
    ]);
    assert!(
        deleting.contains("kubernetes.io/pvc-protection"),
        "{deleting}"
    );
    assert!(
        !deleting.starts_with(' '),
        "deletionTimestamp must be set: {deleting:?}"
    );
    assert!(sim.kubectl(&["get", "pvc"]).contains("Terminating"));
    assert!(old_dir.is_dir());

    // ... and completes after scale to 0: claim, PV and directory gone.
    sim.kubectl(&["scale", "sts/postgres", "--replicas=0"]);
    sim.kubectl(&[
        "wait",
        "--for=delete",
        "pvc/postgres-data-postgres-0",
        "--timeout=60s",
    ]);
    sim.kubectl(&[
        "wait",
        "--for=delete",
        &format!("pv/{old_pv}"),
        "--timeout=30s",
    ]);
    assert!(
        !old_dir.exists(),
        "reclaimPolicy Delete removes {}",
        old_dir.display()
    );

    // Scaling back up makes a new, empty volume and a fresh packagist_db.
    sim.kubectl(&["scale", "sts/postgres", "--replicas=1"]);
    sim.kubectl(&["wait", "--for=create", "pod/postgres-0", "--timeout=30s"]);
    sim.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/postgres-0",
        "--timeout=60s",
    ]);
    let (new_pv, new_dir) = volume_of(&sim, "postgres-data-postgres-0");
    assert_ne!(new_pv, old_pv);
    assert!(new_dir.is_dir());
    let gone = psql(&sim, "select x from marker");
    assert!(!gone.status.success(), "the new database must be empty");
    assert!(
        stderr(&gone).contains("does not exist"),
        "{}",
        stderr(&gone)
    );
    assert_eq!(
        stdout(&psql(&sim, "select current_database()")),
        "packagist_db"
    );
}

fn redis(sim: &Sim, args: &[&str]) -> String {
    let mut full = vec!["exec", "redis-0", "--", "redis-cli", "-p", "9869"];
    full.extend_from_slice(args);
    sim.kubectl(&full).trim().to_string()
}

fn restart_redis_with_dump(sim: &Sim, dir: &std::path::Path, dump: &[u8]) {
    sim.kubectl(&["scale", "sts/redis", "--replicas=0"]);
    sim.kubectl(&["wait", "--for=delete", "pod/redis-0", "--timeout=30s"]);
    let aof_dir = dir.join("appendonlydir");
    if aof_dir.exists() {
        std::fs::remove_dir_all(&aof_dir).unwrap();
    }
    let _ = std::fs::remove_file(dir.join("appendonly.aof"));
    std::fs::write(dir.join("dump.rdb"), dump).unwrap();
    sim.kubectl(&["scale", "sts/redis", "--replicas=1"]);
    sim.kubectl(&["wait", "--for=create", "pod/redis-0", "--timeout=30s"]);
    sim.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/redis-0",
        "--timeout=60s",
    ]);
}

#[test]
fn redis_appendonly_yes_ignores_a_lone_dump_rdb() {
    let sim = Sim::start(&[]);
    sim.wait_all_ready("default");
    assert_eq!(
        redis(&sim, &["config", "get", "appendonly"]),
        "appendonly\nyes"
    );

    sim.kubectl(&[
        "exec",
        "redis-0",
        "--",
        "sh",
        "-c",
        "for i in $(seq 1 200); do echo \"SET key:$i value$i\"; done | redis-cli -p 9869 >/dev/null",
    ]);
    assert_eq!(redis(&sim, &["dbsize"]), "200");
    assert_eq!(redis(&sim, &["save"]), "OK");
    let (_, dir) = volume_of(&sim, "redis-data-redis-0");
    let dump = std::fs::read(dir.join("dump.rdb")).unwrap();

    // The trap: appendonly yes, only dump.rdb in the data dir → Redis starts empty.
    restart_redis_with_dump(&sim, &dir, &dump);
    assert_eq!(
        redis(&sim, &["dbsize"]),
        "0",
        "appendonly yes must ignore a lone dump.rdb"
    );
    assert!(
        dir.join("appendonlydir").is_dir(),
        "Redis created a fresh AOF"
    );

    // With appendonly no (template changed by a JSON patch), the same dump loads.
    sim.kubectl(&[
        "patch",
        "sts",
        "redis",
        "--type",
        "json",
        "-p",
        r#"[{"op":"test","path":"/spec/template/spec/containers/0/env/1/name","value":"REDIS_APPENDONLY"},
            {"op":"replace","path":"/spec/template/spec/containers/0/env/1/value","value":"no"}]"#,
    ]);
    restart_redis_with_dump(&sim, &dir, &dump);
    assert_eq!(
        redis(&sim, &["config", "get", "appendonly"]),
        "appendonly\nno"
    );
    assert_eq!(redis(&sim, &["dbsize"]), "200");
}

#[test]
fn exec_stdin_round_trips_50_mib_and_redis_appendonly_flag() {
    let sim = Sim::start(&["--redis-appendonly", "no"]);
    sim.wait_all_ready("default");
    assert_eq!(
        redis(&sim, &["config", "get", "appendonly"]),
        "appendonly\nno"
    );

    // 50 MiB of pseudo-random bytes (xorshift), so nothing compresses or repeats.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut data = Vec::with_capacity(50 << 20);
    while data.len() < 50 << 20 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        data.extend_from_slice(&state.to_le_bytes());
    }
    let expected = hex::encode(Sha256::digest(&data));
    let ui = sim.pod_name("default", "ui");

    let echoed = sim.kubectl_output(&["exec", "-i", &ui, "-c", "ui", "--", "cat"], Some(&data));
    assert!(echoed.status.success(), "{}", stderr(&echoed));
    assert_eq!(echoed.stdout.len(), data.len());
    assert_eq!(hex::encode(Sha256::digest(&echoed.stdout)), expected);

    let hashed = sim.kubectl_output(&["exec", "-i", "redis-0", "--", "sha256sum"], Some(&data));
    assert!(hashed.status.success(), "{}", stderr(&hashed));
    assert_eq!(
        stdout(&hashed).split_whitespace().next(),
        Some(expected.as_str())
    );
}

/// Secrets take `stringData` (folded into `data`, never stored), containers read them with
/// `secretKeyRef`, and a `hostNetwork` pod shares the node's network namespace while an
/// ordinary pod has its own: the blob store's pod is reached on the node's loopback.
#[test]
fn secrets_string_data_secret_key_ref_and_host_network() {
    let sim = Sim::start(&[]);
    sim.wait_all_ready("default");
    let manifest = r#"
apiVersion: v1
kind: Secret
metadata: {name: blob-creds, namespace: default}
type: Opaque
stringData: {access-key: GKtestkey, secret-key: "s3cr3t value"}
---
apiVersion: v1
kind: Pod
metadata: {name: hostnet, namespace: default, labels: {app: hostnet}}
spec:
  hostNetwork: true
  containers:
    - name: main
      command: ["/bin/sh", "-c", "exec sleep 3600"]
      env:
        - name: SECRET_KEY
          valueFrom: {secretKeyRef: {name: blob-creds, key: secret-key}}
---
apiVersion: v1
kind: Pod
metadata: {name: podnet, namespace: default, labels: {app: podnet}}
spec:
  containers:
    - name: main
      command: ["/bin/sh", "-c", "exec sleep 3600"]
"#;
    let out = sim.kubectl_output(&["apply", "-f", "-"], Some(manifest.as_bytes()));
    assert!(out.status.success(), "{}", stderr(&out));

    let secret: serde_json::Value =
        serde_json::from_str(&sim.kubectl(&["get", "secret", "blob-creds", "-o", "json"])).unwrap();
    assert!(secret.get("stringData").is_none(), "{secret}");
    assert_eq!(secret["data"]["secret-key"], "czNjcjN0IHZhbHVl"); // base64("s3cr3t value")

    sim.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/hostnet",
        "pod/podnet",
        "--timeout=60s",
    ]);
    let env = sim.kubectl(&[
        "exec",
        "hostnet",
        "--",
        "/bin/sh",
        "-c",
        "printf %s \"$SECRET_KEY\"",
    ]);
    assert_eq!(env, "s3cr3t value");

    let own = std::fs::read_link("/proc/self/ns/net").unwrap();
    let own = own.to_string_lossy();
    let host_ns = sim.kubectl(&["exec", "hostnet", "--", "readlink", "/proc/self/ns/net"]);
    let pod_ns = sim.kubectl(&["exec", "podnet", "--", "readlink", "/proc/self/ns/net"]);
    assert_eq!(
        host_ns.trim(),
        own,
        "a hostNetwork pod is in the node's network"
    );
    assert_ne!(
        pod_ns.trim(),
        own,
        "an ordinary pod has a network of its own"
    );
}

/// A second `--manifests` directory is an overlay: an object of the same kind, namespace
/// and name replaces the first directory's (the testbed's `blob-s3` variant replaces the
/// ui workloads this way); objects of its own are added.
#[test]
fn a_later_manifests_directory_overlays_the_earlier_one() {
    let (_overlay, sim) = start_with_overlay(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {name: overlay-only, namespace: default}
data: {from: overlay}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: worker, namespace: default, labels: {app: worker}}
spec:
  replicas: 0
  selector: {matchLabels: {app: worker}}
  template:
    metadata: {labels: {app: worker}}
    spec:
      containers:
        - {name: worker, command: ["/bin/sh", "-c", "exec sleep 3600"]}
"#,
    );
    let replicas = sim.kubectl(&["get", "deploy", "worker", "-o", "jsonpath={.spec.replicas}"]);
    assert_eq!(
        replicas.trim(),
        "0",
        "the overlay's worker replaced the base one"
    );
    let from = sim.kubectl(&["get", "cm", "overlay-only", "-o", "jsonpath={.data.from}"]);
    assert_eq!(from.trim(), "overlay");
    let ui = sim.kubectl(&["get", "deploy", "ui", "-o", "jsonpath={.spec.replicas}"]);
    assert_eq!(ui.trim(), "1", "what the overlay does not name stays");
}

/// kubectl always names a container: the pod's `kubectl.kubernetes.io/default-container`
/// annotation, else the first one, with a notice (real kubectl is the oracle here). The
/// API server itself refuses an exec without one into a pod with several containers
/// (shown with kube-rs in kube_client.rs, as ferry execs).
#[test]
fn kubectl_names_a_container_for_an_exec_into_a_pod_with_several() {
    let (_overlay, sim) = start_with_overlay(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: two, namespace: default, labels: {app: two}}
spec:
  replicas: 1
  selector: {matchLabels: {app: two}}
  template:
    metadata: {labels: {app: two}}
    spec:
      containers:
        - {name: app, command: ["/bin/sh", "-c", "exec sleep 3600"]}
        - {name: sidecar, command: ["/bin/sh", "-c", "exec sleep 3600"]}
"#,
    );
    sim.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod",
        "-l",
        "app=two",
        "--timeout=60s",
    ]);
    let pod = sim.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=two",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ]);
    let pod = pod.trim();
    let defaulted = sim.kubectl_output(&["exec", pod, "--", "echo", "ok"], None);
    let err = String::from_utf8_lossy(&defaulted.stderr);
    assert!(defaulted.status.success(), "{err}");
    assert!(
        err.contains(r#"Defaulted container "app" out of: app, sidecar"#),
        "{err}"
    );
    assert_eq!(
        sim.kubectl(&["exec", pod, "-c", "sidecar", "--", "echo", "ok"])
            .trim(),
        "ok"
    );
    let unknown = sim.kubectl_output(&["exec", pod, "-c", "nope", "--", "true"], None);
    assert!(!unknown.status.success());
}

/// A simulator with the testbed's manifests and then `yaml` as an overlay directory (kept
/// while the simulator runs).
fn start_with_overlay(yaml: &str) -> (tempfile::TempDir, Sim) {
    let overlay = tempfile::tempdir().unwrap();
    std::fs::write(overlay.path().join("50-overlay.yaml"), yaml).unwrap();
    let sim = Sim::start(&["--manifests", overlay.path().to_str().unwrap()]);
    (overlay, sim)
}

/// Pods that end (Part 4, item 2): a container that exits non-zero under `restartPolicy:
/// Never` ends its pod in phase Failed, and the pod stays until deleted (exec into it is
/// the API server's 400); an evicted pod (the simulator's evict switch) is Failed with
/// reason Evicted; a ReplicaSet replaces it and leaves it (it no longer counts), a
/// StatefulSet deletes it and makes it again; a bare pod made with a ReplicaSet's labels
/// is adopted (and the surplus scaled away), as on a real cluster.
#[test]
fn pods_that_end_stay_until_deleted_and_controllers_replace_them() {
    let sim = Sim::start(&[]);
    sim.wait_all_ready("default");
    let apply = |yaml: &str| {
        let out = sim.kubectl_output(&["apply", "-f", "-"], Some(yaml.as_bytes()));
        assert!(out.status.success(), "apply: {}", stderr(&out));
    };
    let wait_phase = |pod: &str, phase: &str| {
        sim.kubectl(&[
            "wait",
            &format!("--for=jsonpath={{.status.phase}}={phase}"),
            &format!("pod/{pod}"),
            "--timeout=30s",
        ]);
    };

    // restartPolicy Never, exit 3: Failed, the container terminated with its code.
    apply(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: once\nspec:\n  restartPolicy: Never\n  \
         containers:\n  - name: main\n    image: busybox\n    command: [sh, -c, 'exit 3']\n",
    );
    wait_phase("once", "Failed");
    let code = sim.kubectl(&[
        "get",
        "pod",
        "once",
        "-o",
        "jsonpath={.status.containerStatuses[0].state.terminated.exitCode} {.status.containerStatuses[0].restartCount}",
    ]);
    assert_eq!(code, "3 0");
    assert!(sim.kubectl(&["get", "pod", "once"]).contains("Error"));
    let exec = sim.kubectl_output(&["exec", "once", "--", "true"], None);
    assert!(
        stderr(&exec)
            .contains("cannot exec into a container in a completed pod; current phase is Failed"),
        "{}",
        stderr(&exec)
    );
    // It stays (no controller removes a bare pod), until deleted.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    wait_phase("once", "Failed");
    sim.kubectl(&["delete", "pod", "once", "--timeout=30s"]);

    // A ui pod evicted: Failed/Evicted, replaced, and left behind.
    let ui = sim.pod_name("default", "ui");
    sim.evict("default", &ui);
    wait_phase(&ui, "Failed");
    let reason = sim.kubectl(&[
        "get",
        "pod",
        &ui,
        "-o",
        "jsonpath={.status.reason} {.status.conditions[?(@.type==\"DisruptionTarget\")].reason}",
    ]);
    assert_eq!(reason, "Evicted TerminationByKubelet");
    sim.kubectl(&[
        "wait",
        "--for=jsonpath={.status.readyReplicas}=1",
        "deploy/ui",
        "--timeout=30s",
    ]);
    let names = sim.kubectl(&[
        "get",
        "pods",
        "-l",
        "app=ui",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.status.phase} {end}",
    ]);
    let phases: Vec<&str> = names.split_whitespace().collect();
    assert_eq!(
        phases.len(),
        2,
        "the evicted pod and its replacement: {names}"
    );
    assert!(phases.contains(&format!("{ui}=Failed").as_str()), "{names}");
    assert!(phases.iter().any(|p| p.ends_with("=Running")), "{names}");
    let replicas = sim.kubectl(&["get", "deploy", "ui", "-o", "jsonpath={.status.replicas}"]);
    assert_eq!(replicas, "1", "the evicted pod is not a replica");

    // redis-0 evicted: deleted and made again (a new uid), Running and ready.
    let uid = |pod: &str| sim.kubectl(&["get", "pod", pod, "-o", "jsonpath={.metadata.uid}"]);
    let before = uid("redis-0");
    sim.evict("default", "redis-0");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let out = sim.kubectl_output(
            &["get", "pod", "redis-0", "-o", "jsonpath={.metadata.uid}"],
            None,
        );
        if out.status.success() && !stdout(&out).is_empty() && stdout(&out) != before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "redis-0 was not made again"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    sim.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/redis-0",
        "--timeout=60s",
    ]);

    // A bare pod with the ReplicaSet's labels is adopted; the surplus is scaled away.
    let hash = sim.kubectl(&[
        "get",
        "rs",
        "-l",
        "app=worker",
        "-o",
        "jsonpath={.items[0].metadata.labels.pod-template-hash}",
    ]);
    apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: stray\n  labels:\n    app: worker\n    \
         pod-template-hash: {hash:?}\nspec:\n  containers:\n  - name: main\n    image: busybox\n    \
         command: [sleep, infinity]\n"
    ));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let pods = sim.kubectl(&[
            "get",
            "pods",
            "-l",
            "app=worker",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}:{.metadata.ownerReferences[0].kind}:{.metadata.deletionTimestamp} {end}",
        ]);
        let live: Vec<&str> = pods
            .split_whitespace()
            .filter(|p| p.ends_with(':'))
            .collect();
        if live.len() == 1 && live.iter().all(|p| p.contains(":ReplicaSet:")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not adopted and scaled: {pods}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Non-root Redis (Part 4, item 6): redis-server runs as uid 999 (the pod's
/// securityContext, as the official image runs it), and so do execs into its container;
/// its PV directory is root-owned with mode 0777 as OpenEBS makes it, and Redis's own
/// files in it are 999's. A root-owned 0600 file there is one Redis cannot read.
#[test]
fn redis_runs_as_uid_999_on_a_root_owned_0777_volume() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let sim = Sim::start(&[]);
    sim.wait_all_ready("default");
    let id = sim.kubectl(&["exec", "redis-0", "-c", "redis", "--", "id", "-u"]);
    assert_eq!(id.trim(), "999");
    let info = sim.kubectl(&[
        "exec",
        "redis-0",
        "-c",
        "redis",
        "--",
        "redis-cli",
        "-p",
        "9869",
        "INFO",
        "server",
    ]);
    let pid: u32 = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("process_id:"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no process_id in {info}"));
    let proc_meta = std::fs::metadata(format!("/proc/{pid}")).unwrap();
    assert_eq!(
        (proc_meta.uid(), proc_meta.gid()),
        (999, 999),
        "redis-server's owner"
    );

    let (_, dir) = volume_of(&sim, "redis-data-redis-0");
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!(meta.uid(), 0, "the PV directory is root's");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o777);
    let aof = std::fs::metadata(dir.join("appendonlydir")).unwrap();
    assert_eq!(aof.uid(), 999, "Redis's own files are 999's");

    std::fs::write(dir.join("secret"), b"x").unwrap();
    std::fs::set_permissions(dir.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let read = sim.kubectl_output(
        &[
            "exec",
            "redis-0",
            "-c",
            "redis",
            "--",
            "cat",
            "/data/secret",
        ],
        None,
    );
    assert!(
        !read.status.success(),
        "uid 999 read a root-owned 0600 file"
    );
    assert!(
        stderr(&read).contains("Permission denied"),
        "{}",
        stderr(&read)
    );
}

/// `kubectl create configmap` and `create secret` (Part 4, item 10): kubectl 1.32 sends
/// them as protobuf (and falls back to JSON on a 415 only for CBOR); the simulator reads
/// that body as a real API server does.
#[test]
fn kubectl_create_configmap_and_secret_as_kubectl_sends_them() {
    let sim = Sim::start(&[]);
    sim.kubectl(&[
        "create",
        "configmap",
        "from-cli",
        "--from-literal=a=b",
        "--from-literal=c=d e",
    ]);
    assert_eq!(
        sim.kubectl(&[
            "get",
            "configmap",
            "from-cli",
            "-o",
            "jsonpath={.data.a}|{.data.c}"
        ]),
        "b|d e"
    );
    sim.kubectl(&[
        "create",
        "secret",
        "generic",
        "from-cli",
        "--from-literal=password=hunter2",
    ]);
    assert_eq!(
        sim.kubectl(&[
            "get",
            "secret",
            "from-cli",
            "-o",
            "jsonpath={.data.password} {.type}"
        ]),
        "aHVudGVyMg== Opaque"
    );
    // A second create is the API server's conflict, not a silent overwrite.
    let again = sim.kubectl_output(
        &["create", "configmap", "from-cli", "--from-literal=a=z"],
        None,
    );
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
}
