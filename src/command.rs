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
        self.parts.extend(args.into_iter().map(|a| Part::Arg(a.into())));
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
        for part in &self.parts {
            out.push(match part {
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

/// Quote one word for a POSIX shell. Words made only of safe characters stay as they are,
/// which keeps displayed commands readable.
pub fn quote(word: &str) -> String {
    // shlex::try_quote only fails on NUL bytes, which no shell argument can carry.
    match shlex::try_quote(word) {
        Ok(q) => q.into_owned(),
        Err(_) => shlex::try_quote(&word.replace('\0', ""))
            .map(|q| q.into_owned())
            .unwrap_or_default(),
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
        let c = Cmd::new("test").arg("-d").arg("a'; rm -rf / #");
        assert_eq!(c.to_shell(), r#"test -d 'a'"'"'; rm -rf / #'"#);
    }

    #[test]
    fn secrets_are_masked_in_display_only() {
        let c = Cmd::new("psql").arg("-c").secret("pa ss");
        assert_eq!(c.display(), "psql -c ********");
        assert_eq!(c.to_shell(), "psql -c 'pa ss'");
    }

    #[test]
    fn pipes_join_with_fixed_operators() {
        let c = Cmd::new("cat").arg("a b").pipe(Cmd::new("sha256sum"));
        assert_eq!(c.to_shell(), "cat 'a b' | sha256sum");
    }
}
