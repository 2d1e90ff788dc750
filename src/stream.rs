//! Moving bytes once: a pump from one reader into a writer (and optionally a local tee
//! file), hashing with SHA-256 on the way and reporting progress, with a fixed buffer so
//! memory stays flat however large the artifact.

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The chunk size: large enough to keep SSH and WebSocket frames full.
pub const CHUNK: usize = 1 << 20;

/// Feed everything `reader` gives into `hasher` (blocking IO; sha2 0.11 no longer
/// implements `io::Write`, so `io::copy` into a hasher is gone). Returns the bytes read.
pub fn hash_reader(reader: &mut impl std::io::Read, hasher: &mut Sha256) -> std::io::Result<u64> {
    // On the stack, as `io::copy`'s buffer: this runs once per file of an archive.
    let mut buf = [0u8; 32 * 1024];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(buf.get(..n).unwrap_or_default());
        total += n as u64;
    }
}

/// What a pump moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pumped {
    pub bytes: u64,
    /// SHA-256 of exactly the bytes moved (lowercase hex).
    pub sha256: String,
}

/// Where a pump failed: reading the source or writing a destination. The distinction
/// matters to the operator (which host to look at).
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    #[error("reading the source: {0}")]
    Read(#[source] std::io::Error),
    #[error("writing the destination: {0}")]
    Write(#[source] std::io::Error),
    #[error("writing the local backup copy: {0}")]
    Tee(#[source] std::io::Error),
}

/// Copy `reader` to `writer` (and `tee`) until EOF, then shut `writer` down (EOF to the
/// far end). `hasher` may be pre-fed (resuming a transfer); `progress` is called with the
/// running byte count after every chunk.
pub async fn pump<R, W, T>(
    reader: &mut R,
    writer: &mut W,
    mut tee: Option<&mut T>,
    mut hasher: Sha256,
    mut progress: impl FnMut(u64),
) -> Result<Pumped, PumpError>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
    T: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buf).await.map_err(PumpError::Read)?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        hasher.update(chunk);
        writer.write_all(chunk).await.map_err(PumpError::Write)?;
        if let Some(t) = tee.as_deref_mut() {
            t.write_all(chunk).await.map_err(PumpError::Tee)?;
        }
        total += n as u64;
        progress(total);
    }
    writer.flush().await.map_err(PumpError::Write)?;
    writer.shutdown().await.map_err(PumpError::Write)?;
    // Durability (fsync) and the check of the copy are the tee owner's (see
    // `LocalCopy::commit`).
    if let Some(t) = tee {
        t.flush().await.map_err(PumpError::Tee)?;
    }
    Ok(Pumped {
        bytes: total,
        sha256: hex::encode(hasher.finalize()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pumps_hashes_and_tees() {
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        let mut src = &data[..];
        let mut dst: Vec<u8> = Vec::new();
        let dir = tempfile::tempdir().unwrap();
        let tee_path = dir.path().join("tee");
        let mut tee = tokio::fs::File::create(&tee_path).await.unwrap();
        let mut ticks = 0;
        let p = pump(&mut src, &mut dst, Some(&mut tee), Sha256::new(), |_| {
            ticks += 1
        })
        .await
        .unwrap();
        assert_eq!(dst, data);
        assert_eq!(std::fs::read(&tee_path).unwrap(), data);
        assert_eq!(p.bytes, data.len() as u64);
        assert_eq!(p.sha256, hex::encode(Sha256::digest(&data)));
        assert!(ticks >= 4);
    }

    #[tokio::test]
    async fn resumed_hash_covers_the_whole_file() {
        let data = b"hello, world".to_vec();
        let mut pre = Sha256::new();
        pre.update(&data[..5]);
        let mut src = &data[5..];
        let mut dst = Vec::new();
        let p = pump(&mut src, &mut dst, None::<&mut Vec<u8>>, pre, |_| {})
            .await
            .unwrap();
        assert_eq!(p.sha256, hex::encode(Sha256::digest(&data)));
        assert_eq!(p.bytes, 7);
    }
}
