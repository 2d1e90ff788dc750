//! `ferry ping`: connect to each host and run `true`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use super::task::result;
use crate::command::Cmd;
use crate::inventory::Inventory;
use crate::report::{EventSink, PlayReport, TaskStatus};
use crate::secrets::Secrets;
use crate::transport::Connector;

/// `ferry ping`: connect to each host and run `true`.
pub async fn ping(
    inventory: Arc<Inventory>,
    hosts: Vec<String>,
    connector: Arc<dyn Connector>,
    secrets: Secrets,
    events: EventSink,
) -> PlayReport {
    let mut report = PlayReport {
        ferry: crate::VERSION.to_string(),
        playbook: "ping".into(),
        check_mode: false,
        hosts: BTreeMap::new(),
        tasks: Vec::new(),
        started_at: crate::journal::now_rfc3339(),
        ..PlayReport::default()
    };
    let mut handles = Vec::new();
    for host in hosts {
        let (inventory, connector, secrets) =
            (inventory.clone(), connector.clone(), secrets.clone());
        handles.push(tokio::spawn(async move {
            let started = Instant::now();
            let Some(h) = inventory.hosts.get(&host) else {
                return (host, Err("not in the inventory".to_string()), started);
            };
            let outcome = match connector.connect(&h.connect, &secrets).await {
                Err(e) => Err(secrets.mask(&e.to_string())),
                Ok(t) => Ok(t.exec(&Cmd::new("true"), None).await),
            };
            match outcome {
                Err(e) => (host, Err(e), started),
                Ok(exec) => (
                    host,
                    Ok(exec.map_err(|e| secrets.mask(&e.to_string()))),
                    started,
                ),
            }
        }));
    }
    for handle in handles {
        let Ok((host, outcome, started)) = handle.await else {
            continue;
        };
        report.hosts.entry(host.clone()).or_default();
        match outcome {
            Err(reason) => {
                events.host_unreachable(&host, &reason);
                let s = report.hosts.entry(host.clone()).or_default();
                s.unreachable = true;
                s.unreachable_reason = Some(reason);
            }
            Ok(exec) => {
                let mut r = result(&host, "ping", TaskStatus::Ok, started);
                match exec {
                    Ok(out) if out.success() => {}
                    Ok(out) => {
                        r.status = TaskStatus::Failed;
                        r.error = Some(format!(
                            "`true` exited {:?}: {}",
                            out.status,
                            secrets.mask(out.stderr_str().trim())
                        ));
                    }
                    Err(e) => {
                        r.status = TaskStatus::Failed;
                        r.error = Some(e);
                    }
                }
                events.task_end(&r);
                report.add(r);
            }
        }
    }
    report
}
