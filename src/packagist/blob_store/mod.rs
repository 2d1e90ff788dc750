//! The new install's blob storage, read by ferry to prove the storage import: every key,
//! size and content digest in the bucket against the files recorded on the old side.
//!
//! The Kubernetes install keeps dist files and artifacts in an object store (the built-in
//! MinIO, or the customer's S3 / S3-compatible store), not in a directory of the ui pod.
//! The vendor's import writes each file of the archive under its archive path (`dist/…`,
//! `artifact/…`). ferry lists the bucket with `object_store` (a well-kept client for S3,
//! Azure and GCS; S3 is wired here) and hashes each object as it streams: an ETag is an
//! MD5 only for single-part uploads, and the old side's record is sha256.
//!
//! Where the store is only reachable from the new host (the built-in store on the
//! node's loopback, or a cluster address), ferry reaches it through that host's SSH
//! connection (`via = "host"`, the default); a cloud store can be read directly.
//!
//! Settings, host var `blob_store` of the new host (credentials are secret vars, named
//! here, never written in the clear):
//!
//! ```toml
//! [hosts.packagist_new.vars.blob_store]
//! endpoint = "http://127.0.0.1:9000"   # as the new host sees it (via = "host")
//! bucket = "packagist"
//! region = "us-east-1"                 # default us-east-1
//! access_key_var = "blob_access_key"   # names of secret vars
//! secret_key_var = "blob_secret_key"
//! via = "host"                         # or "direct"
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStore, ObjectStoreExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fingerprint::StorageFingerprint;
use crate::k8s::Cluster;
use crate::module::{HostReader, ModuleError, VarDecl, VarKind};
use crate::transport::tunnel::local_forward;
use crate::transport::Transport;

mod settings;

/// The bucket's digests computed on the new host (see [`BlobStore::digests`]).
const NODE_DIGESTS: &str = include_str!("node_digests.py");

#[cfg(test)]
pub use settings::testbed_target;
pub use settings::{BlobStoreConfig, BlobTarget, Credentials, EnvNames};

/// Host var: where the new install keeps its blob storage (see the module's doc).
pub const BLOB_STORE: VarDecl = VarDecl::new("blob_store", VarKind::Object);

/// How ferry reaches the store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// Through the new host's SSH connection, to the endpoint as that host sees it.
    #[default]
    Host,
    /// From the laptop, to the endpoint as given (a cloud store).
    Direct,
}

/// The store, resolved, with its credentials (never serialized: the keys are secrets).
#[derive(Clone)]
pub struct BlobStore {
    pub target: BlobTarget,
    credentials: Credentials,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// An object: its size and the sha256 of its content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectDigest {
    pub size: u64,
    pub sha256: String,
}

impl BlobStore {
    /// The host's `blob_store` var, resolved with its credentials (reading the app's
    /// settings through `cluster` with `from_deployment`); `None` when it is not set.
    pub async fn from_host(
        ctx: &HostReader,
        cluster: Option<&Cluster>,
    ) -> Result<Option<BlobStore>, ModuleError> {
        let Some(config) = settings::config_of(ctx)? else {
            return Ok(None);
        };
        let (target, credentials) = settings::resolve(ctx, &config, cluster).await?;
        Ok(Some(BlobStore {
            target,
            credentials,
        }))
    }

    /// `bucket B at E` (and where the settings came from when not the host var).
    pub fn describe(&self) -> String {
        self.target.describe()
    }

    /// A client for the bucket: through `host`'s SSH connection unless `via = "direct"`.
    /// The returned task is the tunnel; it closes when dropped.
    async fn client(
        &self,
        host: Arc<dyn Transport>,
    ) -> Result<(Arc<dyn ObjectStore>, Option<TunnelGuard>), ModuleError> {
        let (endpoint, guard) = match self.target.via {
            Via::Direct => (self.target.endpoint.clone(), None),
            Via::Host => {
                let (scheme, target, port) = split_endpoint(&self.target.endpoint)?;
                let (local, handle) = local_forward(host, target, port, "blob store").await?;
                (
                    format!("{scheme}://127.0.0.1:{local}"),
                    Some(TunnelGuard(handle)),
                )
            }
        };
        crate::install_tls_provider();
        let store = AmazonS3Builder::new()
            .with_endpoint(&endpoint)
            .with_allow_http(endpoint.starts_with("http://"))
            .with_virtual_hosted_style_request(false)
            .with_bucket_name(&self.target.bucket)
            .with_region(&self.target.region)
            .with_access_key_id(&self.credentials.access_key)
            .with_secret_access_key(&self.credentials.secret_key)
            .build()
            .map_err(|e| self.error("cannot set up the client", &e))?;
        Ok((Arc::new(store), guard))
    }

    fn error(&self, what: &str, e: &dyn std::fmt::Display) -> ModuleError {
        ModuleError::Remote {
            what: format!(
                "blob store {} bucket {}: {what}",
                self.target.endpoint, self.target.bucket
            ),
            detail: e.to_string(),
        }
    }

    /// Does the bucket answer with these credentials? (preflight)
    pub async fn check(&self, host: Arc<dyn Transport>) -> Result<(), ModuleError> {
        let (store, _tunnel) = self.client(host).await?;
        let mut listing = store.list(None);
        if let Some(Err(e)) = listing.next().await {
            return Err(self.error("listing failed", &e));
        }
        Ok(())
    }

    /// Every object of the bucket, each hashed as it streams: on the new host where the
    /// store is reached through it and it has python3 (the bytes then never cross the
    /// operator's link), else by ferry through the tunnel.
    pub async fn digests(
        &self,
        host: Arc<dyn Transport>,
    ) -> Result<BTreeMap<String, ObjectDigest>, ModuleError> {
        if self.target.via == Via::Host {
            if let Some(found) = self.digests_on_host(&host).await? {
                return Ok(found);
            }
        }
        let (store, _tunnel) = self.client(host).await?;
        let mut metas = Vec::new();
        let mut listing = store.list(None);
        while let Some(meta) = listing.next().await {
            metas.push(meta.map_err(|e| self.error("listing failed", &e))?);
        }
        let mut out = BTreeMap::new();
        for meta in metas {
            let key = meta.location.to_string();
            let got = store
                .get(&meta.location)
                .await
                .map_err(|e| self.error(&format!("reading {key} failed"), &e))?;
            let mut body = got.into_stream();
            let mut hasher = Sha256::new();
            let mut size = 0u64;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| self.error(&format!("reading {key} failed"), &e))?;
                size += chunk.len() as u64;
                hasher.update(&chunk);
            }
            out.insert(
                key,
                ObjectDigest {
                    size,
                    sha256: hex::encode(hasher.finalize()),
                },
            );
        }
        Ok(out)
    }

    /// [`BlobStore::digests`] by `node_digests.py` on `host`; `None` when the host has no
    /// python3 (exit 127).
    async fn digests_on_host(
        &self,
        host: &Arc<dyn Transport>,
    ) -> Result<Option<BTreeMap<String, ObjectDigest>>, ModuleError> {
        let settings = serde_json::json!({
            "endpoint": self.target.endpoint,
            "bucket": self.target.bucket,
            "region": self.target.region,
            "access_key": self.credentials.access_key,
            "secret_key": self.credentials.secret_key,
        })
        .to_string();
        let cmd = crate::command::Cmd::new("python3")
            .arg("-c")
            .arg(NODE_DIGESTS);
        let out = host.exec(&cmd, Some(settings.as_bytes())).await?;
        if out.status == Some(127) {
            tracing::info!(
                host = host.host(),
                "no python3 on the host: the bucket is read through the tunnel"
            );
            return Ok(None);
        }
        let mask = |text: String| {
            text.replace(&self.credentials.secret_key, crate::command::MASK)
                .replace(&self.credentials.access_key, crate::command::MASK)
        };
        if !out.success() {
            return Err(self.error(
                &format!("reading the bucket on host {} failed", host.host()),
                &mask(out.stderr_str().trim().to_string()),
            ));
        }
        let mut found = BTreeMap::new();
        for line in out.stdout_str().lines().filter(|l| !l.trim().is_empty()) {
            #[derive(Deserialize)]
            struct Line {
                key: String,
                size: u64,
                sha256: String,
            }
            let l: Line = serde_json::from_str(line)
                .map_err(|e| self.error("a digest line from the host", &format!("{e}: {line}")))?;
            found.insert(
                l.key,
                ObjectDigest {
                    size: l.size,
                    sha256: l.sha256,
                },
            );
        }
        Ok(Some(found))
    }

    /// The bucket's dist files and artifacts as a storage fingerprint (paths as the old
    /// side records them: `composer/…`, `artifacts/…`), to tell whether an earlier
    /// import is still complete.
    pub async fn fingerprint(
        &self,
        host: Arc<dyn Transport>,
    ) -> Result<StorageFingerprint, ModuleError> {
        let objects = self.digests(host).await?;
        Ok(fingerprint_of(&objects)?)
    }

    /// Prove the import: the bucket holds every file recorded on the old side, each with
    /// its content. Objects the record does not name are left alone (a store may hold
    /// more than this install's files).
    pub async fn prove(
        &self,
        host: Arc<dyn Transport>,
        expected: &StorageFingerprint,
    ) -> Result<(), ModuleError> {
        let objects = self.digests(host).await?;
        let diff = bucket_diff(&objects, expected, 10);
        if diff.is_empty() {
            return Ok(());
        }
        Err(ModuleError::ProofMismatch {
            what: format!("imported storage ({})", self.target.describe()),
            detail: diff.join("; "),
        })
    }
}

/// Aborts the tunnel's accept loop when the client is done.
struct TunnelGuard(tokio::task::JoinHandle<()>);

impl Drop for TunnelGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `http://host:port` → ("http", host, port); the port defaults by scheme.
fn split_endpoint(endpoint: &str) -> Result<(&str, String, u16), ModuleError> {
    let bad = || {
        ModuleError::Precondition(format!(
            "blob_store endpoint `{endpoint}` is not http://HOST[:PORT] or https://HOST[:PORT]"
        ))
    };
    let uri: http::Uri = endpoint.parse().map_err(|_| bad())?;
    let (scheme, default_port) = match uri.scheme_str() {
        Some("http") => ("http", 80),
        Some("https") => ("https", 443),
        _ => return Err(bad()),
    };
    let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(bad)?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad());
    }
    Ok((
        scheme,
        host.to_string(),
        uri.port_u16().unwrap_or(default_port),
    ))
}

/// The object key of a recorded file: the import writes `composer/…` as `dist/…` and
/// `artifacts/…` as `artifact/…` (the archive's paths).
pub fn object_key(recorded_path: &str) -> String {
    if let Some(rest) = recorded_path.strip_prefix("composer/") {
        format!("dist/{rest}")
    } else if let Some(rest) = recorded_path.strip_prefix("artifacts/") {
        format!("artifact/{rest}")
    } else {
        recorded_path.to_string()
    }
}

/// Pure: the fingerprint of the bucket's `dist/` and `artifact/` objects, by recorded path.
pub fn fingerprint_of(
    objects: &BTreeMap<String, ObjectDigest>,
) -> Result<StorageFingerprint, crate::fingerprint::FingerprintParseError> {
    let mut lines = String::new();
    for (key, o) in objects {
        let path = if let Some(rest) = key.strip_prefix("dist/") {
            format!("composer/{rest}")
        } else if let Some(rest) = key.strip_prefix("artifact/") {
            format!("artifacts/{rest}")
        } else {
            continue;
        };
        lines.push_str(&format!("{}  ./{path}\n", o.sha256));
    }
    StorageFingerprint::parse_sha256sum(&lines)
}

/// Pure: what differs between the bucket and the record, each naming the key (at most
/// `limit` lines, then a count of the rest).
pub fn bucket_diff(
    objects: &BTreeMap<String, ObjectDigest>,
    expected: &StorageFingerprint,
    limit: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    for (path, sha256) in &expected.hashes {
        let key = object_key(path);
        match objects.get(&key) {
            None => out.push(format!("{key}: missing from the bucket")),
            Some(o) if &o.sha256 != sha256 => out.push(format!(
                "{key}: content differs ({} bytes, sha256 {}…, expected {}…)",
                o.size,
                &o.sha256[..12.min(o.sha256.len())],
                &sha256[..12.min(sha256.len())]
            )),
            Some(_) => {}
        }
    }
    if expected.hashes.is_empty() && expected.files > 0 {
        out.push(format!(
            "the record has {} files but no per-file hashes (journal of an older ferry)",
            expected.files
        ));
    }
    if out.len() > limit {
        let rest = out.len() - limit;
        out.truncate(limit);
        out.push(format!("… and {rest} more"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(files: &[(&str, &str)]) -> StorageFingerprint {
        let text: String = files
            .iter()
            .map(|(p, h)| format!("{}  ./{p}\n", h.repeat(64 / h.len())))
            .collect();
        StorageFingerprint::parse_sha256sum(&text).unwrap()
    }

    fn object(h: &str, size: u64) -> ObjectDigest {
        ObjectDigest {
            size,
            sha256: h.repeat(64 / h.len()),
        }
    }

    #[test]
    fn keys_are_archive_paths() {
        assert_eq!(object_key("composer/a/b.zip"), "dist/a/b.zip");
        assert_eq!(object_key("artifacts/1/x.zip"), "artifact/1/x.zip");
    }

    #[test]
    fn a_complete_bucket_proves_and_extra_objects_are_left_alone() {
        let rec = record(&[("composer/a.zip", "a"), ("artifacts/b.zip", "b")]);
        let mut objects = BTreeMap::new();
        objects.insert("dist/a.zip".into(), object("a", 3));
        objects.insert("artifact/b.zip".into(), object("b", 4));
        objects.insert("dist/other-install.zip".into(), object("c", 1));
        assert_eq!(bucket_diff(&objects, &rec, 10), Vec::<String>::new());
    }

    #[test]
    fn a_missing_or_different_object_is_named() {
        let rec = record(&[("composer/a.zip", "a"), ("artifacts/b.zip", "b")]);
        let mut objects = BTreeMap::new();
        objects.insert("artifact/b.zip".into(), object("f", 9));
        let diff = bucket_diff(&objects, &rec, 10);
        assert_eq!(diff.len(), 2, "{diff:?}");
        assert!(diff
            .iter()
            .any(|d| d == "dist/a.zip: missing from the bucket"));
        assert!(diff
            .iter()
            .any(|d| d.starts_with("artifact/b.zip: content differs (9 bytes")));
    }

    #[test]
    fn the_bucket_fingerprint_is_the_recorded_one_when_complete() {
        let rec = record(&[("composer/a.zip", "a"), ("artifacts/b.zip", "b")]);
        let mut objects = BTreeMap::new();
        objects.insert("dist/a.zip".into(), object("a", 3));
        objects.insert("artifact/b.zip".into(), object("b", 4));
        objects.insert(".unrelated/key".into(), object("c", 1));
        assert_eq!(fingerprint_of(&objects).unwrap().digest, rec.digest);
    }

    #[test]
    fn endpoints_split_with_default_ports() {
        assert_eq!(
            split_endpoint("http://127.0.0.1:9000").unwrap(),
            ("http", "127.0.0.1".to_string(), 9000)
        );
        assert_eq!(
            split_endpoint("https://s3.example.com/").unwrap(),
            ("https", "s3.example.com".to_string(), 443)
        );
        assert!(split_endpoint("ftp://x").is_err());
        assert!(split_endpoint("http://x/path").is_err());
    }
}
