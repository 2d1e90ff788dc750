//! Memory of resolving a large inventory must grow linearly with the host count: the
//! variables every host can read (`hostvars`, `groups`) are shared, not copied into each
//! host's variables. With a copy per host, 400 hosts took ~0.6 GB here (1000 hosts:
//! 2.6 GB); shared, a few MB. Its own test binary: it counts every allocation of the
//! process, so no other test may run beside it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ferry::engine::{prepare, RunOptions};
use ferry::inventory::Inventory;
use ferry::playbook::source::SourceFile;
use ferry::playbook::Playbook;
use ferry::secrets::Secrets;

/// Counts live heap bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[path = "common/scale.rs"]
mod scale;
use scale::{inventory_text, PLAYBOOK};

#[test]
fn resolving_many_hosts_does_not_copy_every_host_into_every_host() {
    let hosts = 400;
    let secrets = Secrets::new();
    let text = inventory_text(hosts);
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let inventory = Inventory::parse(
        &SourceFile::new("inv.toml", text.as_str()),
        &|_| None,
        &secrets,
    )
    .unwrap();
    let playbook = Playbook::parse(SourceFile::new("pb.toml", PLAYBOOK)).unwrap();
    let prepared = prepare(
        Arc::new(playbook),
        Arc::new(inventory),
        RunOptions::default(),
        &secrets,
    )
    .unwrap();
    assert_eq!(prepared.vars.len(), hosts);
    let held = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    println!("{hosts} hosts: {held} bytes held, {peak} bytes at the peak");
    // Linear: well under 100 KiB per host (here a few KiB). A copy of every host's vars
    // in every host would be ~1.5 MB per host.
    let bound = hosts * 100 * 1024;
    assert!(
        held < bound,
        "{held} bytes held for {hosts} hosts (bound {bound})"
    );
    assert!(
        peak < bound,
        "{peak} bytes at the peak for {hosts} hosts (bound {bound})"
    );
    drop(prepared);
}
