//! Static checks of what CI cannot run: the Vagrant VMs (no VM images reachable here) and
//! the inputs they share with the testbed.
//!
//! - `vagrant/Vagrantfile` parses (`ruby -c`) and names provisioning scripts that exist;
//! - every provisioning script and testbed script passes `bash -n` and `shellcheck`;
//! - the Dockerfiles' `COPY` sources exist in the repository (the build context);
//! - every document in `tests/testbed/manifests` deserialises into its k8s-openapi type
//!   *strictly* (re-serialised, it equals the input: k8s-openapi ignores unknown fields,
//!   so a typo would otherwise vanish silently), and the Packagist shape ferry relies on
//!   is there (workload names, the `ui` container, Redis port 9869, PVC templates, the
//!   default OpenEBS hostpath StorageClass);
//! - `inventory/{vagrant,example,testbed}.toml` parse with ferry's own inventory parser,
//!   and the migration playbook prepares (every template renders) against them.
//!
//! That the simulator accepts the manifests is checked where the simulator lives: its
//! tests (`cargo test -p k8s-sim`) boot it on `tests/testbed/manifests`.
//!
//! Missing tools (ruby, shellcheck) are installed with apt-get when running as root;
//! otherwise the test fails saying what to install. Nothing is skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
    ServiceAccount,
};
use k8s_openapi::api::storage::v1::StorageClass;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use ferry::engine::{prepare, RunOptions};
use ferry::inventory::Inventory;
use ferry::playbook::Playbook;
use ferry::secrets::Secrets;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ------------------------------------------------------------------------------ tools

/// Serialises apt-get runs of the tests in this file (they run on parallel threads).
static APT: Mutex<bool> = Mutex::new(false);

fn on_path(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(cmd))
        .find(|p| p.is_file())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The path of `cmd`, installing Debian package `package` first if it is missing.
fn ensure_tool(cmd: &str, package: &str) -> PathBuf {
    let mut apt_updated = APT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = on_path(cmd) {
        return p;
    }
    assert!(
        is_root(),
        "`{cmd}` is needed by the static checks and is missing; install the Debian package \
         `{package}` (apt-get install {package}), or run the tests as root so they install it"
    );
    if !*apt_updated {
        let status = Command::new("apt-get")
            .args(["update", "-qq"])
            .status()
            .expect("run apt-get update");
        assert!(status.success(), "apt-get update failed ({status})");
        *apt_updated = true;
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .expect("run apt-get install");
    assert!(
        status.success(),
        "apt-get install {package} failed ({status})"
    );
    on_path(cmd).unwrap_or_else(|| panic!("`{cmd}` still missing after installing {package}"))
}

/// Run `program args` in the repository root; (success, stdout + stderr).
fn run(program: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(program)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn files_in(dir: &str, keep: impl Fn(&Path) -> bool) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(repo().join(dir))
        .unwrap_or_else(|e| panic!("read {dir}: {e}"))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && keep(p))
        .map(|p| {
            p.strip_prefix(repo())
                .expect("under the repository")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    out.sort();
    out
}

// -------------------------------------------------------------------------- Vagrant

#[test]
fn vagrantfile_parses_and_names_existing_provisioning_scripts() {
    let ruby = ensure_tool("ruby", "ruby");
    let (ok, out) = run(&ruby, &["-c", "vagrant/Vagrantfile"]);
    assert!(
        ok && out.contains("Syntax OK"),
        "ruby -c vagrant/Vagrantfile:\n{out}"
    );

    // The control: ruby -c really rejects a broken Vagrantfile.
    let dir = tempfile::tempdir().expect("tempdir");
    let broken = dir.path().join("Vagrantfile");
    std::fs::write(&broken, "Vagrant.configure(\"2\") do |config|\n").expect("write");
    let (ok, _) = run(&ruby, &["-c", broken.to_str().expect("utf-8 path")]);
    assert!(!ok, "ruby -c accepted a Vagrantfile with a missing `end`");

    let text = std::fs::read_to_string(repo().join("vagrant/Vagrantfile")).expect("Vagrantfile");
    let mut referenced: Vec<String> = text
        .match_indices("\"provision/")
        .map(|(i, _)| {
            let rest = &text[i + 1..];
            rest[..rest.find('"').expect("closing quote")].to_string()
        })
        .collect();
    referenced.sort();
    referenced.dedup();
    let on_disk: Vec<String> = files_in("vagrant/provision", |p| {
        p.extension().is_some_and(|e| e == "sh")
    })
    .into_iter()
    .map(|p| p.trim_start_matches("vagrant/").to_string())
    .collect();
    assert_eq!(
        referenced, on_disk,
        "the Vagrantfile's provisioning scripts and vagrant/provision/*.sh differ"
    );
    for needle in [
        "config.vm.define name",
        "\"old\" =>",
        "\"new\" =>",
        "provider :virtualbox",
        "provider :libvirt",
        "private_network",
        "forwarded_port",
        "debian/bookworm64",
        "type: \"rsync\"",
    ] {
        assert!(text.contains(needle), "the Vagrantfile lacks `{needle}`");
    }
}

/// Every script the VMs and the testbed run.
fn shell_scripts() -> Vec<String> {
    let mut scripts = files_in("vagrant/provision", |p| {
        p.extension().is_some_and(|e| e == "sh")
    });
    scripts.push("vagrant/ssh-setup".into());
    scripts.push("vagrant/images/app/app-entry".into());
    for s in ["up", "down", "verify", "selftest"] {
        scripts.push(format!("tests/testbed/{s}"));
    }
    scripts.extend(files_in("tests/testbed/lib", |p| {
        p.extension().is_some_and(|e| e == "sh")
    }));
    for s in ["console", "host-entry", "postgres-entry", "redis-backup.sh"] {
        scripts.push(format!("tests/testbed/shared/{s}"));
    }
    scripts.extend(files_in("tests/testbed/pods", |p| {
        p.extension().is_some_and(|e| e == "sh")
    }));
    scripts
}

#[test]
fn shell_scripts_pass_bash_n_and_shellcheck() {
    let shellcheck = ensure_tool("shellcheck", "shellcheck");
    let bash = ensure_tool("bash", "bash");
    let scripts = shell_scripts();
    for expected in [
        "vagrant/provision/common.sh",
        "vagrant/provision/old.sh",
        "vagrant/provision/new.sh",
        "tests/testbed/lib/common.sh",
    ] {
        assert!(
            scripts.iter().any(|s| s == expected),
            "{expected} not among {scripts:?}"
        );
    }
    let mut failures = Vec::new();
    for script in &scripts {
        assert!(repo().join(script).is_file(), "{script} does not exist");
        let (ok, out) = run(&bash, &["-n", script]);
        if !ok {
            failures.push(format!("bash -n {script}:\n{out}"));
        }
        // -x -P SCRIPTDIR: follow `source` directives relative to the script, as they run.
        let (ok, out) = run(&shellcheck, &["-x", "-P", "SCRIPTDIR", script]);
        if !ok {
            failures.push(format!("shellcheck {script}:\n{out}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The control: shellcheck really reports a classic mistake.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.sh");
    std::fs::write(&bad, "#!/bin/bash\nrm -rf $1/*\n").expect("write");
    let (ok, out) = run(&shellcheck, &[bad.to_str().expect("utf-8 path")]);
    assert!(
        !ok && out.contains("SC2086"),
        "shellcheck missed SC2086:\n{out}"
    );
}

#[test]
fn dockerfile_copy_sources_exist_and_are_in_the_build_context() {
    let dockerfiles = ["vagrant/images/app/Dockerfile"];
    let old_sh = std::fs::read_to_string(repo().join("vagrant/provision/old.sh")).expect("old.sh");
    for dockerfile in dockerfiles {
        let text = std::fs::read_to_string(repo().join(dockerfile)).expect("Dockerfile");
        let mut copies = 0;
        for line in text.lines().map(str::trim) {
            let Some(rest) = line.strip_prefix("COPY ") else {
                continue;
            };
            let words: Vec<&str> = rest.split_whitespace().collect();
            for src in &words[..words.len() - 1] {
                copies += 1;
                assert!(
                    repo().join(src).exists(),
                    "{dockerfile}: COPY source {src} does not exist"
                );
                // old.sh builds with a context of exactly the paths it tars.
                let dir = Path::new(src).parent().expect("a path with a directory");
                assert!(
                    old_sh.contains(src) || old_sh.contains(dir.to_str().expect("utf-8")),
                    "{src} is not in the build context vagrant/provision/old.sh sends"
                );
            }
        }
        assert!(
            copies >= 2,
            "{dockerfile}: expected COPY of the console and the entry"
        );
        assert!(
            text.contains("COPY tests/testbed/shared/console /srv/manager/bin/console"),
            "{dockerfile} must install the testbed's console as /srv/manager/bin/console"
        );
    }
}

// ------------------------------------------------------------------------ manifests

/// The first place where `a` and `b` differ, as a JSON path.
fn first_difference(path: &str, a: &Value, b: &Value) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                let p = format!("{path}.{k}");
                match y.get(k) {
                    None => return Some(format!("{p}: unknown to the type (dropped)")),
                    Some(w) => {
                        if let Some(d) = first_difference(&p, v, w) {
                            return Some(d);
                        }
                    }
                }
            }
            // k8s-openapi writes `apiVersion`/`kind` even for embedded objects (a
            // statefulset's PVC templates): harmless. Anything else added is reported.
            y.keys()
                .find(|k| !x.contains_key(*k) && !matches!(k.as_str(), "apiVersion" | "kind"))
                .map(|k| format!("{path}.{k}: added by the type"))
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(format!("{path}: {} items became {}", x.len(), y.len()));
            }
            x.iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (v, w))| first_difference(&format!("{path}[{i}]"), v, w))
        }
        _ if a == b => None,
        _ => Some(format!("{path}: {a} became {b}")),
    }
}

/// Deserialise `doc` into `T`, then require that serialising it gives `doc` back.
fn strict<T: DeserializeOwned + Serialize>(doc: &Value) -> Result<T, String> {
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    match first_difference("", doc, &back) {
        None => Ok(typed),
        Some(d) => Err(d),
    }
}

/// The objects of the manifests, typed.
#[derive(Default)]
struct Objects {
    storage_classes: Vec<StorageClass>,
    namespaces: Vec<Namespace>,
    services: Vec<Service>,
    statefulsets: Vec<StatefulSet>,
    deployments: Vec<Deployment>,
    /// Kinds checked strictly but not inspected further.
    others: usize,
}

fn check_document(doc: &Value, objects: &mut Objects) -> Result<(), String> {
    let api_version = doc["apiVersion"].as_str().unwrap_or("");
    let kind = doc["kind"].as_str().unwrap_or("");
    match (api_version, kind) {
        ("storage.k8s.io/v1", "StorageClass") => objects.storage_classes.push(strict(doc)?),
        ("v1", "Namespace") => objects.namespaces.push(strict(doc)?),
        ("v1", "Service") => objects.services.push(strict(doc)?),
        ("apps/v1", "StatefulSet") => objects.statefulsets.push(strict(doc)?),
        ("apps/v1", "Deployment") => objects.deployments.push(strict(doc)?),
        ("v1", "ConfigMap") => drop(strict::<ConfigMap>(doc)?),
        ("v1", "Secret") => drop(strict::<Secret>(doc)?),
        ("v1", "ServiceAccount") => drop(strict::<ServiceAccount>(doc)?),
        ("v1", "PersistentVolumeClaim") => drop(strict::<PersistentVolumeClaim>(doc)?),
        ("v1", "PersistentVolume") => drop(strict::<PersistentVolume>(doc)?),
        ("v1", "Pod") => drop(strict::<Pod>(doc)?),
        ("apps/v1", "DaemonSet") => drop(strict::<DaemonSet>(doc)?),
        _ => {
            return Err(format!(
                "{api_version} {kind}: not a kind this check knows; add its k8s-openapi type \
                 to tests/static_checks.rs"
            ))
        }
    }
    if !matches!(
        kind,
        "StorageClass" | "Namespace" | "Service" | "StatefulSet" | "Deployment"
    ) {
        objects.others += 1;
    }
    Ok(())
}

/// Every non-empty YAML document of `text`.
fn yaml_documents(text: &str) -> Result<Vec<Value>, String> {
    let mut docs = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = Value::deserialize(document).map_err(|e| e.to_string())?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn load_manifests() -> Objects {
    let files = files_in("tests/testbed/manifests", |p| {
        p.extension().is_some_and(|e| e == "yaml" || e == "yml")
    });
    assert!(!files.is_empty(), "no manifests in tests/testbed/manifests");
    let mut objects = Objects::default();
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(repo().join(file)).expect("read manifest");
        match yaml_documents(&text) {
            Err(e) => failures.push(format!("{file}: not YAML: {e}")),
            Ok(docs) => {
                for (i, doc) in docs.iter().enumerate() {
                    if let Err(e) = check_document(doc, &mut objects) {
                        let name = doc["metadata"]["name"].as_str().unwrap_or("?");
                        failures.push(format!("{file} document {} ({name}): {e}", i + 1));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    objects
}

#[test]
fn strictness_catches_unknown_and_mistyped_fields() {
    let good = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: ui, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: ui}}
  template:
    metadata: {labels: {app: ui}}
    spec:
      containers:
        - {name: ui, image: "x:1"}
"#;
    let doc = &yaml_documents(good).unwrap()[0];
    strict::<Deployment>(doc).expect("the well-formed control document");

    let typo = good.replace("replicas: 1", "replica: 1");
    let e = strict::<Deployment>(&yaml_documents(&typo).unwrap()[0]).unwrap_err();
    assert!(e.contains(".spec.replica: unknown"), "{e}");

    let nested = good.replace("image: \"x:1\"", "image: \"x:1\", imagePullPolcy: Always");
    let e = strict::<Deployment>(&yaml_documents(&nested).unwrap()[0]).unwrap_err();
    assert!(
        e.contains(".spec.template.spec.containers[0].imagePullPolcy"),
        "{e}"
    );

    let mistyped = good.replace("replicas: 1", "replicas: one");
    assert!(strict::<Deployment>(&yaml_documents(&mistyped).unwrap()[0]).is_err());

    let mut objects = Objects::default();
    let unknown_kind = good.replace("kind: Deployment", "kind: Deploymnet");
    let e = check_document(&yaml_documents(&unknown_kind).unwrap()[0], &mut objects).unwrap_err();
    assert!(e.contains("not a kind this check knows"), "{e}");
}

fn named<
    'a,
    T: k8s_openapi::Metadata<Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
>(
    items: &'a [T],
    namespace: &str,
    name: &str,
) -> &'a T {
    items
        .iter()
        .find(|o| {
            o.metadata().name.as_deref() == Some(name)
                && o.metadata().namespace.as_deref().unwrap_or("default") == namespace
        })
        .unwrap_or_else(|| panic!("no {name} in namespace {namespace} in the manifests"))
}

#[test]
fn manifests_deserialise_strictly_and_have_the_packagist_shape() {
    let objects = load_manifests();

    // The default StorageClass: OpenEBS LocalPV hostpath under /var/openebs/local, Delete.
    let defaults: Vec<&StorageClass> = objects
        .storage_classes
        .iter()
        .filter(|sc| {
            sc.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get("storageclass.kubernetes.io/is-default-class"))
                .is_some_and(|v| v == "true")
        })
        .collect();
    assert_eq!(defaults.len(), 1, "exactly one default StorageClass");
    let sc = defaults[0];
    assert_eq!(sc.metadata.name.as_deref(), Some("openebs-hostpath"));
    assert_eq!(sc.provisioner, "openebs.io/local");
    assert_eq!(sc.reclaim_policy.as_deref(), Some("Delete"));
    assert_eq!(
        sc.volume_binding_mode.as_deref(),
        Some("WaitForFirstConsumer")
    );
    let cas_config = sc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("cas.openebs.io/config"))
        .expect("cas.openebs.io/config annotation");
    let cas: Value = serde_yaml::from_str(cas_config).expect("cas config is YAML");
    assert!(
        cas.as_array()
            .expect("a list")
            .iter()
            .any(|e| e["name"] == "BasePath" && e["value"] == "/var/openebs/local"),
        "BasePath /var/openebs/local in {cas_config}"
    );
    assert!(
        objects
            .namespaces
            .iter()
            .any(|n| n.metadata.name.as_deref() == Some("packagist-alt")),
        "namespace packagist-alt"
    );

    for ns in ["default", "packagist-alt"] {
        for (name, claim) in [("postgres", "postgres-data"), ("redis", "redis-data")] {
            let sts = named(&objects.statefulsets, ns, name);
            let spec = sts.spec.as_ref().expect("statefulset spec");
            let templates = spec.volume_claim_templates.as_deref().unwrap_or_default();
            assert!(
                templates
                    .iter()
                    .any(|t| t.metadata.name.as_deref() == Some(claim)
                        && t.spec
                            .as_ref()
                            .and_then(|s| s.storage_class_name.as_deref())
                            == Some("openebs-hostpath")),
                "{ns}/{name}: PVC template {claim} on openebs-hostpath (PVC {claim}-{name}-0)"
            );
        }
        let redis = named(&objects.statefulsets, ns, "redis");
        let pod = redis
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("redis pod spec");
        assert!(
            pod.containers[0]
                .ports
                .iter()
                .flatten()
                .any(|p| p.container_port == 9869),
            "{ns}/redis listens on 9869"
        );
        for name in ["ui", "repo", "worker"] {
            named(&objects.deployments, ns, name);
        }
        let ui = named(&objects.deployments, ns, "ui");
        let containers: Vec<&str> = ui
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .map(|p| p.containers.iter().map(|c| c.name.as_str()).collect())
            .unwrap_or_default();
        assert_eq!(containers.len(), 2, "{ns}/ui has 2 containers");
        assert!(containers.contains(&"ui"), "{ns}/ui has a container `ui`");
        named(&objects.services, ns, "redis");
    }
    assert_eq!(
        objects.others, 0,
        "kinds beyond the inspected ones appeared"
    );
}

// ----------------------------------------------------------------------- inventories

fn load_inventory(name: &str) -> Inventory {
    let path = repo().join("inventory").join(name);
    Inventory::load(&path, &Secrets::new())
        .unwrap_or_else(|e| panic!("inventory/{name} does not parse: {e}"))
}

#[test]
fn inventories_parse_and_the_migration_playbook_prepares_against_them() {
    let playbook = Arc::new(
        Playbook::load(&repo().join("playbooks/packagist-migrate.toml")).expect("playbook"),
    );
    for name in [
        "vagrant.toml",
        "example.toml",
        "testbed.toml",
        "testbed-fs.toml",
    ] {
        let inventory = load_inventory(name);
        assert!(
            inventory.hosts.contains_key("old") && inventory.hosts.contains_key("new"),
            "{name}: hosts old and new"
        );
        if name == "example.toml" {
            // Its groups (docker, k8s) are an illustration, not the playbook's.
            continue;
        }
        assert_eq!(
            inventory.select("packagist_old").unwrap(),
            vec!["old"],
            "{name}"
        );
        assert_eq!(
            inventory.select("packagist_new").unwrap(),
            vec!["new"],
            "{name}"
        );
        let inventory = Arc::new(inventory);
        let check = RunOptions {
            check: true,
            ..Default::default()
        };
        let prepared = prepare(playbook.clone(), inventory.clone(), check, &Secrets::new())
            .unwrap_or_else(|e| panic!("{name}: the migration playbook does not prepare: {e}"));
        assert_eq!(prepared.hosts.len(), 2, "{name}: both hosts have tasks");
    }

    // The Vagrant inventory reaches the VMs through `vagrant ssh-config` (vagrant/ssh-setup).
    let inv = load_inventory("vagrant.toml");
    let dir = repo().join("inventory");
    for (host, alias) in [("old", "old"), ("new", "new")] {
        let c = &inv.hosts[host].connect;
        assert_eq!(c.address, alias, "the Host alias of `vagrant ssh-config`");
        assert_eq!(
            c.ssh_config.as_deref(),
            Some(dir.join("../vagrant/.state/ssh_config").as_path())
        );
        assert_eq!(
            c.known_hosts.as_deref(),
            Some(dir.join("../vagrant/.state/known_hosts").as_path())
        );
        assert_eq!(c.user.as_deref(), Some("vagrant"));
        assert_eq!(c.become_.as_ref().map(|b| b.user.as_str()), Some("root"));
    }
    let setup = std::fs::read_to_string(repo().join("vagrant/ssh-setup")).expect("ssh-setup");
    assert!(setup.contains("vagrant ssh-config old new >.state/ssh_config"));
    assert!(setup.contains(".state/known_hosts"));
    let vars = &inv.hosts["new"].vars;
    assert_eq!(vars["kubeconfig"], "/etc/kubernetes/admin.conf");
    assert_eq!(vars["namespace"], "default");
    assert_eq!(inv.hosts["old"].vars["data_dir"], "/data/packagist");
}

/// The layers of `src/` import one way (lib.rs): the module contract and its support
/// (`module/`) know no module; general modules (`modules/`) know no migration step;
/// nothing below the engine knows the engine, the CLI or the module table. A `use` (or a
/// path) against that direction is listed with its file and line.
#[test]
fn imports_run_one_way() {
    let rules: &[(&str, &[&str])] = &[
        (
            "src/module",
            &[
                "crate::modules",
                "crate::packagist",
                "crate::registry",
                "crate::engine",
                "crate::cli",
            ],
        ),
        (
            "src/modules",
            &[
                "crate::packagist",
                "crate::registry",
                "crate::engine",
                "crate::cli",
            ],
        ),
        (
            "src/packagist",
            &["crate::registry", "crate::engine", "crate::cli"],
        ),
        (
            "src/transport",
            &[
                "crate::module",
                "crate::modules",
                "crate::packagist",
                "crate::engine",
            ],
        ),
        (
            "src/k8s",
            &[
                "crate::module",
                "crate::modules",
                "crate::packagist",
                "crate::engine",
            ],
        ),
    ];
    let mut upward = Vec::new();
    for (dir, forbidden) in rules {
        let mut files = Vec::new();
        let mut todo = vec![repo().join(dir)];
        while let Some(p) = todo.pop() {
            if p.is_dir() {
                todo.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            } else if p.extension().is_some_and(|e| e == "rs") {
                files.push(p);
            }
        }
        assert!(!files.is_empty(), "no Rust files under {dir}");
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for f in *forbidden {
                    // `crate::modules` must not match `crate::module::…`, nor vice versa.
                    let hit = code.match_indices(f).any(|(i, _)| {
                        let next = code[i + f.len()..].chars().next();
                        !matches!(next, Some(c) if c.is_alphanumeric() || c == '_')
                    });
                    if hit {
                        upward.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports against the layering:\n{}",
        upward.join("\n")
    );
}

/// Modules read host vars by declaration (`HostReader::var_of(&DECL)`, `DECL.get(vars)`),
/// never by a literal name: a literal would bypass `Module::VARS` and the kind check in
/// `prepare`. (A var whose name the task's arguments give is read with `var(name)`.)
#[test]
fn host_vars_are_read_by_declaration() {
    let mut literal = Vec::new();
    for dir in ["src/module", "src/modules", "src/packagist"] {
        let mut todo = vec![repo().join(dir)];
        while let Some(p) = todo.pop() {
            if p.is_dir() {
                todo.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
                continue;
            }
            if p.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            // `vars\n    .get("x")` counts as well as `vars.get("x")`.
            let code: String = text
                .lines()
                .map(|l| l.split("//").next().unwrap_or("").trim())
                .collect();
            for pattern in [".var(\"", "vars.get(\""] {
                for (i, _) in code.match_indices(pattern) {
                    let end = code[i..].find(')').map_or(code.len(), |e| i + e + 1);
                    literal.push(format!("{}: {}", p.display(), &code[i..end]));
                }
            }
        }
    }
    assert!(
        literal.is_empty(),
        "host vars read by a literal name (declare a VarDecl and use var_of):\n{}",
        literal.join("\n")
    );
}
