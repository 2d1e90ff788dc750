//! Playbooks: an ordered list of tasks read from TOML; templating lives in `template`.
pub mod source;
pub mod template;
