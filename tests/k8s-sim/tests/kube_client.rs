//! The simulator as ferry sees it: kube 5 + k8s-openapi 0.29 (list with selectors, watch,
//! the scale subresource, exec with stdin over v5.channel.k8s.io, ConfigMaps, error Status).

mod common;

use common::Sim;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{
    Api, AttachParams, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn client(sim: &Sim) -> Client {
    let kubeconfig = Kubeconfig::read_from(&sim.kubeconfig).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    // Built with the whole workspace, rustls also has aws-lc-rs (ferry's object-store
    // client brings it): name the provider, as ferry does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::try_from(config).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn kube_rs_lists_watches_scales_execs_and_writes_configmaps() {
    let sim = tokio::task::block_in_place(|| {
        let sim = Sim::start(&[]);
        sim.wait_all_ready("default");
        sim
    });
    let client = client(&sim).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");

    // Lists with label and field selectors.
    let workers = pods
        .list(&ListParams::default().labels("app=worker"))
        .await
        .unwrap();
    assert_eq!(workers.items.len(), 1);
    let worker = workers.items[0].metadata.name.clone().unwrap();
    assert!(worker.starts_with("worker-"));
    let named = pods
        .list(&ListParams::default().fields("metadata.name=redis-0"))
        .await
        .unwrap();
    assert_eq!(named.items.len(), 1);
    let running = pods
        .list(&ListParams::default().fields("status.phase=Running"))
        .await
        .unwrap();
    assert_eq!(
        running.items.len(),
        5,
        "postgres-0, redis-0, ui, repo, worker"
    );

    // Scale subresource + watch from the list's resourceVersion until the pod is deleted.
    let rv = workers.metadata.resource_version.clone().unwrap();
    let mut events = pods
        .watch(
            &WatchParams::default().labels("app=worker").timeout(60),
            &rv,
        )
        .await
        .unwrap()
        .boxed();
    deployments
        .patch_scale(
            "worker",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await
        .unwrap();
    let mut saw_terminating = false;
    loop {
        match events.try_next().await.unwrap() {
            Some(WatchEvent::Modified(pod)) if pod.metadata.deletion_timestamp.is_some() => {
                saw_terminating = true
            }
            Some(WatchEvent::Deleted(pod))
                if pod.metadata.name.as_deref() == Some(worker.as_str()) =>
            {
                break
            }
            Some(WatchEvent::Error(e)) => panic!("watch error {e:?}"),
            Some(_) => {}
            None => panic!("the watch ended before {worker} was deleted"),
        }
    }
    assert!(saw_terminating, "the pod is Terminating before it is gone");
    let scale = deployments.get_scale("worker").await.unwrap();
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(0));

    // Exec with stdin: 8 MiB into sha256sum, stdout drained concurrently, status Success.
    let data: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let expected = hex::encode(Sha256::digest(&data));
    // redis-0 has a sidecar: an API exec names its container (kubectl reads the
    // default-container annotation for its users; the API server does not).
    let params = AttachParams::default()
        .container("redis")
        .stdin(true)
        .stdout(true)
        .stderr(false)
        .max_stdin_buf_size(1 << 20)
        .max_stdout_buf_size(1 << 20);
    let mut process = pods
        .exec("redis-0", vec!["sha256sum"], &params)
        .await
        .unwrap();
    let mut stdin = process.stdin().unwrap();
    let mut stdout = process.stdout().unwrap();
    let status = process.take_status().unwrap();
    let writer = tokio::spawn(async move {
        stdin.write_all(&data).await.unwrap();
        stdin.shutdown().await.unwrap();
    });
    let mut output = String::new();
    stdout.read_to_string(&mut output).await.unwrap();
    writer.await.unwrap();
    let status = status.await.unwrap();
    assert_eq!(status.status.as_deref(), Some("Success"));
    assert_eq!(output.split_whitespace().next(), Some(expected.as_str()));

    // Without a container name the API server refuses (400), naming the containers:
    // redis-0 has two. kubectl names one itself; an API client must.
    let unnamed = pods
        .exec(
            "redis-0",
            vec!["true"],
            &AttachParams::default().stderr(false),
        )
        .await;
    let err = match unnamed {
        Ok(_) => panic!("an exec without a container into a 2-container pod was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(
            "a container name must be specified for pod redis-0, choose one of: [redis metrics]"
        ),
        "{err}"
    );

    // A failing command reports NonZeroExitCode with the exit code as a cause.
    let mut failing = pods
        .exec(
            "redis-0",
            vec!["sh", "-c", "exit 4"],
            &AttachParams::default().container("redis").stderr(false),
        )
        .await
        .unwrap();
    let status = failing.take_status().unwrap().await.unwrap();
    assert_eq!(status.reason.as_deref(), Some("NonZeroExitCode"));
    let cause = &status.details.unwrap().causes.unwrap()[0];
    assert_eq!(
        (cause.reason.as_deref(), cause.message.as_deref()),
        (Some("ExitCode"), Some("4"))
    );

    // ConfigMaps: create, 409 AlreadyExists, merge patch, replace, delete, 404 NotFound.
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let record: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": "ferry-migration"},
        "data": {"state": "started"},
    }))
    .unwrap();
    configmaps
        .create(&PostParams::default(), &record)
        .await
        .unwrap();
    match configmaps.create(&PostParams::default(), &record).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 409);
            assert_eq!(status.reason, "AlreadyExists");
        }
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    let patched = configmaps
        .patch(
            "ferry-migration",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"state": "completed", "fingerprint": "abc"}})),
        )
        .await
        .unwrap();
    let data = patched.data.clone().unwrap();
    assert_eq!(data["state"], "completed");
    assert_eq!(data["fingerprint"], "abc");
    let mut replaced = patched.clone();
    replaced.data = Some([("state".to_string(), "replaced".to_string())].into());
    let replaced = configmaps
        .replace("ferry-migration", &PostParams::default(), &replaced)
        .await
        .unwrap();
    assert_eq!(replaced.data.unwrap().len(), 1);
    // A stale resourceVersion is a 409 Conflict.
    match configmaps
        .replace("ferry-migration", &PostParams::default(), &patched)
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"))
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
    configmaps
        .delete("ferry-migration", &DeleteParams::default())
        .await
        .unwrap();
    match configmaps.get("ferry-migration").await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 404);
            assert_eq!(status.reason, "NotFound");
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
    drop(sim);
}
