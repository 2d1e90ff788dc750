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
