//! Playbook parser, host patterns and templates: any input must give a runnable plan or
//! located errors.
#![no_main]

use std::sync::{Arc, OnceLock};

use ferry::inventory::Inventory;

#[path = "../check.rs"]
mod check;

static INVENTORY: OnceLock<Arc<Inventory>> = OnceLock::new();

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check::check_playbook(text, INVENTORY.get_or_init(check::playbook_inventory));
    }
});
