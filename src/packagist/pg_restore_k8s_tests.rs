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
