use super::*;
use k8s_openapi::api::core::v1::{ContainerStatus, PodStatus};

fn pod(phase: &str, ready: &[bool], terminating: bool) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some("p".into());
    if terminating {
        p.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ));
    }
    p.status = Some(PodStatus {
        phase: Some(phase.into()),
        container_statuses: Some(
            ready
                .iter()
                .map(|r| ContainerStatus {
                    ready: *r,
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    });
    p
}

#[test]
fn ready_needs_running_all_containers_and_not_terminating() {
    assert!(pod_ready(&pod("Running", &[true, true], false)));
    assert!(!pod_ready(&pod("Running", &[true, false], false)));
    assert!(!pod_ready(&pod("Pending", &[true], false)));
    assert!(!pod_ready(&pod("Running", &[true], true)));
}

#[test]
fn pods_match_counts() {
    let a = pod("Running", &[true], false);
    assert!(pods_match([&a].into_iter(), PodsWanted::Ready(1)));
    assert!(!pods_match([&a].into_iter(), PodsWanted::Ready(2)));
    assert!(!pods_match([&a].into_iter(), PodsWanted::Gone));
    assert!(pods_match(std::iter::empty(), PodsWanted::Gone));
}

#[test]
fn kubectl_text_is_quoted() {
    assert_eq!(
        kubectl("default", &["scale", "deployment/ui", "--replicas=0"]),
        "kubectl -n default scale deployment/ui --replicas=0"
    );
}

#[test]
fn ended_pods_are_not_counted_either_way() {
    let live = pod("Running", &[true], false);
    let evicted = pod("Failed", &[false], false);
    let completed = pod("Succeeded", &[false], false);
    assert!(pod_ended(&evicted) && pod_ended(&completed) && !pod_ended(&live));
    assert!(pods_match(
        [&evicted, &completed].into_iter(),
        PodsWanted::Gone
    ));
    assert!(pods_match(
        [&live, &evicted].into_iter(),
        PodsWanted::Ready(1)
    ));
    assert!(!pods_match([&evicted].into_iter(), PodsWanted::Ready(1)));
}

fn owned_by(kind: &str, name: &str, controller: bool) -> Pod {
    let mut p = pod("Running", &[true], false);
    p.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            kind: kind.into(),
            name: name.into(),
            controller: Some(controller),
            ..Default::default()
        },
    ]);
    p
}

#[test]
fn a_workload_owns_only_the_pods_it_controls() {
    let sts = PodSet {
        kind: WorkloadKind::StatefulSet,
        name: "redis".into(),
        selector: "app=redis".into(),
    };
    let none = std::collections::BTreeSet::new();
    assert!(sts.owns(&owned_by("StatefulSet", "redis", true), &none));
    assert!(!sts.owns(&owned_by("StatefulSet", "redis", false), &none));
    assert!(!sts.owns(&owned_by("StatefulSet", "redis-2", true), &none));
    assert!(!sts.owns(&pod("Running", &[true], false), &none));

    let deploy = PodSet {
        kind: WorkloadKind::Deployment,
        name: "ui".into(),
        selector: "app=ui".into(),
    };
    let rs = std::collections::BTreeSet::from(["ui-abc".to_string()]);
    assert!(deploy.owns(&owned_by("ReplicaSet", "ui-abc", true), &rs));
    assert!(!deploy.owns(&owned_by("ReplicaSet", "ui-new", true), &rs));
    assert!(deploy.may_own(&owned_by("ReplicaSet", "ui-new", true), &rs));
    assert!(!deploy.may_own(&owned_by("ReplicaSet", "uix-new", true), &rs));
    assert!(!deploy.owns(&pod("Running", &[true], false), &rs));
}
