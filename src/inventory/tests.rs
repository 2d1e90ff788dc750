//! Inventory parsing: precedence, errors with locations, env and secret values.

use super::*;
use std::time::Duration;

fn parse(text: &str, env: &[(&str, &str)]) -> Result<Inventory, InputError> {
    let env: BTreeMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let source = SourceFile::new("/inv/hosts.toml", text);
    Inventory::parse(&source, &|n| env.get(n).cloned(), &Secrets::new())
}

const GOOD: &str = r#"
[defaults]
user = "root"
identity_file = "keys/id"
[defaults.vars]
level = "defaults"
only_default = 1

[hosts.old]
address = "127.0.0.1"
port = 2201
groups = ["docker"]
become = true
[hosts.old.vars]
level = "host"

[hosts.new]
address = "10.0.0.2"
known_hosts = "/abs/known_hosts"
groups = ["k8s"]

[groups.docker.vars]
level = "group"
only_group = true
[groups.k8s.vars]
level = "group-k8s"
"#;

#[test]
fn precedence_host_over_group_over_defaults() {
    let inv = parse(GOOD, &[]).unwrap();
    let old = &inv.hosts["old"];
    assert_eq!(old.vars["level"], "host");
    assert_eq!(old.vars["only_group"], true);
    assert_eq!(old.vars["only_default"], 1);
    assert_eq!(inv.hosts["new"].vars["level"], "group-k8s");
    assert_eq!(old.vars["inventory_hostname"], "old");
}

#[test]
fn connect_spec_resolves_paths_and_defaults() {
    let inv = parse(GOOD, &[]).unwrap();
    let old = &inv.hosts["old"].connect;
    assert_eq!(old.port, Some(2201));
    assert_eq!(old.user.as_deref(), Some("root"));
    assert_eq!(old.identity_files, vec![PathBuf::from("/inv/keys/id")]);
    assert_eq!(old.become_.as_ref().map(|b| b.user.as_str()), Some("root"));
    let new = &inv.hosts["new"].connect;
    assert_eq!(new.known_hosts, Some(PathBuf::from("/abs/known_hosts")));
    assert!(new.become_.is_none());
    let journal = inv.default_journal_path(Path::new("/pb/migrate.toml"));
    assert_eq!(journal.parent(), Some(Path::new("/inv/.ferry")));
    let name = journal.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with("migrate-") && name.ends_with(".journal.json"),
        "{name}"
    );
    // A playbook of the same name elsewhere has a journal of its own.
    assert_ne!(
        journal,
        inv.default_journal_path(Path::new("/other/migrate.toml"))
    );
    assert_eq!(
        inv.legacy_journal_path(Path::new("/pb/migrate.toml")),
        PathBuf::from("/inv/.ferry/migrate.journal.json")
    );
}

#[test]
fn keepalive_probes_default_on_and_follow_openssh_names() {
    let inv = parse(
        r#"
[defaults]
server_alive_interval = 2
[hosts.a]
[hosts.b]
server_alive_interval = 0
server_alive_count_max = 5
[hosts.c]
server_alive_count_max = 1
"#,
        &[],
    )
    .unwrap();
    let alive = |h: &str| inv.hosts[h].connect.server_alive;
    assert_eq!(alive("a").interval, Some(Duration::from_secs(2)));
    assert_eq!(alive("a").count_max, 3);
    // 0 turns the probes off, as ServerAliveInterval 0 does.
    assert_eq!(alive("b").interval, None);
    assert_eq!(alive("b").count_max, 5);
    assert_eq!(alive("c").count_max, 1);
    let plain = parse("[hosts.d]\n", &[]).unwrap();
    assert_eq!(
        plain.hosts["d"].connect.server_alive,
        crate::transport::ServerAlive::default()
    );
    assert_eq!(
        plain.hosts["d"].connect.server_alive.interval,
        Some(Duration::from_secs(15))
    );
}

#[test]
fn select_hosts_groups_and_all() {
    let inv = parse(GOOD, &[]).unwrap();
    assert_eq!(inv.select("all").unwrap(), vec!["new", "old"]);
    assert_eq!(inv.select("docker").unwrap(), vec!["old"]);
    assert_eq!(inv.select("new,docker").unwrap(), vec!["new", "old"]);
    assert_eq!(inv.select("nope").unwrap_err().0, "nope");
}

#[test]
fn patterns_glob_intersect_and_exclude_as_ansible() {
    let inv = parse(
        r#"
[hosts.web1]
groups = ["web", "prod"]
[hosts.web2]
groups = ["web", "prod"]
[hosts.web3]
groups = ["web"]
[hosts.db1]
groups = ["db", "prod"]
[groups.empty]
"#,
        &[],
    )
    .unwrap();
    let sel = |p: &str| inv.select(p).unwrap();
    assert_eq!(sel("web*"), vec!["web1", "web2", "web3"]);
    assert_eq!(sel("web?:db1"), vec!["db1", "web1", "web2", "web3"]);
    assert_eq!(sel("web:&prod"), vec!["web1", "web2"]);
    assert_eq!(sel("web:!web3"), vec!["web1", "web2"]);
    assert_eq!(sel("web*:&prod:!web2"), vec!["web1"]);
    // Only exclusions: from all hosts.
    assert_eq!(sel("!web"), vec!["db1"]);
    assert_eq!(sel("*"), vec!["db1", "web1", "web2", "web3"]);
    assert_eq!(sel("web[12]"), vec!["web1", "web2"]);
    // A glob of an empty group names it: nothing selected, no error.
    assert!(sel("emp*").is_empty());
    // A term that names nothing is an error, wherever it stands.
    assert_eq!(inv.select("web:!nope").unwrap_err().0, "nope");
    assert_eq!(inv.select("cache*").unwrap_err().0, "cache*");
    assert_eq!(inv.select(" : ").unwrap_err().0, "");
}

#[test]
fn unknown_key_is_located() {
    let e = parse("[hosts.a]\naddress = \"x\"\nprot = 22\n", &[]).unwrap_err();
    assert_eq!((e.location.line, e.location.column), (3, 1));
    assert_eq!(e.field.as_deref(), Some("prot"));
    assert!(e.message.contains("unknown field `prot`"), "{}", e.message);
}

#[test]
fn wrong_type_is_located() {
    let e = parse("[hosts.a]\nport = \"22\"\n", &[]).unwrap_err();
    assert_eq!((e.location.line, e.location.column), (2, 8));
    assert_eq!(e.field.as_deref(), Some("port"));
}

/// Every value under a secret var is a secret (numbers, nested tables and arrays),
/// and `{ secret_env = … }` works inside a table too.
#[test]
fn secret_vars_cover_every_value_under_them() {
    let text = "[defaults]\nsecret_vars = [\"pin\"]\n[hosts.a]\nsecret_vars = [\"db\"]\n[hosts.a.vars]\npin = 918273\ndb = { user = \"dbuser-x1\", more = [\"arr-pw-1\", 4455], pw = { secret_env = \"DB_PW\" } }\nplain = 918\n";
    let (inv, secrets) = parse_with_env("inv.toml", text, ("DB_PW", "env-pw-77"));
    assert_eq!(inv.hosts["a"].vars["db"]["pw"], "env-pw-77");
    assert_eq!(
        secrets.mask("918273 dbuser-x1 arr-pw-1 4455 env-pw-77 918"),
        "******** ******** ******** ******** ******** 918"
    );
    let names: Vec<_> = inv.hosts["a"].secret_vars.iter().cloned().collect();
    assert_eq!(names, ["db", "pin"]);
}

#[test]
fn secret_env_and_secret_vars_are_registered() {
    let text = "[hosts.a]\nsecret_vars = [\"pw2\"]\n[hosts.a.vars]\npw = { secret_env = \"DB_PW\" }\npw2 = \"hunter22\"\n";
    let (inv, secrets) = parse_with_env("i.toml", text, ("DB_PW", "sup3rsecret"));
    assert_eq!(inv.hosts["a"].vars["pw"], "sup3rsecret");
    assert_eq!(secrets.mask("sup3rsecret hunter22"), "******** ********");
}

#[test]
fn missing_env_is_an_error_at_its_key() {
    let e = parse("[hosts.a]\n\npassword_env = \"NOPE_X\"\n", &[]).unwrap_err();
    assert_eq!((e.location.line, e.location.column), (3, 16));
    assert_eq!(e.field.as_deref(), Some("password_env"));
    assert!(e.message.contains("NOPE_X"));
}

/// Parse `text` as inventory `name`, with one environment variable set; the secrets it
/// registered come with it.
fn parse_with_env(name: &str, text: &str, (var, value): (&str, &str)) -> (Inventory, Secrets) {
    let env: BTreeMap<String, String> = [(var.to_string(), value.to_string())].into();
    let secrets = Secrets::new();
    let inv = Inventory::parse(
        &SourceFile::new(name, text),
        &|n| env.get(n).cloned(),
        &secrets,
    )
    .unwrap();
    (inv, secrets)
}
