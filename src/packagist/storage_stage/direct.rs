//! `storage_stage` by the direct route: the old host sends the archive straight to this
//! host (the new node) over its own SSH connection, trusted for this stream only (see
//! `direct_route`); the laptop carries only the commands and the verdicts.
//!
//! The old host runs `direct_send.py` (Python's standard library only): it reads the
//! same sorted tar as the controller route, frames it in the same stored-block gzip
//! (so a part cut on either route resumes on either), hashes every file in it and the
//! whole archive, and writes what comes after the kept prefix to its `ssh`, whose
//! forced command on the node is [`super::receive_cmd`]: the same receiver, appending
//! to the same part, printing the sha256 of what it wrote. ferry compares the two ends'
//! hashes and the part's size, as on the controller route.

use super::{
    disk_full, first_field, kept_prefix, part_size, receive_cmd, source_unchanged, Sent, Stage,
    StorageStageFacts,
};
use crate::command::Cmd;
use crate::fingerprint::StorageFingerprint;
use crate::module::direct_route::{self, DirectTarget, Trust};
use crate::module::staged::StagedPath;
use crate::module::{Applied, ModuleError, TaskCtx};
use crate::packagist::storage_stream::{source_path, source_tar_cmd};

use crate::module::direct_route::SENDER;

/// Install the trust, stream, remove the trust (whatever happened); the route and the
/// key's fingerprint go in the report.
pub(super) async fn stream_direct(
    ctx: &TaskCtx,
    f: &StorageStageFacts,
    staged: &StagedPath,
    resume_from: u64,
    target: &DirectTarget,
    applied: &mut Applied,
) -> Result<Sent, Stage> {
    let source = ctx.peer(&f.source_host).await?;
    let script = receive_cmd(staged, resume_from > 0).to_shell();
    let (record, trust) = direct_route::open(
        ctx,
        &source,
        &f.source_host,
        &f.direct,
        target,
        staged,
        &script,
        &mut applied.notes,
    )
    .await;
    let result = match trust {
        Ok(trust) => send(ctx, f, staged, resume_from, &source, &trust).await,
        Err(e) => Err(e.into()),
    };
    direct_route::close(ctx, &source, record, applied).await?;
    result
}

fn sender_path(trust: &Trust) -> String {
    format!("{}/send.py", trust.record.source_dir)
}

/// The stream itself, once the trust is in place.
async fn send(
    ctx: &TaskCtx,
    f: &StorageStageFacts,
    staged: &StagedPath,
    resume_from: u64,
    source: &std::sync::Arc<dyn crate::transport::Transport>,
    trust: &Trust,
) -> Result<Sent, Stage> {
    let sender = sender_path(trust);
    direct_route::write_file(source, &f.source_host, &sender, SENDER.as_bytes()).await?;
    let tar = source_tar_cmd(&f.data_dir).to_shell();
    if resume_from > 0 {
        let kept = kept_prefix(ctx, staged, resume_from).await?;
        let regenerated = source
            .exec(
                &Cmd::new("python3")
                    .arg(sender.as_str())
                    .arg("prefix")
                    .arg(resume_from.to_string().as_str())
                    .arg(tar.as_str()),
                None,
            )
            .await?;
        let sha = regenerated
            .stdout_str()
            .lines()
            .find_map(|l| l.strip_prefix("result "))
            .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
            .and_then(|v| v.get("sha256").and_then(|s| s.as_str()).map(String::from));
        match sha {
            Some(sha) if sha == kept.sha256 => {}
            Some(sha) => {
                return Err(Stage::PrefixDiffers(format!(
                    "the first {resume_from} bytes regenerated on {} hash to {sha}, the kept \
                     part's to {}",
                    f.source_host, kept.sha256
                )))
            }
            None => {
                return Err(ModuleError::Remote {
                    what: format!(
                        "regenerating the archive's prefix on host {}",
                        f.source_host
                    ),
                    detail: regenerated.stderr_str().trim().to_string(),
                }
                .into())
            }
        }
    }
    let r = direct_route::run_sender(
        ctx,
        source,
        &f.source_host,
        &Cmd::new("python3")
            .arg(sender.as_str())
            .arg("send")
            .arg(resume_from.to_string().as_str())
            .arg(tar.as_str())
            .arg("--")
            .args(trust.ssh_argv.iter().map(String::as_str)),
        "packagist_storage",
        f.tree.tar_bytes,
    )
    .await?;
    verify(ctx, f, staged, resume_from, source, r).await
}

/// Both ends agree, the part is the whole archive, the source did not change.
async fn verify(
    ctx: &TaskCtx,
    f: &StorageStageFacts,
    staged: &StagedPath,
    resume_from: u64,
    source: &std::sync::Arc<dyn crate::transport::Transport>,
    r: direct_route::SenderResult,
) -> Result<Sent, Stage> {
    let far_sha = first_field(&r.far_stdout);
    let far_err = ctx.secrets.mask(r.far_stderr.trim());
    let size = part_size(ctx, staged).await?;
    if crate::module::artifact::is_disk_full(&far_err) {
        return Err(disk_full(ctx, f, staged, &far_err).await.into());
    }
    let grew = size.parse::<u64>().is_ok_and(|n| n > resume_from);
    if let Some(why) =
        direct_route::refused_before_a_byte(&r, &far_sha, grew, &f.source_host, &ctx.host, &far_err)
    {
        return Err(Stage::DirectRefused(why));
    }
    if let Some(e) = &r.error {
        return Err(ModuleError::Remote {
            what: format!(
                "the direct stream from host {} stopped after {} bytes",
                f.source_host, r.bytes
            ),
            detail: format!("{e} {far_err}"),
        }
        .into());
    }
    if r.tar_rc != Some(0) {
        return Err(ModuleError::Remote {
            what: format!(
                "tar of {} on host {} failed (exit {:?})",
                f.data_dir, f.source_host, r.tar_rc
            ),
            detail: far_err,
        }
        .into());
    }
    if r.ssh_rc != Some(0) || far_sha != r.sent_sha256 || size != r.bytes.to_string() {
        return Err(Stage::Failed {
            error: ModuleError::ProofMismatch {
                what: format!("the archive {} on host {}", staged.part, ctx.host),
                detail: format!(
                    "it has {size} bytes and the bytes written after byte {resume_from} hash \
                     to {far_sha} (ssh exit {:?}), but {} bytes were made on {} and those sent \
                     hash to {}{}",
                    r.ssh_rc,
                    r.bytes,
                    f.source_host,
                    r.sent_sha256,
                    if far_err.is_empty() {
                        String::new()
                    } else {
                        format!(": {far_err}")
                    }
                ),
            },
            // A wrong part must not be resumed after.
            keep_part: false,
        });
    }
    source_unchanged(source, f).await?;
    let hashes = r
        .hashes
        .into_iter()
        .map(|(member, hash)| (source_path(&member), hash.to_ascii_lowercase()))
        .collect();
    Ok(Sent {
        bytes: r.bytes,
        sha256: r.sha256,
        fingerprint: StorageFingerprint::from_hashes(hashes),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packagist::storage_stream::stored_gzip::StoredGzip;

    /// The sender frames a tar exactly as the controller route's StoredGzip does: a part
    /// cut on one route resumes on the other. Runs the real script with python3.
    #[test]
    fn the_sender_frames_the_archive_byte_for_byte_as_ferry_does() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("send.py");
        std::fs::write(&script, SENDER).unwrap();
        let tar_path = dir.path().join("in.tar");
        // The prefix mode frames without looking inside: any bytes, over sizes around
        // the block boundaries.
        for size in [0usize, 1, 65535, 65536, 200_000] {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            std::fs::write(&tar_path, &data).unwrap();
            let mut g = StoredGzip::default();
            let mut framed = Vec::new();
            g.push(&data, &mut framed);
            g.finish(&mut framed);
            let out = std::process::Command::new("python3")
                .arg(&script)
                .arg("prefix")
                .arg(framed.len().to_string())
                .arg(format!("cat {}", tar_path.display()))
                .output()
                .expect("python3 runs");
            let text = String::from_utf8_lossy(&out.stdout);
            let want = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&framed));
            assert!(
                text.contains(&format!("\"bytes\": {}", framed.len())) && text.contains(&want),
                "size {size}: {text} / {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// The send mode on a real tar: the archive the far end gets is ferry's framing of
    /// the tar after the skipped bytes, every file is hashed, both ends' hashes agree.
    #[test]
    fn the_sender_sends_the_rest_and_hashes_every_file() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("send.py");
        std::fs::write(&script, SENDER).unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("composer/acme")).unwrap();
        std::fs::create_dir_all(src.join("artifacts")).unwrap();
        let big: Vec<u8> = (0..300_000).map(|i| (i * 7 % 253) as u8).collect();
        std::fs::write(src.join("composer/acme/a.zip"), &big).unwrap();
        std::fs::write(src.join("artifacts/b.zip"), b"b").unwrap();
        let tar = source_tar_cmd(src.to_str().unwrap()).to_shell();
        let whole = std::process::Command::new("sh")
            .arg("-c")
            .arg(&tar)
            .output()
            .unwrap()
            .stdout;
        let mut g = StoredGzip::default();
        let mut framed = Vec::new();
        g.push(&whole, &mut framed);
        g.finish(&mut framed);
        let out_file = dir.path().join("rest");
        let skip = 70_000usize;
        let mut child = std::process::Command::new("python3")
            .arg(&script)
            .arg("send")
            .arg(skip.to_string())
            .arg(&tar)
            .arg("--")
            .arg("sh")
            .arg("-c")
            .arg(format!("tee {} | sha256sum", out_file.display()))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let out = child.wait_with_output().unwrap();
        drop(stdin);
        let text = String::from_utf8_lossy(&out.stdout);
        let json = text
            .lines()
            .find_map(|l| l.strip_prefix("result "))
            .expect(&text);
        let r: direct_route::SenderResult = serde_json::from_str(json).unwrap();
        assert_eq!(std::fs::read(&out_file).unwrap(), framed[skip..]);
        assert_eq!(r.bytes as usize, framed.len());
        assert_eq!(
            r.sha256,
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&framed))
        );
        assert_eq!(
            r.far_stdout.split_whitespace().next(),
            Some(r.sent_sha256.as_str())
        );
        assert_eq!((r.tar_rc, r.ssh_rc, r.error), (Some(0), Some(0), None));
        let mut want = std::collections::BTreeMap::new();
        want.insert(
            "dist/acme/a.zip".to_string(),
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&big)),
        );
        want.insert(
            "artifact/b.zip".to_string(),
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"b")),
        );
        assert_eq!(r.hashes, want);
        let _ = std::io::stdout().flush();
    }
}
