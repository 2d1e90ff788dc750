//! A task's own `become` (`become = true|false` on a task), over the host's from the
//! inventory. The engine runs the task inside [`scope`]; transports that escalate read
//! [`effective`] for each command they start. A task-local, like
//! [`super::read_only`], so no module has to pass it on: a module cannot run a command
//! of the task outside its `become`.

use super::BecomeSpec;

tokio::task_local! {
    static BECOME: Option<bool>;
}

/// Run `fut` with the task's `become` (`None`: the host's).
pub async fn scope<F: std::future::Future>(become_: Option<bool>, fut: F) -> F::Output {
    BECOME.scope(become_, fut).await
}

/// The escalation a command starts with: the host's (`host`), unless the task running
/// says otherwise. `become = true` on a host without one is sudo to root, without a
/// password (as Ansible's default become).
pub fn effective(host: Option<&BecomeSpec>) -> Option<BecomeSpec> {
    match BECOME.try_with(|b| *b).ok().flatten() {
        None => host.cloned(),
        Some(false) => None,
        Some(true) => Some(host.cloned().unwrap_or_else(|| BecomeSpec {
            user: "root".into(),
            password: None,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_tasks_become_beats_the_hosts() {
        let host = BecomeSpec {
            user: "app".into(),
            password: Some("pw".into()),
        };
        assert_eq!(effective(Some(&host)).map(|b| b.user), Some("app".into()));
        assert!(scope(Some(false), async { effective(Some(&host)) })
            .await
            .is_none());
        let root = scope(Some(true), async { effective(None) }).await.unwrap();
        assert_eq!((root.user.as_str(), root.password), ("root", None));
        let kept = scope(Some(true), async { effective(Some(&host)) })
            .await
            .unwrap();
        assert_eq!(kept.user, "app");
        assert_eq!(
            scope(None, async { effective(None) }).await.map(|b| b.user),
            None
        );
    }
}
