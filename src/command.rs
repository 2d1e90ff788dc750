//! A command to run on a host, as a value: argv parts that are shell-quoted when the
//! command is turned into the single string an SSH exec needs, and secret parts that are
//! masked whenever the command is displayed (logs, events, report, journal).
//!
//! Never build a remote command with `format!`: build a [`Cmd`] and let it quote.

use std::fmt;

/// One piece of a command line.
#[derive(Clone, PartialEq, Eq)]
enum Part {
    /// An argument, quoted for the shell when rendered.
    Arg(String),
    /// An argument that is a secret: quoted when rendered, masked when displayed.
    Secret(String),
    /// A fixed shell operator such as `|`, `&&`, `>` or `2>&1`. Only `&'static str`,
    /// so no runtime value can ever be spliced into the shell unquoted.
    Op(&'static str),
    /// A whole script already quoted by construction (e.g. a rendered `ShellTemplate`,
    /// whose interpolated values were quoted by the template engine). `display` is the
    /// masked form.
    Script { text: String, display: String },
}

/// The mask printed in place of a secret.
pub const MASK: &str = "********";

/// A command line for `sh -c` on a remote host.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Cmd {
    parts: Vec<Part>,
}

impl Cmd {
    /// A command starting with `program`.
    pub fn new(program: impl Into<String>) -> Self {
        Cmd {
            parts: vec![Part::Arg(program.into())],
        }
    }

    /// A pre-quoted script (see [`Part::Script`]); `display` must already be masked.
    pub fn script(text: impl Into<String>, display: impl Into<String>) -> Self {
        Cmd {
            parts: vec![Part::Script {
                text: text.into(),
                display: display.into(),
            }],
        }
    }

    /// Append one argument.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.parts.push(Part::Arg(arg.into()));
        self
    }

    /// Append several arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.parts
            .extend(args.into_iter().map(|a| Part::Arg(a.into())));
        self
    }

    /// Append an argument that must never be shown.
    pub fn secret(mut self, arg: impl Into<String>) -> Self {
        self.parts.push(Part::Secret(arg.into()));
        self
    }

    /// Append a fixed shell operator (`|`, `&&`, `||`, `;`, `>`, `2>&1`, ...).
    pub fn op(mut self, op: &'static str) -> Self {
        self.parts.push(Part::Op(op));
        self
    }

    /// Append a whole command as ONE quoted argument, e.g. the script of `bash -c`.
    /// Displayed with the inner command's masking intact.
    pub fn arg_cmd(mut self, inner: &Cmd) -> Self {
        self.parts.push(Part::Script {
            text: quote(&inner.to_shell()),
            display: quote(&inner.display()),
        });
        self
    }

    /// The words of a simple command (only arguments: no operators, scripts or
    /// secrets), e.g. to hand it to a wrapper such as `flock DIR CMD…` as its argv.
    pub fn words(&self) -> Option<Vec<String>> {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Arg(a) => Some(a.clone()),
                _ => None,
            })
            .collect()
    }

    /// `self ; next`
    pub fn then(self, next: Cmd) -> Self {
        self.then_with(";", next)
    }

    /// `self | next`
    pub fn pipe(self, next: Cmd) -> Self {
        self.then_with("|", next)
    }

    /// `self && next`
    pub fn and(self, next: Cmd) -> Self {
        self.then_with("&&", next)
    }

    fn then_with(mut self, op: &'static str, next: Cmd) -> Self {
        self.parts.push(Part::Op(op));
        self.parts.extend(next.parts);
        self
    }

    /// Why this command would change its host, if it plainly would: output redirected to
    /// a file, or a simple command whose program (and, for `docker`, `kubectl` and
    /// `redis-cli`, subcommand) writes. `None` for everything else, which includes
    /// pre-quoted scripts: they are read as their module's own code. Used by the facts
    /// guard ([`crate::transport::read_only`]).
    pub fn writes(&self) -> Option<String> {
        const WRITERS: &[&str] = &[
            "rm",
            "rmdir",
            "mv",
            "cp",
            "tee",
            "dd",
            "mkdir",
            "chmod",
            "chown",
            "chgrp",
            "ln",
            "truncate",
            "touch",
            "install",
            "kill",
            "pkill",
            "killall",
            "systemctl",
            "tar",
            "gzip",
            "pg_restore",
            "apt-get",
            "dnf",
            "yum",
            "useradd",
            "usermod",
            "userdel",
            "groupadd",
            "groupdel",
            "mkfifo",
            "shred",
            "sync",
        ];
        const SUBCOMMANDS: &[(&str, &[&str])] = &[
            (
                "docker",
                &[
                    "stop", "start", "restart", "kill", "rm", "run", "create", "update", "cp",
                    "pull", "rename",
                ],
            ),
            (
                "kubectl",
                &[
                    "scale", "delete", "apply", "patch", "create", "edit", "replace", "cp",
                    "rollout", "label", "annotate",
                ],
            ),
            (
                "redis-cli",
                &[
                    "FLUSHDB",
                    "FLUSHALL",
                    "SET",
                    "DEL",
                    "SAVE",
                    "BGSAVE",
                    "BGREWRITEAOF",
                    "SHUTDOWN",
                ],
            ),
        ];
        let mut at_start = true;
        let mut program: Option<&str> = None;
        for part in &self.parts {
            match part {
                Part::Op(op) if matches!(*op, "|" | "&&" | "||" | ";") => {
                    at_start = true;
                    program = None;
                }
                Part::Op(op) if op.contains('>') && !op.ends_with("&1") && !op.ends_with("&2") => {
                    return Some(format!("output redirected with `{op}`"));
                }
                Part::Arg(a) | Part::Secret(a) if at_start => {
                    at_start = false;
                    let name = a.rsplit('/').next().unwrap_or(a);
                    if WRITERS.contains(&name) {
                        return Some(format!("`{name}` writes"));
                    }
                    program = Some(name);
                }
                Part::Arg(a) => {
                    if let Some((prog, subs)) =
                        SUBCOMMANDS.iter().find(|(p, _)| Some(*p) == program)
                    {
                        if subs.iter().any(|s| s.eq_ignore_ascii_case(a)) {
                            return Some(format!("`{prog} {a}` writes"));
                        }
                    }
                }
                _ => at_start = false,
            }
        }
        None
    }

    /// The exact string handed to the remote shell. Contains secrets: never log it.
    pub fn to_shell(&self) -> String {
        self.render(false)
    }

    /// The masked form, safe for logs, events, reports and the journal.
    pub fn display(&self) -> String {
        self.render(true)
    }

    fn render(&self, masked: bool) -> String {
        let mut out = Vec::with_capacity(self.parts.len());
        for (i, part) in self.parts.iter().enumerate() {
            out.push(match part {
                // A leading `NAME=value` word would be a variable assignment, not a
                // program: quote the first word strictly.
                Part::Arg(a) if i == 0 => quote_strict(a),
                Part::Arg(a) => quote(a),
                Part::Secret(s) if masked => {
                    let _ = s;
                    MASK.to_string()
                }
                Part::Secret(s) => quote(s),
                Part::Op(op) => (*op).to_string(),
                Part::Script { display, .. } if masked => display.clone(),
                Part::Script { text, .. } => text.clone(),
            });
        }
        out.join(" ")
    }
}

/// Quote one word for a POSIX shell, as an argument (not in command position). Words
/// made only of characters that are never special stay as they are, which keeps
/// displayed commands (and the kubectl hints) readable.
pub fn quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        return word.to_string();
    }
    quote_strict(word)
}

/// Quote one word for a POSIX shell with shlex's conservative rules.
pub fn quote_strict(word: &str) -> String {
    // shlex::try_quote only fails on NUL bytes, which no shell argument can carry.
    match shlex::try_quote(word) {
        Ok(q) => q.into_owned(),
        Err(_) => shlex::try_quote(&word.replace('\0', ""))
            .map(|q| q.into_owned())
            .unwrap_or_default(),
    }
}

/// Serialized (facts, plans, journal) as its masked display: a secret can never leak
/// through a serialized command.
impl serde::Serialize for Cmd {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.display())
    }
}

impl fmt::Debug for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Cmd({})", self.display())
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_values_are_quoted() {
        for hostile in ["a'; rm -rf / #", "$(id)", "`id`", "a\nb", "\"; echo x", "*"] {
            let c = Cmd::new("test").arg("-d").arg(hostile);
            // What a POSIX shell would see: exactly three words, the last one intact.
            let words = shlex::split(&c.to_shell()).expect("valid shell words");
            assert_eq!(words, vec!["test", "-d", hostile]);
        }
        // And a real shell agrees.
        let c = Cmd::new("printf").arg("%s").arg("a'; echo INJECTED #$(id)");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(c.to_shell())
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "a'; echo INJECTED #$(id)"
        );
    }

    #[test]
    fn secrets_are_masked_in_display_only() {
        let c = Cmd::new("psql").arg("-c").secret("pa ss");
        assert_eq!(c.display(), "psql -c ********");
        assert_eq!(c.to_shell(), "psql -c 'pa ss'");
    }

    #[test]
    fn plain_words_stay_readable_but_first_word_is_strict() {
        assert_eq!(
            Cmd::new("kubectl").arg("--replicas=0").to_shell(),
            "kubectl --replicas=0"
        );
        assert_eq!(Cmd::new("A=b").to_shell(), "'A=b'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("$(x)"), "'$(x)'");
    }

    #[test]
    fn nested_commands_keep_masking_and_quote_once_more() {
        let inner = Cmd::new("echo").secret("s3cr'et").pipe(Cmd::new("cat"));
        let outer = Cmd::new("bash").arg("-c").arg_cmd(&inner);
        assert!(!outer.display().contains("s3cr"), "{}", outer.display());
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(outer.to_shell())
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "s3cr'et\n");
    }

    #[test]
    fn pipes_join_with_fixed_operators() {
        let c = Cmd::new("cat").arg("a b").pipe(Cmd::new("sha256sum"));
        assert_eq!(c.to_shell(), "cat 'a b' | sha256sum");
    }
}
