//! psql for `pg_restore_k8s`: the commands that load the dump into the target (in the
//! pod or on an external server) and the read of the target's fingerprint.

use crate::command::Cmd;
use crate::fingerprint::{PgFingerprint, PG_FINGERPRINT_SQL};
use crate::module::kube::{pod_exec, K8sArgs};
use crate::module::units::argv;
use crate::module::{HostReader, ModuleError};

use super::{PgRestoreK8s, Target};

/// psql argv for an in-cluster target.
pub(super) fn pod_psql(database: &str, user: &str, extra: &[&str]) -> Vec<String> {
    let mut v = argv(&[
        "psql",
        "-X",
        "-v",
        "ON_ERROR_STOP=1",
        "-U",
        user,
        "-d",
        database,
    ]);
    v.extend(argv(extra));
    v
}

/// Shell command for psql against an external server, reading the password as the
/// first line of stdin (so it is never in argv or the environment of other commands).
pub(super) fn external_psql(
    host: &str,
    port: u16,
    user: &str,
    database: &str,
    extra: &[&str],
) -> Cmd {
    let psql = Cmd::new("psql")
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-h", host, "-p"])
        .arg(port.to_string())
        .args(["-U", user, "-d", database])
        .args(extra.iter().copied());
    let script = Cmd::new("read")
        .arg("-r")
        .arg("PGPASSWORD")
        .and(Cmd::new("export").arg("PGPASSWORD"))
        .and(Cmd::new("exec").args(shlex_words(&psql)));
    Cmd::new("sh").arg("-c").arg_cmd(&script)
}

/// `sed` dropping the dump's `ALTER ... OWNER TO ...;` statements (outside COPY data):
/// the objects of an external database belong to the user ferry restores as, who is
/// usually not a member of the source's owner role (often not even existing there).
/// A mangled stream cannot pass unnoticed: the restore is proven by fingerprint.
pub(super) fn drop_owner_statements() -> Cmd {
    Cmd::new("sed")
        .arg("-e")
        .arg(r"/^COPY .* FROM stdin;$/,/^\\\.$/b")
        .arg("-e")
        .arg(r"/^ALTER .* OWNER TO [^ ]*;$/d")
}

/// Shell command loading a dump (on stdin, after the password line) into an external
/// server, without the dump's ownership statements.
pub(super) fn external_load(host: &str, port: u16, user: &str, database: &str) -> Cmd {
    let psql = Cmd::new("psql")
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-h", host, "-p"])
        .arg(port.to_string())
        .args(["-U", user, "-d", database, "-q", "-o", "/dev/null"]);
    let script = Cmd::new("read")
        .arg("-r")
        .arg("PGPASSWORD")
        .and(Cmd::new("export").arg("PGPASSWORD"))
        .and(drop_owner_statements().pipe(psql));
    Cmd::new("sh").arg("-c").arg_cmd(&script)
}

pub(super) fn shlex_words(c: &Cmd) -> Vec<String> {
    shlex::split(&c.to_shell()).unwrap_or_default()
}

pub(super) async fn fingerprint(
    ctx: &HostReader,
    args: &PgRestoreK8s,
    target: &Target,
    password: Option<&str>,
) -> Result<Option<PgFingerprint>, ModuleError> {
    let out = match target {
        Target::InCluster {
            pod,
            container,
            database,
            user,
            ..
        } => {
            let cluster = args.k8s().cluster(ctx).await?;
            let argv = pod_psql(database, user, &["-At", "-f", "-"]);
            match pod_exec(
                &cluster,
                pod,
                container.as_deref(),
                &argv,
                Some(PG_FINGERPRINT_SQL.as_bytes()),
            )
            .await
            {
                Ok(out) => String::from_utf8_lossy(&out).into_owned(),
                // Pod down or database not there yet: nothing restored.
                Err(e) => {
                    tracing::debug!("target database not readable: {e}");
                    return Ok(None);
                }
            }
        }
        Target::External {
            host,
            port,
            user,
            database,
        } => {
            let cmd = external_psql(host, *port, user, database, &["-At", "-f", "-"]);
            let mut input = password.unwrap_or("").as_bytes().to_vec();
            input.push(b'\n');
            input.extend_from_slice(PG_FINGERPRINT_SQL.as_bytes());
            let out = ctx.transport.exec(&cmd, Some(&input)).await?;
            if !out.success() {
                return Ok(None);
            }
            out.stdout_str()
        }
    };
    Ok(PgFingerprint::parse(&out).ok())
}
