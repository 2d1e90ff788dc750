use super::psql::{drop_owner_statements, external_psql};
use super::*;

#[test]
fn external_load_drops_owner_statements_but_not_copy_data() {
    // The real sed, on a dump shaped like pg_dump's (and a COPY row that looks like
    // an ownership statement, which must survive).
    let dump = "SET client_encoding = 'UTF8';\n\
            CREATE TABLE public.t (\n    id integer,\n    s text\n);\n\
            ALTER TABLE public.t OWNER TO postgres;\n\
            ALTER SEQUENCE public.t_id_seq OWNER TO postgres;\n\
            COPY public.t (id, s) FROM stdin;\n\
            ALTER TABLE x OWNER TO y;\n\
            1\tALTER TABLE public.t OWNER TO postgres;\n\
            \\.\n\
            ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY (id);\n";
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(drop_owner_statements().to_shell())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sh");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(dump.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    // Only the two ownership statements outside the COPY block are gone.
    let expected = "SET client_encoding = 'UTF8';\n\
            CREATE TABLE public.t (\n    id integer,\n    s text\n);\n\
            COPY public.t (id, s) FROM stdin;\n\
            ALTER TABLE x OWNER TO y;\n\
            1\tALTER TABLE public.t OWNER TO postgres;\n\
            \\.\n\
            ALTER TABLE ONLY public.t\n    ADD CONSTRAINT t_pkey PRIMARY KEY (id);\n";
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);
    let load = external_load("db", 5432, "packagist", "packagist_db").to_shell();
    assert!(
        load.contains("| psql -X -v ON_ERROR_STOP=1 -h db -p 5432"),
        "{load}"
    );
}

fn in_cluster() -> Target {
    Target::InCluster {
        namespace: "default".into(),
        statefulset: "postgres".into(),
        pod: "postgres-0".into(),
        container: None,
        pvc: "postgres-data-postgres-0".into(),
        database: "packagist_db".into(),
        user: "postgres".into(),
    }
}

fn fp(rows: u64) -> PgFingerprint {
    PgFingerprint::parse(&format!("public.t|{rows}|abc")).unwrap()
}

fn facts(current: Option<PgFingerprint>) -> PgRestoreFacts {
    PgRestoreFacts {
        target: in_cluster(),
        source: Some(fp(3)),
        current,
        guard: None,
        source_pending: false,
        interrupted: false,
        password: None,
        node_copy: None,
    }
}

#[test]
fn interrupted_restore_is_done_again_even_when_it_looks_complete() {
    // A dump cut after its COPYs leaves every row in place: the fingerprints may
    // match, but the journal says the attempt was never proven.
    let mut f = facts(Some(fp(3)));
    f.interrupted = true;
    let c = decide(&f).unwrap();
    assert_eq!(c.len(), 2, "{c:?}");
    assert!(
        c[1].describe()
            .contains("again: the last restore was interrupted"),
        "{}",
        c[1].describe()
    );
    // A completed migration is still never touched.
    f.guard = Some("done".into());
    assert!(decide(&f).unwrap().is_empty());
}

#[test]
fn differing_target_is_recreated_then_loaded() {
    let c = decide(&facts(Some(fp(0)))).unwrap();
    assert_eq!(c.len(), 2);
    assert_eq!(
        c[0].commands(),
        vec![
            "kubectl -n default scale statefulset/postgres --replicas=0",
            "kubectl -n default delete pvc postgres-data-postgres-0",
            "kubectl -n default scale statefulset/postgres --replicas=1"
        ]
    );
    assert!(c[1].commands()[0].contains("exec -i postgres-0 -- psql -v ON_ERROR_STOP=1"));
    // Unreadable target (pod down after a killed run): restore too.
    assert_eq!(decide(&facts(None)).unwrap().len(), 2);
}

#[test]
fn equal_fingerprint_is_ok_and_completed_migration_is_left_alone() {
    assert!(decide(&facts(Some(fp(3)))).unwrap().is_empty());
    let mut f = facts(Some(fp(0)));
    f.guard = Some("done".into());
    assert!(decide(&f).unwrap().is_empty());
}

#[test]
fn no_source_fingerprint_is_an_error() {
    let mut f = facts(None);
    f.source = None;
    assert!(decide(&f).is_err());
    // In check mode before the backup ran, the restore would happen.
    f.source_pending = true;
    assert_eq!(decide(&f).unwrap().len(), 2);
}

#[test]
fn external_password_goes_on_stdin_not_argv() {
    let c = external_psql("db", 5432, "u", "d", &["-q"]);
    let shown = c.to_shell();
    assert!(shown.starts_with("sh -c "));
    assert!(shown.contains("read -r PGPASSWORD"));
    assert!(!shown.contains("PGPASSWORD="));
}

/// With the dump's copy on the node the load is the node's kubectl reading that copy;
/// without it, the dump streamed through the laptop.
#[test]
fn a_node_copy_is_loaded_by_the_node_kubectl() {
    let mut f = facts(Some(fp(0)));
    let c = decide(&f).unwrap();
    assert!(
        c[1].commands()[0].ends_with(" < dump"),
        "{:?}",
        c[1].commands()
    );
    f.node_copy = Some(NodeFile {
        path: "/var/tmp/ferry/packagist_db.sql".into(),
        kubeconfig: "/etc/kubernetes/admin.conf".into(),
    });
    let c = decide(&f).unwrap();
    let cmd = &c[1].commands()[0];
    assert!(
        cmd.starts_with("on the node: kubectl --kubeconfig /etc/kubernetes/admin.conf -n default exec -i postgres-0"),
        "{cmd}"
    );
    assert!(cmd.ends_with(" < /var/tmp/ferry/packagist_db.sql"), "{cmd}");
}

/// The node's load dies with ferry: the real `sh` runs the wrapper; a command still
/// running when the wrapper's stdin closes is killed, one that ends gives its status
/// and the wrapper reports how far the file was read.
#[test]
fn the_node_load_stops_when_its_stdin_closes_and_reports_progress() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dump.sql");
    std::fs::write(&file, vec![b'x'; 4096]).unwrap();
    let node = NodeFile {
        path: file.to_str().unwrap().into(),
        kubeconfig: "/k".into(),
    };
    // `kubectl` here is a stand-in on PATH: reads 10 bytes, sleeps, exits 7.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let fake = bin.join("kubectl");
    std::fs::write(
        &fake,
        "#!/bin/sh\nhead -c 10 >/dev/null\nsleep 1.2\nexit 7\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cmd = node_exec_from_file(&node, "default", "postgres-0", Some("postgres"), &[]);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |stdin: std::process::Stdio| {
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd.to_shell())
            .env("PATH", &path)
            .stdin(stdin)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.wait_with_output().unwrap()
    };
    // stdin held open (a pipe whose writer this test keeps): the command's own status.
    let (reader, writer) = std::io::pipe().unwrap();
    let out = run(reader.into());
    drop(writer);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("progress "), "{text}");
    // stdin at EOF at once (ferry gone): killed (SIGTERM), not its own exit 7.
    let out = run(std::process::Stdio::null());
    assert_eq!(out.status.code(), Some(143), "{out:?}");
}
