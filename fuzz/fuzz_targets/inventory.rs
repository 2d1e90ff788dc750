//! Inventory parser: any bytes (UTF-8 or not) must give an inventory or a located error.
#![no_main]

#[path = "../check.rs"]
#[allow(dead_code)] // each target uses part of the shared checks
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // Files are read with `read_to_string`: non-UTF-8 never reaches the parser.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = check::check_inventory(text);
    }
});
