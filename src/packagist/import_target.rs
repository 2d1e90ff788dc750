//! Where a storage import lands, shared by `storage_stream` and `storage_import`: the ui
//! pod and container, the staging path of the archive (and the room there), and where
//! the import is proven: the object store of host var `blob_store`, else a directory in
//! the pod (`verify_dir`).
//!
//! Both modules take the same arguments for this ([`ui_import_args!`]), read the same
//! facts ([`ImportTarget::read`]), refuse to send an archive the staging path cannot
//! hold ([`ImportTarget::check_room`]) and prove the same way ([`ImportTarget::prove`]).

use std::time::Duration;

use serde::Serialize;

use crate::fingerprint::StorageFingerprint;
use crate::k8s::{kubectl_exec, Cluster};
use crate::module::kube::{parent_dir, pod_free_bytes, ready_deployment_pod};
use crate::module::units::Seconds;
use crate::module::{Applied, HostReader, ModuleError};
use crate::packagist::blob_store::{BlobStore, BlobTarget};
use crate::packagist::storage::{
    pod_storage_fingerprint, prove_imported_storage, storage_verify_dir, CONSOLE,
};
use crate::playbook::template::Template;

/// The import arguments of a storage module, declared once (with the Kubernetes set):
///
/// - `deployment` (default `ui`) and `container` (default `ui`): where the vendor's
///   import runs;
/// - `archive` (default `/tmp/packagist_storage.tar.gz`): the staging path in that
///   container, removed after the import;
/// - `verify_dir` (default `/data/packagist`; `""`: none): the directory the import is
///   proven in when host var `blob_store` is not set;
/// - `timeout` (default 1 h): for the vendor's import.
macro_rules! ui_import_args {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $($(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty),* $(,)?
        }
    ) => {
        $crate::module::kube::k8s_args! {
            $(#[$meta])*
            $vis struct $name {
                $($(#[$fmeta])* $fvis $field: $ty,)*
                pub deployment: Option<$crate::playbook::template::Template>,
                pub container: Option<$crate::playbook::template::Template>,
                pub archive: Option<$crate::playbook::template::Template>,
                pub verify_dir: Option<$crate::playbook::template::Template>,
                pub timeout: Option<$crate::module::units::Seconds>,
            }
        }

        impl $crate::packagist::import_target::UiImportArgs for $name {
            fn ui_import(&self) -> $crate::packagist::import_target::UiImport<'_> {
                $crate::packagist::import_target::UiImport {
                    deployment: &self.deployment,
                    container: &self.container,
                    archive: &self.archive,
                    verify_dir: &self.verify_dir,
                    timeout: self.timeout,
                }
            }
        }
    };
}
pub(crate) use ui_import_args;

/// The arguments [`ui_import_args!`] declares, borrowed.
pub struct UiImport<'a> {
    pub deployment: &'a Option<Template>,
    pub container: &'a Option<Template>,
    pub archive: &'a Option<Template>,
    pub verify_dir: &'a Option<Template>,
    pub timeout: Option<Seconds>,
}

/// Implemented by [`ui_import_args!`].
pub trait UiImportArgs {
    fn ui_import(&self) -> UiImport<'_>;
}

impl UiImport<'_> {
    /// The vendor's import may take this long.
    pub fn import_timeout(&self) -> Duration {
        self.timeout
            .map_or(Duration::from_secs(3600), Seconds::duration)
    }
}

/// Facts: where the import lands and how it is proven.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImportTarget {
    pub namespace: String,
    /// A ready pod of the deployment, if any.
    pub pod: Option<String>,
    pub container: String,
    /// The staging path in the container.
    pub archive: String,
    /// The directory the import is proven in (without an object store).
    pub verify_dir: Option<String>,
    /// The new install's object store (host var `blob_store`): the import is proven
    /// there, key by key, instead of in `verify_dir`.
    pub bucket: Option<BlobTarget>,
    /// Bytes free where the archive is staged (`None`: unknown, or no pod).
    pub staging_free: Option<u64>,
}

impl ImportTarget {
    /// Read the target (and the object store, with its credentials) from the cluster.
    pub async fn read(
        ctx: &HostReader,
        cluster: &Cluster,
        args: &UiImport<'_>,
    ) -> Result<(ImportTarget, Option<BlobStore>), ModuleError> {
        let deployment = ctx.render_or(args.deployment, "ui")?;
        let pod = ready_deployment_pod(cluster, &deployment).await?;
        let container = ctx.render_or(args.container, "ui")?;
        let archive = ctx.render_or(args.archive, "/tmp/packagist_storage.tar.gz")?;
        let store = BlobStore::from_host(ctx, Some(cluster)).await?;
        let verify_dir = match &store {
            Some(_) => None,
            None => storage_verify_dir(ctx, args.verify_dir)?,
        };
        let staging_free = match &pod {
            Some(pod) => pod_free_bytes(cluster, pod, &container, &archive).await,
            None => None,
        };
        let target = ImportTarget {
            namespace: cluster.namespace().to_string(),
            pod,
            container,
            archive,
            verify_dir,
            bucket: store.as_ref().map(|s| s.target.clone()),
            staging_free,
        };
        Ok((target, store))
    }

    /// Is there anything to prove the import against?
    pub fn is_proven(&self) -> bool {
        self.bucket.is_some() || self.verify_dir.is_some()
    }

    /// The imported files as they are now (the bucket's, or `verify_dir`'s in `pod`).
    pub async fn current(
        &self,
        ctx: &HostReader,
        cluster: &Cluster,
        store: Option<&BlobStore>,
    ) -> Result<Option<StorageFingerprint>, ModuleError> {
        match (store, &self.pod, &self.verify_dir) {
            (Some(store), _, _) => Ok(Some(store.fingerprint(ctx.transport.clone()).await?)),
            (None, Some(pod), Some(dir)) => {
                pod_storage_fingerprint(cluster, pod, &self.container, dir).await
            }
            _ => Ok(None),
        }
    }

    /// Pure: refuse, before a byte moves, an archive of `need` more bytes than the
    /// staging path has free.
    pub fn check_room(&self, pod: &str, need: u64) -> Result<(), ModuleError> {
        match self.staging_free {
            Some(free) if free < need => Err(ModuleError::DiskFull(format!(
                "pod {pod} (container {c}, namespace {ns}): {dir} has {free} bytes free, the \
                 archive needs about {need}; nothing was sent. Free space there, or set the \
                 task's `archive` (playbook var storage_staging) to a larger volume, and re-run",
                c = self.container,
                ns = self.namespace,
                dir = parent_dir(&self.archive),
            ))),
            _ => Ok(()),
        }
    }

    /// Prove the import: the bucket (or `verify_dir` in `pod`) holds exactly the
    /// `expected` files. The store is resolved again here: its credentials are not
    /// facts.
    pub async fn prove(
        &self,
        ctx: &HostReader,
        cluster: &Cluster,
        pod: &str,
        expected: &StorageFingerprint,
    ) -> Result<(), ModuleError> {
        if self.bucket.is_some() {
            if let Some(store) = BlobStore::from_host(ctx, Some(cluster)).await? {
                return store.prove(ctx.transport.clone(), expected).await;
            }
        }
        match &self.verify_dir {
            Some(dir) => prove_imported_storage(cluster, pod, &self.container, dir, expected).await,
            None => Ok(()),
        }
    }

    /// What an operator would type for the vendor's import in `pod` and the cleanup.
    pub fn import_commands(&self, pod: &str) -> [String; 2] {
        let exec =
            |argv: &[&str]| kubectl_exec(&self.namespace, pod, Some(&self.container), false, argv);
        [
            exec(&[
                CONSOLE,
                "packagist:self-hosted:migrate-storage",
                "import",
                &self.archive,
            ]),
            exec(&["rm", &self.archive]),
        ]
    }

    /// A finished import's result: changed, with the warning when it was not proven.
    pub fn applied(&self) -> Applied {
        let mut applied = Applied::changed();
        applied.warnings.extend(self.unproven_warning());
        applied
    }

    /// The report's warning when nothing could prove the import.
    pub fn unproven_warning(&self) -> Option<String> {
        (!self.is_proven()).then(|| {
            "the storage was imported but NOT proven: set host var blob_store (the new \
             install's object store) or the task's verify_dir so ferry can check every file"
                .to_string()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(free: Option<u64>) -> ImportTarget {
        ImportTarget {
            namespace: "default".into(),
            pod: Some("ui-1".into()),
            container: "ui".into(),
            archive: "/tmp/packagist_storage.tar.gz".into(),
            verify_dir: None,
            bucket: None,
            staging_free: free,
        }
    }

    #[test]
    fn room_is_checked_only_when_known() {
        assert!(target(None).check_room("ui-1", 10).is_ok());
        assert!(target(Some(10)).check_room("ui-1", 10).is_ok());
        let e = target(Some(9))
            .check_room("ui-1", 10)
            .unwrap_err()
            .to_string();
        for part in [
            "pod ui-1",
            "container ui",
            "namespace default",
            "/tmp has 9 bytes free",
            "needs about 10",
            "nothing was sent",
        ] {
            assert!(e.contains(part), "{part} not in: {e}");
        }
    }

    #[test]
    fn an_unproven_target_warns() {
        assert!(target(None).unproven_warning().is_some());
        let mut t = target(None);
        t.verify_dir = Some("/data/packagist".into());
        assert!(t.unproven_warning().is_none());
    }
}
