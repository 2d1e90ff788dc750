//! The source's tar for `storage_stream`: the command that makes it on the old host, its
//! listing (what facts compare), and the one pass that turns it into the gzip the pod
//! imports while hashing every file.

use std::collections::BTreeMap;
use std::io::Read;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::stored_gzip::StoredGzip;
use super::SourceTree;
use crate::command::{quote, Cmd};
use crate::fingerprint::StorageFingerprint;
use crate::packagist::storage::storage_find_cmd;
use crate::stream::PumpError;

/// The vendor's tar fallback renames the storage dirs as the import expects them.
pub const VENDOR_TRANSFORM: [&str; 4] = [
    "--transform",
    "s/^composer/dist/",
    "--transform",
    "s/^artifacts/artifact/",
];

/// `tar` with its arguments, names sorted where the tar can (GNU tar 1.28 and later): the
/// same tree then always gives the same archive, which a resumed stream relies on. An
/// older tar reads directories in their on-disk order, stable while nothing changes.
const SORTED_TAR: &str = r#"sort=
if tar --sort=name -cf /dev/null -T /dev/null 2>/dev/null; then sort=--sort=name; fi
exec tar $sort "$@"
"#;

/// The vendor's tar fallback, uncompressed, to stdout (names sorted, see [`SORTED_TAR`]).
pub fn source_tar_cmd(data_dir: &str) -> Cmd {
    Cmd::new("cd")
        .arg(data_dir)
        .and(Cmd::new("mkdir").args(["-p", "composer", "artifacts"]))
        .and(
            // Shown as the tar it runs: `tar -cf - …`.
            Cmd::script(format!("sh -c {} tar", quote(SORTED_TAR)), "tar")
                .arg("-cf")
                .arg("-")
                .args(VENDOR_TRANSFORM)
                .args(["composer", "artifacts"]),
        )
}

/// One line per entry below the two storage dirs: `type<TAB>size<TAB>mtime<TAB>path`
/// (the dirs themselves are left out: the tar creates them if missing, and facts do not).
pub(crate) fn listing_cmd(data_dir: &str) -> Cmd {
    storage_find_cmd(data_dir, "%y\\t%s\\t%T@\\t%P\\n", false)
        .pipe(Cmd::new("env").arg("LC_ALL=C").arg("sort"))
}

/// Pure: the tree's stamp, file count and expected tar size from [`listing_cmd`]'s output.
pub fn parse_listing(text: &str) -> SourceTree {
    const BLOCK: u64 = 512;
    let mut files = 0;
    // End-of-archive marker: two zero blocks; a header each for `dist/` and `artifact/`.
    let mut tar_bytes = 2 * BLOCK + 2 * BLOCK;
    for line in text.lines() {
        let mut fields = line.splitn(4, '\t');
        let kind = fields.next().unwrap_or("");
        let size: u64 = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
        tar_bytes += BLOCK;
        if kind == "f" {
            files += 1;
            tar_bytes += size.div_ceil(BLOCK) * BLOCK;
        }
    }
    // tar pads the archive to whole records of 20 blocks.
    let record = 20 * BLOCK;
    SourceTree {
        stamp: hex::encode(Sha256::digest(text.as_bytes())),
        files,
        tar_bytes: tar_bytes.div_ceil(record) * record,
    }
}

/// Pure: the storage path a tar member came from (`dist/…` → `composer/…`,
/// `artifact/…` → `artifacts/…`), as the pod's `sha256sum` listing names it.
pub fn source_path(member: &str) -> String {
    let member = member.strip_prefix("./").unwrap_or(member);
    if let Some(rest) = member.strip_prefix("dist/") {
        format!("composer/{rest}")
    } else if let Some(rest) = member.strip_prefix("artifact/") {
        format!("artifacts/{rest}")
    } else {
        member.to_string()
    }
}

// ---------------------------------------------------------------------------------------
// The one pass: tar in, gzip out, every file hashed on the way

/// What [`pump_tar_as_gzip`] moved.
#[derive(Debug)]
pub struct TarPumped {
    /// Bytes of tar read from the source.
    pub tar_bytes: u64,
    /// Bytes of the whole gzip (a resumed pump's skipped prefix included), and their
    /// sha256.
    pub bytes: u64,
    pub sha256: String,
    /// sha256 of what was written to the sink: the part after the skipped prefix.
    pub sent_sha256: String,
    /// sha256 of every regular file in the tar, by its storage path.
    pub fingerprint: StorageFingerprint,
}

/// Where a tar stream failed: moving bytes (as any pump), or reading the tar itself.
#[derive(Debug, thiserror::Error)]
pub enum TarStreamError {
    #[error(transparent)]
    Pump(#[from] PumpError),
    #[error("{0}")]
    Archive(String),
    /// The regenerated archive's first bytes are not what the far end kept.
    #[error("the first {bytes} bytes of the regenerated archive {why}")]
    PrefixMismatch { bytes: u64, why: String },
}

/// The part of the archive the far end already holds: its length and sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptPrefix {
    pub bytes: u64,
    pub sha256: String,
}

/// [`pump_tar_as_gzip_after`] from the start.
pub async fn pump_tar_as_gzip<R, W, T>(
    reader: &mut R,
    writer: &mut W,
    tee: Option<&mut T>,
    progress: impl FnMut(u64),
) -> Result<TarPumped, TarStreamError>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
    T: AsyncWrite + Unpin + ?Sized,
{
    pump_tar_as_gzip_after(reader, writer, tee, progress, None).await
}

/// Read a tar stream from `reader` to EOF; write it to `writer` as a gzip of stored
/// blocks ([`StoredGzip`]: the same tar always gives the same bytes) and to `tee`,
/// hashing what is written; hash every regular file of the tar on a blocking thread fed
/// with the same chunks. Memory stays bounded: a few chunks in flight.
///
/// With `kept`, the far end already holds the archive's first bytes: they are
/// regenerated and hashed but not written to `writer` (`tee` gets everything), and once
/// they are all regenerated their hash must be `kept`'s, or the pump stops before a
/// byte is written.
pub async fn pump_tar_as_gzip_after<R, W, T>(
    reader: &mut R,
    writer: &mut W,
    mut tee: Option<&mut T>,
    mut progress: impl FnMut(u64),
    kept: Option<&KeptPrefix>,
) -> Result<TarPumped, TarStreamError>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
    T: AsyncWrite + Unpin + ?Sized,
{
    let (to_parser, from_pump) = tokio::sync::mpsc::channel::<Bytes>(8);
    let parser = tokio::task::spawn_blocking(move || hash_tar_members(from_pump));
    let mut gzip = StoredGzip::default();
    let mut out = Vec::new();
    let mut hasher = Sha256::new();
    let mut sink = Skipping::new(kept);
    let mut written = 0u64;
    let mut read = 0u64;
    let mut buf = vec![0u8; crate::stream::CHUNK];
    let mut last_tick = 0u64;
    let mut parser_gone = false;
    loop {
        let n = reader.read(&mut buf).await.map_err(PumpError::Read)?;
        if n == 0 {
            break;
        }
        let chunk = Bytes::copy_from_slice(&buf[..n]);
        read += n as u64;
        if !parser_gone && to_parser.send(chunk.clone()).await.is_err() {
            // The parser stopped early (a broken archive): its error is reported below.
            parser_gone = true;
        }
        out.clear();
        gzip.push(&chunk, &mut out);
        written += out.len() as u64;
        hasher.update(&out);
        if let Some(t) = tee.as_deref_mut() {
            t.write_all(&out).await.map_err(PumpError::Tee)?;
        }
        sink.write(&out, writer).await?;
        if read - last_tick >= 8 << 20 {
            last_tick = read;
            progress(read);
        }
    }
    drop(to_parser);
    let mut tail = Vec::new();
    gzip.finish(&mut tail);
    written += tail.len() as u64;
    hasher.update(&tail);
    if let Some(t) = tee.as_deref_mut() {
        t.write_all(&tail).await.map_err(PumpError::Tee)?;
    }
    sink.write(&tail, writer).await?;
    sink.reached_end()?;
    writer.flush().await.map_err(PumpError::Write)?;
    writer.shutdown().await.map_err(PumpError::Write)?;
    // fsync and the check of the copy are the tee owner's (`LocalCopy::commit`).
    if let Some(t) = tee {
        t.flush().await.map_err(PumpError::Tee)?;
    }
    progress(read);
    let fingerprint = parser
        .await
        .map_err(|e| TarStreamError::Archive(format!("the tar reader stopped: {e}")))?
        .map_err(TarStreamError::Archive)?;
    Ok(TarPumped {
        tar_bytes: read,
        bytes: written,
        sha256: hex::encode(hasher.finalize()),
        sent_sha256: hex::encode(sink.sent.finalize()),
        fingerprint,
    })
}

/// The writer's side of a resumed pump: the kept prefix is hashed and checked, only what
/// follows it is written (and hashed apart).
struct Skipping<'a> {
    kept: Option<&'a KeptPrefix>,
    /// Bytes of the prefix regenerated so far, and their hash.
    seen: u64,
    prefix: Sha256,
    sent: Sha256,
}

impl<'a> Skipping<'a> {
    fn new(kept: Option<&'a KeptPrefix>) -> Self {
        Skipping {
            kept: kept.filter(|k| k.bytes > 0),
            seen: 0,
            prefix: Sha256::new(),
            sent: Sha256::new(),
        }
    }

    async fn write<W: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        mut out: &[u8],
        writer: &mut W,
    ) -> Result<(), TarStreamError> {
        if let Some(kept) = self.kept {
            let take = ((kept.bytes - self.seen) as usize).min(out.len());
            self.prefix.update(&out[..take]);
            self.seen += take as u64;
            out = &out[take..];
            if self.seen < kept.bytes {
                return Ok(());
            }
            let got = hex::encode(std::mem::take(&mut self.prefix).finalize());
            if got != kept.sha256 {
                return Err(TarStreamError::PrefixMismatch {
                    bytes: kept.bytes,
                    why: format!("hash to {got}, the kept part to {}", kept.sha256),
                });
            }
            self.kept = None;
        }
        self.sent.update(out);
        writer.write_all(out).await.map_err(PumpError::Write)?;
        Ok(())
    }

    /// At the end of the archive: it must have been at least as long as the kept part.
    fn reached_end(&self) -> Result<(), TarStreamError> {
        match self.kept {
            Some(kept) => Err(TarStreamError::PrefixMismatch {
                bytes: kept.bytes,
                why: format!("do not exist: the archive ends after {} bytes", self.seen),
            }),
            None => Ok(()),
        }
    }
}

/// The chunks arriving on a channel as a blocking `Read` (the `tar` crate reads
/// synchronously): tokio-util's `StreamReader` makes them an `AsyncRead`, its
/// `SyncIoBridge` blocks this (spawn_blocking) thread on it.
fn chunk_reader(chunks: tokio::sync::mpsc::Receiver<Bytes>) -> impl Read {
    let stream = futures::stream::unfold(chunks, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, std::io::Error>(b), rx))
    });
    tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(Box::pin(stream)))
}

/// sha256 of every regular file in the tar arriving on `chunks`, as a fingerprint
/// keyed by storage path. Reads the channel to its end, so the sender never blocks.
fn hash_tar_members(
    chunks: tokio::sync::mpsc::Receiver<Bytes>,
) -> Result<StorageFingerprint, String> {
    let mut archive = tar::Archive::new(chunk_reader(chunks));
    let mut hashes = BTreeMap::new();
    let entries = archive.entries().map_err(|e| e.to_string())?;
    for entry in entries {
        let mut entry = entry.map_err(|e| e.to_string())?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| e.to_string())?
            .to_string_lossy()
            .into_owned();
        let mut hasher = Sha256::new();
        crate::stream::hash_reader(&mut entry, &mut hasher).map_err(|e| format!("{path}: {e}"))?;
        hashes.insert(source_path(&path), hex::encode(hasher.finalize()));
    }
    // Past the end-of-archive blocks: drain, so the pump is never left waiting.
    let mut rest = archive.into_inner();
    std::io::copy(&mut rest, &mut std::io::sink()).map_err(|e| e.to_string())?;
    Ok(StorageFingerprint::from_hashes(hashes))
}
