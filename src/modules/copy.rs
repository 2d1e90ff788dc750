//! `copy`: a file on the host with the given content and attributes.
//!
//! ```toml
//! [task.copy]
//! src = "files/app.conf"          # a laptop file, relative to the playbook (or task file)
//! # content = "port={{ port }}\n" # or the content itself (a template)
//! dest = "/etc/app/app.conf"
//! mode = "0644"                   # optional; owner, group too
//! backup = false                  # true: keep the file replaced as dest.<time>~
//! ```
//!
//! Facts are one remote command: what `dest` is (absent, a file with its mode, owner,
//! group and sha256, a symbolic link, something else) and, when it is a small file, its
//! text, for `--diff`. The decision compares sha256 and attributes: nothing is written
//! when they match. A write streams the content (a large `src` never sits in memory)
//! into a part file beside `dest` (created exclusively, so a link planted there is not
//! followed), checks its sha256 on the host, sets the attributes, and renames it over
//! `dest`: a reader sees the old file or the new one, never half of one. A symbolic link
//! at `dest` is refused, not followed: ferry does not write where a link points.
//! `template` renders its file and then works exactly as this.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::command::Cmd;
use crate::module::{
    Applied, ArgCheck, ArgError, Change, Diff, HostReader, Module, ModuleError, Probe, TaskCtx,
};
use crate::playbook::template::Template;

/// Longest file whose text the facts bring back for `--diff`.
const DIFF_LIMIT: u64 = 64 * 1024;

pub use super::file::Mode;

/// Owner, group and mode wanted on a file (each only when given).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Attrs {
    pub mode: Option<Mode>,
    pub owner: Option<String>,
    pub group: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Copy {
    pub src: Option<Template>,
    pub content: Option<Template>,
    pub dest: Template,
    pub mode: Option<Mode>,
    pub owner: Option<Template>,
    pub group: Option<Template>,
    #[serde(default)]
    pub backup: bool,
}

/// What `dest` is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Dest {
    Absent,
    File {
        mode: u32,
        owner: String,
        group: String,
        sha256: String,
        size: u64,
        /// Its text, when small and UTF-8 (for `--diff`).
        text: Option<String>,
    },
    Link(String),
    Other(String),
}

/// Where the wanted content comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Content {
    /// Rendered text (`content`, or a template).
    Text(String),
    /// A laptop file, streamed at apply.
    File(PathBuf),
}

/// What a copy-like module wants on the host (also `template`'s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Wanted {
    pub dest: String,
    pub content: Content,
    pub sha256: String,
    pub size: u64,
    /// The wanted text when small and UTF-8 (for `--diff`).
    pub text: Option<String>,
    pub attrs: Attrs,
    pub backup: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyFacts {
    pub wanted: Wanted,
    pub dest: Dest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum CopyChange {
    /// Write the content (and the attributes) over `dest`.
    Write {
        wanted: Wanted,
        before: Option<String>,
        existed: bool,
    },
    /// The content is right; set these attributes.
    Attrs {
        dest: String,
        attrs: Attrs,
        before: String,
    },
}

impl Change for CopyChange {
    fn describe(&self) -> String {
        match self {
            CopyChange::Write {
                wanted, existed, ..
            } => format!(
                "{} {} ({} bytes, sha256 {})",
                if *existed { "replace" } else { "create" },
                wanted.dest,
                wanted.size,
                &wanted.sha256[..12.min(wanted.sha256.len())]
            ),
            CopyChange::Attrs { dest, attrs, .. } => {
                format!("set {} on {dest}", describe_attrs(attrs))
            }
        }
    }
    fn commands(&self) -> Vec<String> {
        match self {
            CopyChange::Write { .. } => Vec::new(),
            CopyChange::Attrs { dest, attrs, .. } => {
                attr_cmds(dest, attrs).iter().map(Cmd::display).collect()
            }
        }
    }
    fn diff(&self) -> Option<Diff> {
        Some(match self {
            CopyChange::Write { wanted, before, .. } => Diff {
                what: wanted.dest.clone(),
                before: before.clone().unwrap_or_default(),
                after: wanted
                    .text
                    .clone()
                    .unwrap_or_else(|| format!("({} bytes, not shown)", wanted.size)),
            },
            CopyChange::Attrs {
                dest,
                attrs,
                before,
            } => Diff {
                what: dest.clone(),
                before: before.clone(),
                after: describe_attrs(attrs),
            },
        })
    }
}

fn describe_attrs(a: &Attrs) -> String {
    let mut parts = Vec::new();
    if let Some(m) = a.mode {
        parts.push(format!("mode {}", String::from(m)));
    }
    if let Some(o) = &a.owner {
        parts.push(format!("owner {o}"));
    }
    if let Some(g) = &a.group {
        parts.push(format!("group {g}"));
    }
    parts.join(", ")
}

/// chmod/chown of `path` to `attrs` (operands after `--`).
fn attr_cmds(path: &str, attrs: &Attrs) -> Vec<Cmd> {
    let mut cmds = Vec::new();
    if let Some(m) = attrs.mode {
        cmds.push(Cmd::new("chmod").arg(String::from(m)).arg("--").arg(path));
    }
    if let Some(o) = super::file::owner_spec(&attrs.owner, &attrs.group) {
        cmds.push(Cmd::new("chown").arg(o).arg("--").arg(path));
    }
    cmds
}

/// The facts script: `$1` is dest. Prints `absent`, `link TARGET`, `other KIND` or
/// `file MODE OWNER GROUP SIZE SHA256`, then, for a small file, its bytes.
const FACTS_SH: &str = r#"f=$1
if [ -L "$f" ]; then printf 'link %s\n' "$(readlink -- "$f")"
elif [ -f "$f" ]; then
  set -- $(stat -c '%a %U %G %s' -- "$f") || exit 3
  sum=$(sha256sum < "$f") || exit 3
  printf 'file %s %s %s %s %s\n' "$1" "$2" "$3" "$4" "${sum%% *}"
  if [ "$4" -le LIMIT ]; then cat -- "$f"; fi
elif [ -e "$f" ]; then printf 'other %s\n' "$(stat -c %F -- "$f")"
else echo absent; fi"#;

/// Read what `dest` is on the host.
pub async fn dest_facts(reader: &HostReader, dest: &str) -> Result<Dest, ModuleError> {
    let script = FACTS_SH.replace("LIMIT", &DIFF_LIMIT.to_string());
    let cmd = Cmd::new("sh").arg("-c").arg(script).arg("sh").arg(dest);
    let out = reader.exec_ok(&cmd).await?;
    parse_dest(&out.stdout).map_err(|detail| ModuleError::Remote {
        what: format!("reading {dest} on {}", reader.host),
        detail,
    })
}

fn parse_dest(out: &[u8]) -> Result<Dest, String> {
    let end = out.iter().position(|&b| b == b'\n').unwrap_or(out.len());
    let head = String::from_utf8_lossy(&out[..end]).to_string();
    let body = out.get(end + 1..).unwrap_or_default();
    let mut words = head.splitn(2, ' ');
    match (words.next(), words.next()) {
        (Some("absent"), _) => Ok(Dest::Absent),
        (Some("link"), Some(t)) => Ok(Dest::Link(t.to_string())),
        (Some("other"), Some(k)) => Ok(Dest::Other(k.to_string())),
        (Some("file"), Some(rest)) => {
            let f: Vec<&str> = rest.split(' ').collect();
            let [mode, owner, group, size, sha] = f.as_slice() else {
                return Err(format!("unexpected output: {head}"));
            };
            let size: u64 = size.parse().map_err(|_| format!("bad size in: {head}"))?;
            let text = (size <= DIFF_LIMIT && body.len() as u64 == size)
                .then(|| String::from_utf8(body.to_vec()).ok())
                .flatten();
            Ok(Dest::File {
                mode: u32::from_str_radix(mode, 8).map_err(|_| format!("bad mode in: {head}"))?,
                owner: owner.to_string(),
                group: group.to_string(),
                sha256: sha.to_string(),
                size,
                text,
            })
        }
        _ => Err(format!("unexpected output: {head}")),
    }
}

/// Pure: the change that makes `dest` what is wanted, if any.
pub fn decide_write(wanted: &Wanted, dest: &Dest) -> Result<Vec<CopyChange>, ModuleError> {
    match dest {
        Dest::Link(target) => Err(ModuleError::Precondition(format!(
            "{} is a symbolic link (to {target}); ferry does not write through a link: \
             remove it first (file, state = \"absent\") or copy to the path it points to",
            wanted.dest
        ))),
        Dest::Other(kind) => Err(ModuleError::Precondition(format!(
            "{} is a {kind}, not a file; ferry does not replace it",
            wanted.dest
        ))),
        Dest::Absent => Ok(vec![CopyChange::Write {
            wanted: wanted.clone(),
            before: None,
            existed: false,
        }]),
        Dest::File {
            mode,
            owner,
            group,
            sha256,
            text,
            ..
        } => {
            if sha256 != &wanted.sha256 {
                return Ok(vec![CopyChange::Write {
                    wanted: wanted.clone(),
                    before: text.clone(),
                    existed: true,
                }]);
            }
            let a = &wanted.attrs;
            let differs = Attrs {
                mode: a.mode.filter(|m| m.0 != *mode),
                owner: a.owner.clone().filter(|o| o != owner),
                group: a.group.clone().filter(|g| g != group),
            };
            if differs == Attrs::default() {
                return Ok(Vec::new());
            }
            let before = describe_attrs(&Attrs {
                mode: differs.mode.map(|_| Mode(*mode)),
                owner: differs.owner.as_ref().map(|_| owner.clone()),
                group: differs.group.as_ref().map(|_| group.clone()),
            });
            Ok(vec![CopyChange::Attrs {
                dest: wanted.dest.clone(),
                attrs: differs,
                before,
            }])
        }
    }
}

/// The part file beside `dest` that a write goes through.
fn part_path(dest: &str) -> String {
    let (dir, name) = match dest.rsplit_once('/') {
        Some((dir, name)) => (if dir.is_empty() { "/" } else { dir }, name),
        None => (".", dest),
    };
    format!("{}/.{name}.ferry-part", dir.trim_end_matches('/'))
}

/// Make the changes (shared by `copy` and `template`).
pub async fn apply_writes(ctx: &TaskCtx, changes: &[CopyChange]) -> Result<Applied, ModuleError> {
    for change in changes {
        match change {
            CopyChange::Attrs { dest, attrs, .. } => {
                for cmd in attr_cmds(dest, attrs) {
                    ctx.exec_ok(&cmd).await?;
                }
            }
            CopyChange::Write {
                wanted, existed, ..
            } => write(ctx, wanted, *existed).await?,
        }
    }
    Ok(Applied::changed())
}

async fn write(ctx: &TaskCtx, wanted: &Wanted, existed: bool) -> Result<(), ModuleError> {
    let part = part_path(&wanted.dest);
    // Exclusively created (noclobber): a link or file planted at the part path is not
    // followed or reused. umask 077 until the mode is set.
    let receive = Cmd::new("sh")
        .arg("-c")
        .arg("umask 077; rm -f -- \"$1\" && set -C && cat > \"$1\"")
        .arg("sh")
        .arg(&part);
    let mut stream = ctx.transport.exec_stream(&receive).await?;
    let io = |what: &str| {
        let what = format!("{what} {} on {}", wanted.dest, ctx.host);
        move |source| ModuleError::Io { what, source }
    };
    match &wanted.content {
        Content::Text(text) => stream
            .stdin
            .write_all(text.as_bytes())
            .await
            .map_err(io("sending the content of"))?,
        Content::File(path) => {
            let mut file = tokio::fs::File::open(path)
                .await
                .map_err(io(&format!("reading {} for", path.display())))?;
            tokio::io::copy(&mut file, &mut stream.stdin)
                .await
                .map_err(io("sending the content of"))?;
        }
    }
    stream
        .stdin
        .shutdown()
        .await
        .map_err(io("sending the content of"))?;
    let mut sink = Vec::new();
    let _ = stream.stdout.read_to_end(&mut sink).await;
    let exit = stream.exit.await?;
    if exit.status != Some(0) {
        return Err(ModuleError::Remote {
            what: format!("writing {part} on {}", ctx.host),
            detail: ctx
                .secrets
                .mask(String::from_utf8_lossy(&exit.stderr).trim()),
        });
    }
    // Check, set the attributes, keep a backup, rename: one command.
    let mut script = String::from(
        "p=$1; d=$2; want=$3; backup=$4\n\
         sum=$(sha256sum < \"$p\"); sum=${sum%% *}\n\
         if [ \"$sum\" != \"$want\" ]; then rm -f -- \"$p\"; echo \"the part file's sha256 is $sum, not $want\" >&2; exit 3; fi\n",
    );
    for cmd in attr_cmds("$PART", &wanted.attrs) {
        script.push_str(&cmd.to_shell().replace("'$PART'", "\"$p\""));
        script.push_str(" || { rm -f -- \"$p\"; exit 4; }\n");
    }
    script.push_str(
        "if [ \"$backup\" = 1 ] && [ -f \"$d\" ]; then cp -p -- \"$d\" \"$d.$(date +%Y%m%dT%H%M%S)~\" || exit 5; fi\n\
         mv -f -- \"$p\" \"$d\"\n",
    );
    let cmd = Cmd::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .arg(&part)
        .arg(&wanted.dest)
        .arg(&wanted.sha256)
        .arg(if wanted.backup && existed { "1" } else { "0" });
    ctx.exec_ok(&cmd).await?;
    Ok(())
}

/// The wanted file from text (`content`, a rendered template).
pub fn wanted_text(dest: String, text: String, attrs: Attrs, backup: bool) -> Wanted {
    let sha256 = hex::encode(Sha256::digest(text.as_bytes()));
    let size = text.len() as u64;
    Wanted {
        dest,
        sha256,
        size,
        text: (size <= DIFF_LIMIT).then(|| text.clone()),
        content: Content::Text(text),
        attrs,
        backup,
    }
}

/// The wanted file from a laptop file: hashed here, streamed at apply.
async fn wanted_file(
    dest: String,
    path: PathBuf,
    attrs: Attrs,
    backup: bool,
) -> Result<Wanted, ModuleError> {
    let io = |source| ModuleError::Io {
        what: format!("reading {}", path.display()),
        source,
    };
    let mut file = tokio::fs::File::open(&path).await.map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    let mut head = Vec::new();
    loop {
        let n = file.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if size <= DIFF_LIMIT {
            head.extend_from_slice(&buf[..n]);
        }
        size += n as u64;
    }
    let text = (size <= DIFF_LIMIT)
        .then(|| String::from_utf8(head).ok())
        .flatten();
    Ok(Wanted {
        dest,
        sha256: hex::encode(hasher.finalize()),
        size,
        text,
        content: Content::File(path),
        attrs,
        backup,
    })
}

/// `src` relative to the file the task is written in.
pub fn local_path(base: &Path, src: &str) -> PathBuf {
    let p = Path::new(src);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Rendered attribute templates of a copy-like module.
pub fn render_attrs(
    r: &HostReader,
    mode: Option<Mode>,
    owner: &Option<Template>,
    group: &Option<Template>,
) -> Result<Attrs, ModuleError> {
    Ok(Attrs {
        mode,
        owner: owner.as_ref().map(|t| r.render_operand(t)).transpose()?,
        group: group.as_ref().map(|t| r.render_operand(t)).transpose()?,
    })
}

#[async_trait]
impl Module for Copy {
    type Facts = CopyFacts;
    type Change = CopyChange;
    const TEXT_FIELDS: &'static [&'static str] = &["content"];

    fn check_args(&self, at: &ArgCheck<'_>) -> Result<(), ArgError> {
        match (&self.src, &self.content) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(ArgError::field(
                    "src",
                    "give exactly one of `src` (a file beside the playbook) and `content`",
                ))
            }
            (Some(src), None) => {
                let rendered = at.render(src)?;
                let path = local_path(at.base_dir, &rendered);
                if !path.is_file() {
                    return Err(ArgError::template(
                        src,
                        format!("no file {} on this machine", path.display()),
                    ));
                }
            }
            (None, Some(_)) => {}
        }
        Ok(())
    }

    async fn facts(&self, probe: &Probe<'_>) -> Result<CopyFacts, ModuleError> {
        let dest = probe.render_operand(&self.dest)?;
        let attrs = render_attrs(probe, self.mode, &self.owner, &self.group)?;
        let wanted = match (&self.src, &self.content) {
            (Some(src), _) => {
                let path = local_path(&probe.base_dir, &probe.render(src)?);
                wanted_file(dest.clone(), path, attrs, self.backup).await?
            }
            (None, Some(content)) => {
                wanted_text(dest.clone(), probe.render(content)?, attrs, self.backup)
            }
            (None, None) => {
                return Err(ModuleError::Precondition("give `src` or `content`".into()))
            }
        };
        Ok(CopyFacts {
            dest: dest_facts(probe, &dest).await?,
            wanted,
        })
    }

    fn decide(&self, facts: &CopyFacts) -> Result<Vec<CopyChange>, ModuleError> {
        decide_write(&facts.wanted, &facts.dest)
    }

    async fn apply(
        &self,
        ctx: &TaskCtx,
        _: &CopyFacts,
        changes: &[CopyChange],
    ) -> Result<Applied, ModuleError> {
        apply_writes(ctx, changes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str, mode: u32) -> Dest {
        Dest::File {
            mode,
            owner: "root".into(),
            group: "root".into(),
            sha256: hex::encode(Sha256::digest(text.as_bytes())),
            size: text.len() as u64,
            text: Some(text.into()),
        }
    }

    fn wanted(text: &str, mode: Option<u32>) -> Wanted {
        wanted_text(
            "/etc/x".into(),
            text.into(),
            Attrs {
                mode: mode.map(Mode),
                ..Attrs::default()
            },
            false,
        )
    }

    #[test]
    fn same_content_and_attrs_is_no_change() {
        assert!(
            decide_write(&wanted("a\n", Some(0o644)), &file("a\n", 0o644))
                .unwrap()
                .is_empty()
        );
        // Attributes not given are not compared.
        assert!(decide_write(&wanted("a\n", None), &file("a\n", 0o600))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn other_content_is_written_with_a_diff_of_the_text() {
        let c = decide_write(&wanted("b\n", None), &file("a\n", 0o644)).unwrap();
        assert!(
            matches!(&c[0], CopyChange::Write { existed: true, .. }),
            "{c:?}"
        );
        let diff = c[0].diff().unwrap().unified();
        assert!(diff.contains("-a\n+b\n"), "{diff}");
        let c = decide_write(&wanted("b\n", None), &Dest::Absent).unwrap();
        assert!(
            c[0].describe().starts_with("create /etc/x (2 bytes"),
            "{}",
            c[0].describe()
        );
    }

    #[test]
    fn only_the_mode_differs_then_only_the_mode_is_set() {
        let c = decide_write(&wanted("a\n", Some(0o600)), &file("a\n", 0o644)).unwrap();
        assert_eq!(c[0].commands(), vec!["chmod 0600 -- /etc/x"]);
        assert_eq!(c[0].diff().unwrap().before, "mode 0644");
    }

    #[test]
    fn a_link_or_a_directory_at_dest_is_refused() {
        let e = decide_write(&wanted("a", None), &Dest::Link("/etc/shadow".into())).unwrap_err();
        assert!(
            e.to_string().contains("symbolic link (to /etc/shadow)"),
            "{e}"
        );
        assert!(decide_write(&wanted("a", None), &Dest::Other("directory".into())).is_err());
    }

    #[test]
    fn the_facts_output_is_read() {
        assert_eq!(parse_dest(b"absent\n").unwrap(), Dest::Absent);
        assert_eq!(
            parse_dest(b"link /x y\n").unwrap(),
            Dest::Link("/x y".into())
        );
        let d = parse_dest(b"file 644 root adm 2 abc\nhi").unwrap();
        assert!(
            matches!(d, Dest::File { mode: 0o644, size: 2, ref text, .. } if text.as_deref() == Some("hi"))
        );
        assert!(parse_dest(b"file 644 root\n").is_err());
    }

    #[test]
    fn the_part_file_is_beside_dest() {
        assert_eq!(part_path("/etc/app.conf"), "/etc/.app.conf.ferry-part");
        assert_eq!(part_path("/x"), "/.x.ferry-part");
    }
}
