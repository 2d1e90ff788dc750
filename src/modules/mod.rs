//! General modules: steps any playbook can use, on the contract of [`crate::module`].
//! The Packagist migration's own steps live in [`crate::packagist`].

pub mod assert;
pub mod command;
pub mod copy;
pub mod docker_container;
pub mod fetch;
pub mod file;
pub mod group;
pub mod http;
pub mod k8s_scale;
pub mod lineinfile;
pub mod package;
pub mod service;
pub mod template;
pub mod transfer;
pub mod user;
pub mod wait_for;
