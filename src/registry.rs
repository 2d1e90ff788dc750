//! The module table: every module a playbook may name (`[task.<name>]`), general ones
//! (`crate::modules`) and the migration's steps (`crate::packagist`). Adding a module is
//! one line here plus its file.

use serde::{Deserialize, Deserializer, Serialize};

use crate::module::{DynModule, Module};
use crate::modules::{
    assert, command, docker_container, file, k8s_scale, lineinfile, transfer, wait_for,
};
use crate::packagist::{
    migration_marker, pg_dump, pg_restore_k8s, preflight, redis_backup, redis_flushdb,
    redis_restore_openebs, storage_export, storage_import, storage_stage, storage_stream,
};

/// Registers modules: `name => Type`. Generates [`ModuleArgs`] (one variant per module,
/// serialized as `{name: args}`), [`MODULE_NAMES`], and the dispatch by name used by the
/// playbook parser. Adding a module is one line here plus its file.
macro_rules! modules {
    ($($name:ident => $ty:ty),* $(,)?) => {
        /// The module table of a task: which module, with its typed args.
        // One value per task, parsed once: boxing the larger args would buy nothing.
        #[allow(non_camel_case_types, clippy::large_enum_variant)]
        #[derive(Debug, Clone, Serialize)]
        pub enum ModuleArgs {
            $($name($ty)),*
        }

        /// Names of all modules, as written in playbooks (`[task.<name>]`).
        pub const MODULE_NAMES: &[&str] = &[$(stringify!($name)),*];

        impl ModuleArgs {
            pub fn name(&self) -> &'static str {
                match self {
                    $(ModuleArgs::$name(_) => stringify!($name)),*
                }
            }

            /// [`Module::TEXT_FIELDS`] of this module.
            pub fn text_fields(&self) -> &'static [&'static str] {
                match self {
                    $(ModuleArgs::$name(_) => <$ty as Module>::TEXT_FIELDS),*
                }
            }

            /// The module behind the object-safe contract.
            pub fn module(&self) -> &dyn DynModule {
                match self {
                    $(ModuleArgs::$name(m) => m),*
                }
            }

            /// Deserialize the args of the module called `name`.
            pub fn deserialize_named<'de, D: Deserializer<'de>>(
                name: &str,
                deserializer: D,
            ) -> Result<Self, D::Error> {
                match name {
                    $(stringify!($name) => <$ty>::deserialize(deserializer).map(ModuleArgs::$name),)*
                    other => Err(serde::de::Error::unknown_variant(other, MODULE_NAMES)),
                }
            }
        }
    };
}

modules! {
    assert => assert::Assert,
    command => command::Command,
    copy => crate::modules::copy::Copy,
    template => crate::modules::template::TemplateFile,
    docker_container => docker_container::DockerContainer,
    pg_dump => pg_dump::PgDump,
    pg_restore_k8s => pg_restore_k8s::PgRestoreK8s,
    redis_restore_openebs => redis_restore_openebs::RedisRestoreOpenebs,
    k8s_scale => k8s_scale::K8sScale,
    redis_backup => redis_backup::RedisBackup,
    storage_export => storage_export::StorageExport,
    storage_import => storage_import::StorageImport,
    storage_stage => storage_stage::StorageStage,
    storage_stream => storage_stream::StorageStream,
    redis_flushdb => redis_flushdb::RedisFlushdb,
    migration_marker => migration_marker::MigrationMarker,
    preflight => preflight::Preflight,
    transfer => transfer::Transfer,
    file => file::File,
    lineinfile => lineinfile::LineInFile,
    wait_for => wait_for::WaitFor,
    package => crate::modules::package::Package,
    service => crate::modules::service::Service,
    user => crate::modules::user::User,
    group => crate::modules::group::Group,
    fetch => crate::modules::fetch::Fetch,
    http => crate::modules::http::Http,
}
