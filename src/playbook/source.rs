//! Input files and locations in them: every parse or template error names
//! `file:line:column` and, when known, the field it is about.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The most dots a TOML key may have (the toml crate's recursion limit).
const TOML_KEY_DEPTH: usize = 80;

/// A TOML file as read from disk, kept so byte spans can be turned into line:column.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub path: PathBuf,
    pub text: String,
}

/// A point in a file, 1-based line and column (columns count characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.path.display(), self.line, self.column)
    }
}

/// A parse or validation error in an input file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{location}: {message}{}", field.as_ref().map(|f| format!(" (field `{f}`)")).unwrap_or_default())]
pub struct InputError {
    pub location: Location,
    /// The key the error is about, when it could be told.
    pub field: Option<String>,
    pub message: String,
}

impl SourceFile {
    pub fn new(path: impl Into<PathBuf>, text: impl Into<String>) -> Self {
        SourceFile {
            path: path.into(),
            text: text.into(),
        }
    }

    /// Read a file; a file that cannot be read (missing, a directory, no permission) is
    /// an [`InputError`] at 0:0 (there is no position to point at); bytes that are not
    /// UTF-8 are an error at the first bad byte.
    pub fn read(path: &Path) -> Result<Self, InputError> {
        let bytes = std::fs::read(path).map_err(|e| InputError {
            location: Location {
                path: path.to_path_buf(),
                line: 0,
                column: 0,
            },
            field: None,
            message: format!("cannot read file: {e}"),
        })?;
        match String::from_utf8(bytes) {
            Ok(text) => Ok(SourceFile::new(path, text)),
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                let bytes = e.into_bytes();
                let valid = String::from_utf8_lossy(bytes.get(..at).unwrap_or_default());
                let bad = bytes.get(at).copied().unwrap_or_default();
                let prefix = SourceFile::new(path, valid.into_owned());
                Err(prefix.error_at(
                    Some(at..at),
                    None,
                    format!("not UTF-8 text: byte 0x{bad:02x} is not valid UTF-8"),
                ))
            }
        }
    }

    /// Line and column of a byte offset.
    pub fn locate(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let before = self.text.get(..offset).unwrap_or(&self.text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before
            .get(line_start..)
            .map(|s| s.chars().count())
            .unwrap_or(0)
            + 1;
        Location {
            path: self.path.clone(),
            line,
            column,
        }
    }

    /// An error at a byte span.
    pub fn error_at(
        &self,
        span: Option<Range<usize>>,
        field: Option<String>,
        message: impl Into<String>,
    ) -> InputError {
        let start = span.as_ref().map(|s| s.start).unwrap_or(0);
        InputError {
            location: self.locate(start),
            field: field.or_else(|| span.and_then(|s| self.key_near(s))),
            message: message.into(),
        }
    }

    /// Turn a toml error into an [`InputError`], telling the field from the span.
    pub fn toml_error(&self, e: &toml::de::Error) -> InputError {
        let message = e.message().trim();
        if e.span().is_none() && message == "recursion limit" {
            // toml gives this one no span: find the dotted key it is about.
            if let Some(start) = self.over_deep_key() {
                return self.error_at(
                    Some(start..start),
                    None,
                    format!(
                        "dotted key too deep: more than {TOML_KEY_DEPTH} parts \
                         (recursion limit)"
                    ),
                );
            }
        }
        self.error_at(e.span(), None, message.to_string())
    }

    /// Where the first dotted key of more than [`TOML_KEY_DEPTH`] parts starts.
    fn over_deep_key(&self) -> Option<usize> {
        use toml_parser::lexer::TokenKind;
        let mut dots = 0usize;
        let mut key_start = None;
        for token in toml_parser::Source::new(&self.text).lex() {
            match token.kind() {
                TokenKind::Dot => {
                    dots += 1;
                    if dots >= TOML_KEY_DEPTH {
                        return key_start;
                    }
                }
                TokenKind::Whitespace => {}
                TokenKind::Atom | TokenKind::BasicString | TokenKind::LiteralString => {
                    key_start.get_or_insert(token.span().start());
                }
                _ => {
                    dots = 0;
                    key_start = None;
                }
            }
        }
        None
    }

    /// The key a span is about: the span itself when it covers a key (`key =`), else the
    /// key on the left of `=` on the span's line.
    pub fn key_near(&self, span: Range<usize>) -> Option<String> {
        let text = &self.text;
        let covered = text.get(span.clone())?;
        let after = text.get(span.end..)?.trim_start_matches([' ', '\t']);
        let clean = |k: &str| k.trim().trim_matches('"').trim_matches('\'').to_string();
        // Not a key: nothing, or a table header (`[a=` of a broken file).
        let usable = |k: &String| !k.is_empty() && !k.starts_with('[');
        if after.starts_with('=') && !covered.contains('\n') {
            return Some(clean(covered)).filter(usable);
        }
        let line_start = text
            .get(..span.start)?
            .rfind('\n')
            .map(|i| i + 1)
            .unwrap_or(0);
        let prefix = text.get(line_start..span.start)?;
        let (key, _) = prefix.split_once('=')?;
        Some(clean(key)).filter(usable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_lines_and_columns() {
        let s = SourceFile::new("f.toml", "a = 1\nbé = 2\n");
        assert_eq!(s.locate(0).line, 1);
        let l = s.locate(s.text.find('2').unwrap());
        assert_eq!((l.line, l.column), (2, 6));
    }

    /// toml reports an over-deep dotted key ("recursion limit") without a span.
    #[test]
    fn over_deep_dotted_key_is_located_at_the_key() {
        let deep = vec!["k"; 200].join(".");
        for (text, want) in [
            (format!("a = 1\n[t]\nok.fine = 2\n  {deep} = 1\n"), (4, 3)),
            (format!("a = 1\n\n[x]\n  [{deep}]\nb = 2\n"), (4, 4)),
            (format!("a = 1\nt = {{ x = 1, {deep} = 1 }}\n"), (2, 14)),
        ] {
            let s = SourceFile::new("f.toml", text.as_str());
            let e = toml::from_str::<toml::Table>(&s.text).unwrap_err();
            let e = s.toml_error(&e);
            let at = (e.location.line, e.location.column);
            assert_eq!(at, want, "{text}: {e}");
            assert!(e.message.contains("too deep"), "{e}");
        }
    }

    #[test]
    fn tells_the_key_of_a_value_span() {
        let s = SourceFile::new("f.toml", "[x]\nport = \"no\"\n");
        let start = s.text.find("\"no\"").unwrap();
        let e = s.error_at(Some(start..start + 4), None, "bad");
        assert_eq!(e.field.as_deref(), Some("port"));
        assert_eq!(e.to_string(), "f.toml:2:8: bad (field `port`)");
    }
}
