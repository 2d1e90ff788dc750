//! ferry: idempotent provisioning over SSH.
//!
//! Data flows one way: files on disk (`inventory`, `playbook`) → typed models → a plan
//! per host (`engine`) → commands (`command`) over a `transport` → facts and results →
//! `journal` and `report`. Nothing imports "upwards" along that chain.

pub mod cli;
pub mod command;
pub mod engine;
pub mod fingerprint;
pub mod inventory;
pub mod journal;
pub mod k8s;
pub mod module;
pub mod modules;
pub mod packagist;
pub mod playbook;
pub mod registry;
pub mod report;
pub mod secrets;
pub mod stream;
pub mod transport;
