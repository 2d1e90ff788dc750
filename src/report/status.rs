//! What a running task is waiting for, said from wherever the waiting happens (a watch
//! on pods, a PV's cleanup, a long command in a pod) without handing the report to
//! every function on the way: the engine runs each task inside [`scope`], and
//! [`set`] reaches that task's live line, `TASK` lines and `--events` stream.
//!
//! Like the facts guard ([`crate::transport::read_only`]), it follows the tokio task:
//! work spawned onto another task says nothing (a status is a courtesy, never needed).

use std::future::Future;
use std::sync::Arc;

/// Where a task's statuses go.
pub type StatusFn = Arc<dyn Fn(&str) + Send + Sync>;

tokio::task_local! {
    static STATUS: StatusFn;
}

/// Run `f` with [`set`] reporting to `to`.
pub async fn scope<F: Future>(to: StatusFn, f: F) -> F::Output {
    STATUS.scope(to, f).await
}

/// "waiting for deployment/ui: 0/1 ready": what the current task does now. Outside a
/// task (tests, `ferry status`) it goes nowhere.
pub fn set(status: &str) {
    let _ = STATUS.try_with(|to| to(status));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[tokio::test]
    async fn statuses_reach_the_scope_and_nothing_else() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        set("before");
        scope(
            Arc::new(move |s: &str| sink.lock().unwrap().push(s.to_string())),
            async { set("waiting for x") },
        )
        .await;
        set("after");
        assert_eq!(*seen.lock().unwrap(), vec!["waiting for x".to_string()]);
    }
}
