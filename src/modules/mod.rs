//! General modules: steps any playbook can use, on the contract of [`crate::module`].
//! The Packagist migration's own steps live in [`crate::packagist`].

pub mod assert;
pub mod command;
pub mod copy;
pub mod docker_container;
pub mod file;
pub mod k8s_scale;
pub mod lineinfile;
pub mod template;
pub mod transfer;
pub mod wait_for;
