//! k8s-sim: a small Kubernetes API server + controllers + kubelet for ferry's testbed.
//! Real kubectl and kube-rs talk to it over TLS; pods are real processes in their own
//! namespaces; PVCs are directories under an OpenEBS-hostpath-like base directory.

mod api;
mod controllers;
mod exec;
mod kubelet;
mod manifests;
mod nsexec;
mod ops;
mod protobuf;
mod resources;
mod select;
mod store;
mod table;
mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::signal::unix::{signal, SignalKind};

use crate::api::Sim;
use crate::ops::Config;

#[derive(Parser, Debug)]
#[command(
    name = "k8s-sim",
    about = "Kubernetes API server simulator for ferry's testbed"
)]
struct Cli {
    /// Address the API server listens on (TLS).
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: String,
    /// Directory of YAML manifests loaded when the state directory is new; repeat it to
    /// overlay a directory on the ones before (same kind/namespace/name: the later wins).
    #[arg(long, required = true)]
    manifests: Vec<PathBuf>,
    /// Where objects, certificates, pod logs and private dirs are kept.
    #[arg(long)]
    state_dir: PathBuf,
    /// Base directory of the hostpath provisioner (PV dir = BASE/pvc-<uid>).
    #[arg(long, default_value = "/var/openebs/local")]
    openebs_base: PathBuf,
    /// Where to write the admin kubeconfig (mode 0440).
    #[arg(long, default_value = "/etc/kubernetes/admin.conf")]
    kubeconfig_out: PathBuf,
    /// Set REDIS_APPENDONLY (yes|no) in every workload that declares it.
    #[arg(long, value_parser = ["yes", "no"])]
    redis_appendonly: Option<String>,
    /// How long a started pod stays Pending before it is Running.
    #[arg(long, default_value_t = 1500)]
    start_delay_ms: u64,
    /// Minimum time a deleted pod is shown Terminating.
    #[arg(long, default_value_t = 500)]
    grace_ms: u64,
    /// The Kubernetes version the API server reports (MAJOR.MINOR). Before 1.30 it
    /// speaks only the v4.channel.k8s.io exec protocol, as older API servers do.
    #[arg(long, env = "K8S_SIM_K8S_VERSION", default_value = "1.33", value_parser = parse_version)]
    k8s_version: (u32, u32),
    /// How long the provisioner's cleanup of a deleted claim's volume takes (OpenEBS runs
    /// a helper pod; up to 120 s on a real node).
    #[arg(long, default_value_t = 3000)]
    pv_cleanup_ms: u64,
    /// The node's name (kubernetes.io/hostname, PV node affinity, certificate SAN).
    #[arg(long, default_value = "ferry-new")]
    node_name: String,
    /// The directory the node's /opt/ferry-src hostPath volumes really point to.
    #[arg(long, env = "K8S_SIM_SRC_ROOT", default_value = "/opt/ferry-src")]
    src_root: PathBuf,
}

fn parse_version(text: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{text:?} is not MAJOR.MINOR, e.g. 1.29");
    let (major, minor) = text.split_once('.').ok_or_else(bad)?;
    Ok((
        major.parse().map_err(|_| bad())?,
        minor.parse().map_err(|_| bad())?,
    ))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();

    std::fs::create_dir_all(&cli.state_dir)
        .with_context(|| format!("creating {}", cli.state_dir.display()))?;
    std::fs::create_dir_all(&cli.openebs_base)
        .with_context(|| format!("creating {}", cli.openebs_base.display()))?;
    let state_dir = std::fs::canonicalize(&cli.state_dir)?;
    let openebs_base = std::fs::canonicalize(&cli.openebs_base)?;
    let config = Config {
        listen: cli.listen.clone(),
        state_dir: state_dir.clone(),
        openebs_base,
        node_name: cli.node_name.clone(),
        start_delay: Duration::from_millis(cli.start_delay_ms),
        grace: Duration::from_millis(cli.grace_ms),
        pv_cleanup: Duration::from_millis(cli.pv_cleanup_ms),
        version: cli.k8s_version,
        src_root: cli.src_root.clone(),
    };

    let pki = tls::Pki::load_or_create(&state_dir.join("pki"), &cli.node_name)?;
    let store = store::Store::open(&state_dir)?;
    let fresh = store.is_empty();
    manifests::bootstrap(&store, &config)?;
    if fresh {
        let node_name = config.node_name.clone();
        let loaded = manifests::load_dirs(&store, &cli.manifests, |rt, obj| {
            api::prepare_create(&store, &node_name, rt, obj)
        })?;
        tracing::info!("loaded {loaded} objects from {:?}", cli.manifests);
    } else {
        tracing::info!(
            "restored objects from {}",
            state_dir.join("objects.json").display()
        );
    }
    if let Some(value) = &cli.redis_appendonly {
        manifests::override_redis_appendonly(&store, value)?;
    }

    let kubelet = kubelet::Kubelet::new(config.clone(), store.clone());
    tokio::spawn(kubelet.clone().run());
    tokio::spawn(
        controllers::Controllers {
            store: store.clone(),
            config: config.clone(),
            cleanups: Default::default(),
        }
        .run(),
    );
    let persist_store = store.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            if let Err(error) = persist_store.save_if_dirty() {
                tracing::warn!("saving state: {error:#}");
            }
        }
    });

    let listener = tokio::net::TcpListener::bind(&cli.listen)
        .await
        .with_context(|| format!("listening on {}", cli.listen))?;
    let acceptor = tokio_rustls::TlsAcceptor::from(pki.server_config()?);
    tls::write_kubeconfig(
        &cli.kubeconfig_out,
        &pki.kubeconfig(&format!("https://{}", cli.listen)),
    )?;
    tracing::info!(
        "serving the Kubernetes API on https://{} (kubeconfig {})",
        cli.listen,
        cli.kubeconfig_out.display()
    );

    let sim = Arc::new(Sim {
        config,
        store: store.clone(),
        kubelet: kubelet.clone(),
    });
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, _peer) = match accepted {
                    Ok(conn) => conn,
                    Err(error) => {
                        tracing::warn!("accept: {error}");
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let sim = sim.clone();
                tokio::spawn(async move {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(error) => {
                            tracing::debug!("TLS handshake: {error}");
                            return;
                        }
                    };
                    let service = service_fn(move |req| api::handle(sim.clone(), req));
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    if let Err(error) = builder.serve_connection_with_upgrades(TokioIo::new(tls), service).await {
                        tracing::debug!("connection: {error}");
                    }
                });
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    tracing::info!("stopping: terminating pods");
    kubelet.shutdown(Duration::from_secs(10)).await;
    store.save_if_dirty()?;
    tracing::info!("stopped");
    Ok(())
}
