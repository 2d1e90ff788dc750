//! Benchmark item 6: resolving a 1000-host inventory (parse, then `prepare`: every
//! host's template variables and every template rendered once per host). Prints one
//! JSON line: host count, seconds for each step, and the process's peak RSS (VmHWM).
//!
//!   cargo bench --bench inventory_scale [-- --hosts N]

use std::sync::Arc;
use std::time::Instant;

use ferry::engine::{prepare, RunOptions};
use ferry::inventory::Inventory;
use ferry::playbook::source::SourceFile;
use ferry::playbook::Playbook;
use ferry::secrets::Secrets;

#[path = "../tests/common/scale.rs"]
mod scale;
use scale::{inventory_text, PLAYBOOK};

fn max_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let hosts = args
        .iter()
        .position(|a| a == "--hosts")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let secrets = Secrets::new();
    let text = inventory_text(hosts);
    let started = Instant::now();
    let inventory = Inventory::parse(&SourceFile::new("inv.toml", text), &|_| None, &secrets)
        .expect("inventory");
    let parsed = started.elapsed().as_secs_f64();
    let playbook = Playbook::parse(SourceFile::new("pb.toml", PLAYBOOK)).expect("playbook");
    let started = Instant::now();
    let prepared = prepare(
        Arc::new(playbook),
        Arc::new(inventory),
        RunOptions::default(),
        &secrets,
    )
    .expect("prepare");
    let resolved = started.elapsed().as_secs_f64();
    assert_eq!(prepared.vars.len(), hosts);
    println!(
        "{{\"hosts\":{hosts},\"parse_s\":{parsed:.3},\"prepare_s\":{resolved:.3},\"max_rss_mib\":{:.1}}}",
        max_rss_mib()
    );
}
