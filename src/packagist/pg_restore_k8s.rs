//! `pg_restore_k8s`: restore the PostgreSQL dump into the new cluster's statefulset (or
//! into an external PostgreSQL), streaming it from the old host, and prove it: the
//! target's fingerprint must equal the source's.
//!
//! ```toml
//! [task.pg_restore_k8s]
//! artifact = "packagist_db"
//! statefulset = "postgres"
//! pvc = "postgres-data-postgres-0"
//! database = "packagist_db"
//! user = "postgres"
//! # external = { host = "db.internal", port = 5432, user = "packagist", database = "packagist_db", password_var = "external_pg_password" }
//! ```
//!
//! With `node_copy` (the artifact a `transfer` task made of the dump on this host, the
//! node) and the cluster reached through the node's kubeconfig, the node's kubectl
//! feeds that copy into psql (`kubectl exec -i … < copy`): nothing of the dump passes
//! the laptop here. Without it (or when the copy is not the dump's bytes) the dump is
//! streamed from the old host through the laptop, as before.
//!
//! The destructive part (scale to 0, delete the PVC and wait until it and its PV are
//! gone, scale to 1) runs only when the target's fingerprint differs from the source's,
//! only with `--yes` or a confirmation naming what is destroyed, and never once the
//! migration completed on the cluster (unless `--overwrite postgres`).

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::fingerprint::PgFingerprint;
use crate::k8s::{kubectl, kubectl_exec, PodsWanted, WorkloadKind};
use crate::module::artifact::{artifact_fingerprint, find_artifact};
use crate::module::artifact_stream::stream_artifact;
use crate::module::kube::{k8s_args, node_copy, node_exec_from_file, pod_exec, K8sArgs, NodeFile};
use crate::module::units::Seconds;
use crate::module::{
    Applied, ArgCheck, ArgError, Change, HostReader, Module, ModuleError, Probe, TaskCtx,
};
use crate::packagist::attempt::{attempt_proven, attempt_started, interrupted_attempt};
use crate::packagist::completed::{completed_guard, completed_marker};
use crate::playbook::template::{Template, Vars};

fn default_artifact() -> String {
    "packagist_db".into()
}

/// An external PostgreSQL instead of the in-cluster statefulset. psql runs on this
/// task's host; the password (from a secret var) is sent on psql's stdin, never argv.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalPg {
    pub host: Template,
    pub port: Option<u16>,
    pub user: Template,
    pub database: Template,
    /// Name of the (secret) var holding the password.
    pub password_var: Option<String>,
}

k8s_args! {
    pub struct PgRestoreK8s {
        #[serde(default = "default_artifact")]
        pub artifact: String,
        /// The artifact a `transfer` task made of the dump on this host: loaded from
        /// there by the node's kubectl when it holds the dump's bytes.
        pub node_copy: Option<String>,
        pub statefulset: Option<Template>,
        pub pvc: Option<Template>,
        pub container: Option<Template>,
        pub database: Option<Template>,
        pub user: Option<Template>,
        pub external: Option<ExternalPg>,
        /// Seconds for each wait (pods gone, PVC gone, pod ready).
        pub timeout: Option<Seconds>,
    }
}

/// Where the dump goes, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Target {
    InCluster {
        namespace: String,
        statefulset: String,
        pod: String,
        container: Option<String>,
        pvc: String,
        database: String,
        user: String,
    },
    External {
        host: String,
        port: u16,
        user: String,
        database: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PgRestoreFacts {
    pub target: Target,
    pub source: Option<PgFingerprint>,
    /// `None` when the database cannot be read (pod down, database missing).
    pub current: Option<PgFingerprint>,
    pub guard: Option<String>,
    /// Check mode before the backup ran: the source will exist in a real run.
    pub source_pending: bool,
    /// The journal says the last restore started and was never proven (see
    /// [`interrupted_attempt`]): restore again even if the fingerprints match.
    pub interrupted: bool,
    #[serde(skip)]
    pub password: Option<String>,
    /// The dump's copy on this node, loaded by the node's kubectl (in-cluster only).
    pub node_copy: Option<NodeFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum PgRestoreChange {
    /// Wipe the in-cluster database: scale to 0, delete the PVC (and so its PV), scale to 1.
    Recreate { pvc: String, kubectl: Vec<String> },
    /// Stream the dump into psql. `retry`: the last restore was interrupted.
    Load {
        into: String,
        command: String,
        retry: bool,
    },
}

impl Change for PgRestoreChange {
    fn describe(&self) -> String {
        match self {
            PgRestoreChange::Recreate { pvc, .. } => {
                format!("recreate the database volume (delete PVC {pvc} and its data)")
            }
            PgRestoreChange::Load {
                into, retry: true, ..
            } => format!(
                "load the dump into {into} again: the last restore was interrupted before it was proven"
            ),
            PgRestoreChange::Load { into, .. } => format!("load the dump into {into}"),
        }
    }
    fn commands(&self) -> Vec<String> {
        match self {
            PgRestoreChange::Recreate { kubectl, .. } => kubectl.clone(),
            PgRestoreChange::Load { command, .. } => vec![command.clone()],
        }
    }
}

impl PgRestoreK8s {
    fn timeout(&self) -> Duration {
        self.timeout
            .map_or(Duration::from_secs(300), Seconds::duration)
    }

    fn resolve(&self, ctx: &HostReader, namespace: String) -> Result<Target, ModuleError> {
        let or = |t: &Option<Template>, d: &str| -> Result<String, ModuleError> {
            match t {
                Some(t) => ctx.render_operand(t),
                None => Ok(d.to_string()),
            }
        };
        if let Some(x) = self.external.clone().or(external_from_var(&ctx.vars)?) {
            return Ok(Target::External {
                host: ctx.render_operand(&x.host)?,
                port: x.port.unwrap_or(5432),
                user: ctx.render_operand(&x.user)?,
                database: ctx.render_operand(&x.database)?,
            });
        }
        let statefulset = or(&self.statefulset, "postgres")?;
        Ok(Target::InCluster {
            namespace,
            pod: format!("{statefulset}-0"),
            pvc: or(&self.pvc, &format!("postgres-data-{statefulset}-0"))?,
            // Named on every exec: the API server refuses an exec without one into a pod
            // with several containers (a sidecar).
            container: Some(ctx.render_or(&self.container, "postgres")?),
            statefulset,
            database: or(&self.database, "packagist_db")?,
            user: or(&self.user, "postgres")?,
        })
    }
}

/// Host var: the external PostgreSQL (see [`external_from_var`]).
pub const EXTERNAL_POSTGRES: crate::module::VarDecl =
    crate::module::VarDecl::new("external_postgres", crate::module::VarKind::Object);

/// The external PostgreSQL named by the inventory var `external_postgres`
/// (`{ host, port, user, database, password_var }`), so one playbook serves both setups.
/// Needs only the vars: checked before any host is contacted.
fn external_from_var(vars: &Vars) -> Result<Option<ExternalPg>, ModuleError> {
    let Some(v) = EXTERNAL_POSTGRES.get(vars)? else {
        return Ok(None);
    };
    let field = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_string);
    let required = |k: &str| {
        field(k).ok_or_else(|| {
            ModuleError::Precondition(format!("var external_postgres needs a string `{k}`"))
        })
    };
    Ok(Some(ExternalPg {
        host: Template::new(required("host")?),
        port: v.get("port").and_then(|p| p.as_u64()).map(|p| p as u16),
        user: Template::new(required("user")?),
        database: Template::new(required("database")?),
        password_var: field("password_var"),
    }))
}

#[async_trait]
impl Module for PgRestoreK8s {
    const VARS: crate::module::VarLists = &[
        crate::module::kube::VARS,
        crate::module::artifact_stream::VARS,
        &[&EXTERNAL_POSTGRES],
    ];
    type Facts = PgRestoreFacts;
    type Change = PgRestoreChange;

    /// The completed-migration guard's reason, when it leaves the store alone.
    fn notes(&self, f: &PgRestoreFacts) -> Vec<String> {
        f.guard.iter().cloned().collect()
    }

    fn check_args(&self, at: &ArgCheck<'_>) -> Result<(), ArgError> {
        let from_var = |e: ModuleError| ArgError {
            field: None,
            template: None,
            message: format!("{e} (host `{}`)", at.host),
        };
        let external = match &self.external {
            Some(x) => x.clone(),
            None => match external_from_var(at.vars).map_err(from_var)? {
                Some(x) => {
                    // Written in the var, not in the playbook: the template pass has
                    // not seen these.
                    for t in [&x.host, &x.user, &x.database] {
                        at.renderer
                            .render_operand(t, at.vars)
                            .map_err(|e| from_var(e.into()))?;
                    }
                    x
                }
                None => return Ok(()),
            },
        };
        match &external.password_var {
            Some(var) if at.vars.get(var).and_then(|v| v.as_str()).is_none() => {
                Err(from_var(ModuleError::Precondition(format!(
                    "var `{var}` (the external PostgreSQL password) is not set"
                ))))
            }
            _ => Ok(()),
        }
    }

    async fn facts(&self, probe: &Probe<'_>) -> Result<PgRestoreFacts, ModuleError> {
        let external = self.external.clone().or(external_from_var(&probe.vars)?);
        let password = match external.as_ref().and_then(|x| x.password_var.as_ref()) {
            Some(var) => Some(
                probe
                    .var(var)
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| {
                        ModuleError::Precondition(format!(
                            "var `{var}` (the external PostgreSQL password) is not set"
                        ))
                    })?
                    .to_string(),
            ),
            None => None,
        };
        // The completion marker lives on the cluster in both setups: an external
        // database that went live must be protected just the same.
        let cluster = self.k8s().cluster(probe).await?;
        let marker = completed_marker(&cluster).await?;
        let (namespace, guard) = (
            cluster.namespace().to_string(),
            completed_guard(probe, &marker, "postgres"),
        );
        let target = self.resolve(probe, namespace)?;
        let current = if guard.is_none() {
            fingerprint(probe, self, &target, password.as_deref()).await?
        } else {
            None
        };
        let source: Option<PgFingerprint> = artifact_fingerprint(probe, &self.artifact, "pg");
        let node_copy = match &target {
            Target::InCluster { .. } => node_copy(
                probe,
                &self.k8s(),
                self.node_copy.as_deref(),
                find_artifact(probe, &self.artifact).ok().as_ref(),
            )?,
            Target::External { .. } => None,
        };
        Ok(PgRestoreFacts {
            node_copy,
            target,
            source_pending: source.is_none() && probe.predicted_artifact(&self.artifact),
            source,
            current,
            guard,
            interrupted: interrupted_attempt(probe),
            password,
        })
    }

    fn decide(&self, f: &PgRestoreFacts) -> Result<Vec<PgRestoreChange>, ModuleError> {
        decide(f)
    }

    async fn apply(
        &self,
        ctx: &TaskCtx,
        f: &PgRestoreFacts,
        changes: &[PgRestoreChange],
    ) -> Result<Applied, ModuleError> {
        let artifact = find_artifact(ctx, &self.artifact)?;
        // Ask before anything is touched; then mark the attempt, on disk, once.
        for c in changes {
            if let PgRestoreChange::Recreate { pvc, .. } = c {
                ctx.confirm_destructive(&format!(
                    "delete PVC {pvc} and its volume: every row of the new PostgreSQL is lost"
                ))?;
            }
        }
        attempt_started(ctx)?;
        for c in changes {
            match (c, &f.target) {
                (
                    PgRestoreChange::Recreate { pvc, .. },
                    Target::InCluster {
                        statefulset,
                        pod,
                        container,
                        database,
                        user,
                        ..
                    },
                ) => {
                    let cluster = self.k8s().cluster(ctx).await?;
                    let (_, pods) = cluster
                        .workload(WorkloadKind::StatefulSet, statefulset)
                        .await?;
                    cluster
                        .scale(WorkloadKind::StatefulSet, statefulset, 0)
                        .await?;
                    cluster
                        .wait_pods(&pods, PodsWanted::Gone, self.timeout())
                        .await?;
                    cluster.delete_pvc_and_wait(pvc, self.timeout()).await?;
                    cluster
                        .scale(WorkloadKind::StatefulSet, statefulset, 1)
                        .await?;
                    cluster
                        .wait_pods(&pods, PodsWanted::Ready(1), self.timeout())
                        .await?;
                    wait_accepting(
                        &cluster,
                        pod,
                        container.as_deref(),
                        database,
                        user,
                        self.timeout(),
                    )
                    .await?;
                }
                (
                    PgRestoreChange::Load { .. },
                    Target::InCluster {
                        pod,
                        container,
                        database,
                        user,
                        ..
                    },
                ) => {
                    let argv = pod_psql(database, user, &["-q", "-o", "/dev/null"]);
                    if let (Some(node), Target::InCluster { namespace, .. }) =
                        (&f.node_copy, &f.target)
                    {
                        load_on_node(ctx, &artifact, node, namespace, pod, container, &argv)
                            .await?;
                        continue;
                    }
                    let cluster = self.k8s().cluster(ctx).await?;
                    let mut proc = cluster.exec(pod, container.as_deref(), &argv, true).await?;
                    let mut stdin = proc
                        .stdin()
                        .ok_or_else(|| ModuleError::Internal("exec without stdin".into()))?;
                    let feed =
                        stream_artifact(ctx, &artifact, 0, sha2::Sha256::default(), &mut stdin);
                    let (pumped, (_, err)) = tokio::join!(feed, crate::k8s::drain(&mut proc));
                    crate::k8s::finish(pod, proc, &err).await?;
                    check_sha(&artifact, &pumped?)?;
                }
                (
                    PgRestoreChange::Load { .. },
                    Target::External {
                        host,
                        port,
                        user,
                        database,
                    },
                ) => {
                    let cmd = external_load(host, *port, user, database);
                    let mut stream = ctx.transport.exec_stream(&cmd).await?;
                    let mut line = f.password.clone().unwrap_or_default().into_bytes();
                    line.push(b'\n');
                    stream
                        .stdin
                        .write_all(&line)
                        .await
                        .map_err(|source| ModuleError::Io {
                            what: format!("writing to psql on {host}"),
                            source,
                        })?;
                    let mut stdout = stream.stdout;
                    let drain = async move {
                        let mut sink = tokio::io::sink();
                        tokio::io::copy(&mut stdout, &mut sink).await
                    };
                    let feed = stream_artifact(
                        ctx,
                        &artifact,
                        0,
                        sha2::Sha256::default(),
                        &mut stream.stdin,
                    );
                    let (pumped, _) = tokio::join!(feed, drain);
                    let exit = stream.exit.await?;
                    if exit.status != Some(0) {
                        return Err(ModuleError::Remote {
                            what: format!("psql on {host} failed"),
                            detail: ctx
                                .secrets
                                .mask(String::from_utf8_lossy(&exit.stderr).trim()),
                        });
                    }
                    check_sha(&artifact, &pumped?)?;
                }
                (PgRestoreChange::Recreate { .. }, Target::External { .. }) => {
                    return Err(ModuleError::Internal(
                        "no volume to recreate for an external database".into(),
                    ))
                }
            }
        }
        // Prove it.
        let after = fingerprint(ctx, self, &f.target, f.password.as_deref()).await?;
        let Some(after) = after else {
            return Err(ModuleError::Failed(
                "the restored database cannot be read".into(),
            ));
        };
        if let Some(source) = &f.source {
            let diff = after.diff(source);
            if !diff.is_empty() {
                return Err(ModuleError::ProofMismatch {
                    what: "restored database".into(),
                    detail: diff.join("; "),
                });
            }
        }
        ctx.record_fingerprint("pg", serde_json::to_value(&after).unwrap_or_default())?;
        attempt_proven(ctx)?;
        Ok(Applied::changed())
    }
}

/// Load the dump's copy on this node into psql with the node's kubectl, after checking
/// the copy still holds the dump's bytes. The command dies with ferry (see
/// [`node_exec_from_file`]).
async fn load_on_node(
    ctx: &TaskCtx,
    artifact: &crate::journal::Artifact,
    node: &NodeFile,
    namespace: &str,
    pod: &str,
    container: &Option<String>,
    argv: &[String],
) -> Result<(), ModuleError> {
    let sum = ctx
        .exec_ok(&crate::command::Cmd::new("sha256sum").arg(node.path.as_str()))
        .await?;
    let sha = sum
        .stdout_str()
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    if sha != artifact.sha256 {
        return Err(ModuleError::Precondition(format!(
            "the dump's copy {} on {} has sha256 {sha}, the dump {}: re-run the transfer",
            node.path, ctx.host, artifact.sha256
        )));
    }
    let cmd = node_exec_from_file(node, namespace, pod, container.as_deref(), argv);
    let stream = ctx.transport.exec_stream(&cmd).await?;
    let mut lines = tokio::io::BufReader::new(stream.stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Some(n) = line
            .strip_prefix("progress ")
            .and_then(|n| n.trim().parse().ok())
        {
            ctx.progress(&artifact.name, n, Some(artifact.size.max(n)));
        }
    }
    // Held open until the command ended: its EOF would stop the load.
    let exit = stream.exit.await?;
    drop(stream.stdin);
    if exit.status != Some(0) {
        return Err(ModuleError::Remote {
            what: format!(
                "loading {} into {pod} with the node's kubectl on {} failed (exit {})",
                node.path,
                ctx.host,
                exit.status.map_or("unknown".into(), |c| c.to_string())
            ),
            detail: ctx
                .secrets
                .mask(String::from_utf8_lossy(&exit.stderr).trim()),
        });
    }
    Ok(())
}

fn check_sha(
    artifact: &crate::journal::Artifact,
    pumped: &crate::stream::Pumped,
) -> Result<(), ModuleError> {
    if pumped.sha256 != artifact.sha256 || pumped.bytes != artifact.size {
        return Err(ModuleError::Precondition(format!(
            "the dump read from {} on {} is not the one recorded (sha256 {} / {} bytes, recorded {} / {})",
            artifact.path, artifact.host, pumped.sha256, pumped.bytes, artifact.sha256, artifact.size
        )));
    }
    Ok(())
}

/// After the pod is ready, wait until the database itself answers (a fresh volume is
/// initialised first).
async fn wait_accepting(
    cluster: &crate::k8s::Cluster,
    pod: &str,
    container: Option<&str>,
    database: &str,
    user: &str,
    timeout: Duration,
) -> Result<(), ModuleError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let probe = pod_psql(database, user, &["-At", "-c", "select 1"]);
    loop {
        if pod_exec(cluster, pod, container, &probe, None)
            .await
            .is_ok()
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ModuleError::Timeout {
                what: format!("PostgreSQL in {pod} did not accept connections to {database}"),
                secs: timeout.as_secs(),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Pure: restore unless the target already holds exactly the source's data.
pub fn decide(f: &PgRestoreFacts) -> Result<Vec<PgRestoreChange>, ModuleError> {
    if f.guard.is_some() {
        return Ok(Vec::new());
    }
    match &f.source {
        Some(source) if f.current.as_ref() == Some(source) && !f.interrupted => {
            return Ok(Vec::new())
        }
        Some(_) => {}
        None if f.source_pending => {}
        None => {
            return Err(ModuleError::Precondition(
                "no source fingerprint: the pg_dump task on the old host has not run (or its journal is elsewhere)".into(),
            ))
        }
    }
    Ok(match &f.target {
        Target::InCluster {
            namespace,
            statefulset,
            pod,
            pvc,
            container,
            database,
            user,
        } => {
            let sts = format!("statefulset/{statefulset}");
            let load = kubectl_exec(
                namespace,
                pod,
                container.as_deref(),
                true,
                &["psql", "-v", "ON_ERROR_STOP=1", "-U", user, "-d", database],
            );
            vec![
                PgRestoreChange::Recreate {
                    pvc: pvc.clone(),
                    kubectl: vec![
                        kubectl(namespace, &["scale", &sts, "--replicas=0"]),
                        kubectl(namespace, &["delete", "pvc", pvc]),
                        kubectl(namespace, &["scale", &sts, "--replicas=1"]),
                    ],
                },
                PgRestoreChange::Load {
                    retry: f.interrupted,
                    into: format!("{pod} ({database})"),
                    command: match &f.node_copy {
                        Some(node) => format!(
                            "on the node: {} < {}",
                            load.replacen(
                                "kubectl",
                                &format!("kubectl --kubeconfig {}", node.kubeconfig),
                                1
                            ),
                            node.path
                        ),
                        None => format!("{load} < dump"),
                    },
                },
            ]
        }
        Target::External {
            host,
            port,
            user,
            database,
        } => vec![PgRestoreChange::Load {
            retry: f.interrupted,
            into: format!("{database} on {host}:{port}"),
            command: format!(
                "psql -h {host} -p {port} -U {user} -d {database} -v ON_ERROR_STOP=1 < dump"
            ),
        }],
    })
}

mod psql;
use psql::{external_load, fingerprint, pod_psql};

#[cfg(test)]
#[path = "pg_restore_k8s_tests.rs"]
mod tests;
