//! Where a value may be interpolated in a shell template.
//!
//! Values are quoted as ONE plain argument word (`'a b'`). That only protects them where
//! the shell reads a plain argument word: inside the author's own `"…"` the quotes
//! become literal characters (and `$(…)` in the value runs), in a here-document or a
//! comment a newline in the value starts a new command, and in command position a value
//! such as `PATH=/x` becomes an assignment or the program itself. So the template is
//! parsed (Handlebars AST, not its text) and the shell text around every interpolation
//! is lexed; a value anywhere but in an argument word (or the value part of a literal
//! `NAME=` assignment) is refused, with its line and column in the template.
//!
//! Block helpers (`{{#if}}`, `{{#each}}` …) may render their body zero or more times, so
//! each body is lexed from the state before the block, and a block that leaves the
//! quoting different (a quote, comment, here-document or backslash opened but not closed
//! inside it) is refused: the context of what follows could not be told.
//!
//! This file is over 600 lines on purpose: it is one lexer (a state machine over the
//! POSIX shell's quoting, comments, here-documents and command positions), and cutting
//! its states apart would make the transitions harder to read, not easier. Its tests
//! go through the templates that use it (`src/playbook/template/tests.rs`,
//! `tests/core_cli.rs`, `tests/security_argv.rs`).

use handlebars::template::{Template as Ast, TemplateElement};

/// Why a shell template is refused, and where in the template (1-based line, column).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ShellCheckError {
    pub message: String,
    pub position: Option<(usize, usize)>,
}

/// Refuse a shell template that has raw output or a value where quoting cannot protect
/// it. A template that does not compile passes here: rendering reports that error, with
/// its location.
pub fn check(source: &str) -> Result<(), ShellCheckError> {
    let Ok(ast) = Ast::compile(source) else {
        return Ok(());
    };
    let mut lexer = Lexer::default();
    lexer.walk(&ast, Some((1, 1)))
}

/// Words that keep the next word in command position: shell keywords, and the common
/// commands whose first operand is itself a command.
const COMMAND_PREFIXES: &[&str] = &[
    "if", "then", "else", "elif", "do", "while", "until", "!", "{", "time", "exec", "command",
    "builtin", "nohup", "sudo", "doas", "env", "nice", "xargs",
];

/// Commands that run their arguments as shell code.
const CODE_RUNNERS: &[&str] = &["eval"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// An argument or the command word.
    Normal,
    /// The file (or fd) of a redirection.
    Redirect,
    /// The delimiter of a here-document (`<<EOF`); `true`: `<<-` (leading tabs stripped).
    HeredocDelimiter(bool),
}

/// The word being read at one command level.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Word {
    target: Target,
    /// The word started in command position.
    command: bool,
    /// It began with a literal `NAME=`: the rest is an assignment's value.
    assignment: bool,
    /// Every character so far is a literal name character (`[A-Za-z_][A-Za-z0-9_]*`).
    name_so_far: bool,
    /// Every character so far is a literal digit (an fd number before `>`).
    digits: bool,
    /// Its literal characters, quotes removed (for keywords and here-doc delimiters).
    literal: String,
}

/// One command level: the template itself, or the inside of a `$(…)`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Frame {
    /// The next word starts a command (true at the start, after `;`, `|`, newline …).
    command_position: bool,
    /// The next word is a redirection target.
    redirect: bool,
    /// The next word is a here-document delimiter.
    heredoc_delimiter: Option<bool>,
    /// The current simple command is `eval …`: its arguments are code.
    code_arguments: bool,
    /// Open `(` of subshells at this level.
    parens: usize,
    word: Option<Word>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Command(Frame),
    Single,
    Double,
    Backquote,
    /// `${…}`, with the depth of inner `{`.
    Brace(usize),
    /// `$((…))`, with the depth of inner `(`.
    Arithmetic(usize),
}

/// A here-document being read: its delimiter, tab stripping, and the current line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HeredocBody {
    delimiter: String,
    strip_tabs: bool,
    line: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Lexer {
    levels: Vec<Level>,
    comment: bool,
    /// The previous character was an unquoted-context backslash.
    escaped: bool,
    /// The previous text ended with a `$` that starts nothing yet.
    dollar: bool,
    /// Here-documents announced on the current line, read after its newline.
    pending_heredocs: Vec<(String, bool)>,
    heredoc: Option<HeredocBody>,
}

impl Default for Lexer {
    fn default() -> Self {
        Lexer {
            levels: vec![Level::Command(Frame {
                command_position: true,
                ..Frame::default()
            })],
            comment: false,
            escaped: false,
            dollar: false,
            pending_heredocs: Vec::new(),
            heredoc: None,
        }
    }
}

fn refuse(position: Option<(usize, usize)>, message: impl Into<String>) -> ShellCheckError {
    ShellCheckError {
        message: message.into(),
        position,
    }
}

const REMEDY: &str = "values are quoted for you as one argument word";

impl Lexer {
    fn walk(&mut self, ast: &Ast, at: Option<(usize, usize)>) -> Result<(), ShellCheckError> {
        for (i, element) in ast.elements.iter().enumerate() {
            let position = ast.mapping.get(i).map(|m| (m.0, m.1)).or(at);
            match element {
                TemplateElement::RawString(text) => self.text(text),
                TemplateElement::Comment(_) => {}
                // `{{x}}`, `{{quote x}}`, `{{lookup …}}`: the output goes through the
                // escape function (or the quote helper) as one quoted word.
                TemplateElement::Expression(_) => self.value(position)?,
                // `{{{x}}}`, `{{&x}}`, `{{ {x} }}`, `{{~&x~}}` … : unescaped output.
                TemplateElement::HtmlExpression(_) => {
                    return Err(refuse(
                        position,
                        format!(
                            "raw interpolation ({{{{{{…}}}}}} or {{{{&…}}}}, in any spelling) is \
                             not allowed in a shell command; use {{{{name}}}}: {REMEDY}"
                        ),
                    ))
                }
                TemplateElement::HelperBlock(block) => {
                    let entry = self.clone();
                    let mut merged = entry.clone();
                    if let Some(body) = &block.template {
                        // Zero or more times: lex it until the merged state is stable.
                        let mut current = entry.clone();
                        for _ in 0..3 {
                            current.walk(body, position)?;
                            let next = merged.merge(&current, position)?;
                            if next == merged {
                                break;
                            }
                            merged = next;
                            current = merged.clone();
                        }
                    }
                    if let Some(inverse) = &block.inverse {
                        let mut current = entry.clone();
                        current.walk(inverse, position)?;
                        merged = merged.merge(&current, position)?;
                    }
                    *self = merged;
                }
                TemplateElement::DecoratorExpression(_)
                | TemplateElement::DecoratorBlock(_)
                | TemplateElement::PartialExpression(_)
                | TemplateElement::PartialBlock(_) => {
                    return Err(refuse(
                        position,
                        "partials and decorators ({{> …}}, {{* …}}) are not supported in a \
                         shell command",
                    ))
                }
                // A future element kind: refuse rather than guess its output.
                _ => {
                    return Err(refuse(
                        position,
                        "this template construct is not supported in a shell command",
                    ))
                }
            }
        }
        Ok(())
    }

    /// The state after either of two paths: quoting must agree; a word is in command
    /// position (or an assignment's value …) only if it is on both paths, the
    /// conservative reading for each check.
    fn merge(&self, other: &Lexer, at: Option<(usize, usize)>) -> Result<Lexer, ShellCheckError> {
        let changed = || {
            refuse(
                at,
                "a {{#…}} block changes the shell quoting (a quote, comment, here-document, \
                 `$(…)` or backslash opened in the block is not closed in it); keep each quoted \
                 string whole inside one branch",
            )
        };
        if self.comment != other.comment
            || self.escaped != other.escaped
            || self.dollar != other.dollar
            || self.pending_heredocs != other.pending_heredocs
            || self.heredoc != other.heredoc
            || self.levels.len() != other.levels.len()
        {
            return Err(changed());
        }
        let mut levels = Vec::with_capacity(self.levels.len());
        for (a, b) in self.levels.iter().zip(&other.levels) {
            levels.push(match (a, b) {
                (Level::Command(a), Level::Command(b)) => {
                    if a.heredoc_delimiter != b.heredoc_delimiter || a.parens != b.parens {
                        return Err(changed());
                    }
                    let word = match (&a.word, &b.word) {
                        (Some(x), Some(y)) if x.target != y.target => return Err(changed()),
                        (Some(x), Some(y)) => Some(Word {
                            target: x.target,
                            command: x.command || y.command,
                            assignment: x.assignment && y.assignment,
                            name_so_far: x.name_so_far && y.name_so_far,
                            digits: x.digits && y.digits,
                            literal: if x.literal == y.literal {
                                x.literal.clone()
                            } else {
                                String::new()
                            },
                        }),
                        (Some(x), None) | (None, Some(x)) => Some(x.clone()),
                        (None, None) => None,
                    };
                    Level::Command(Frame {
                        command_position: a.command_position || b.command_position,
                        redirect: a.redirect || b.redirect,
                        heredoc_delimiter: a.heredoc_delimiter,
                        code_arguments: a.code_arguments || b.code_arguments,
                        parens: a.parens,
                        word,
                    })
                }
                (a, b) if a == b => a.clone(),
                _ => return Err(changed()),
            });
        }
        Ok(Lexer {
            levels,
            ..self.clone()
        })
    }

    /// An interpolated value at the current point.
    fn value(&mut self, at: Option<(usize, usize)>) -> Result<(), ShellCheckError> {
        if self.heredoc.is_some() {
            return Err(refuse(
                at,
                "a template value inside a here-document body is not quoted by the shell (a \
                 newline or `$(…)` in it would run); pass it as an argument instead",
            ));
        }
        if self.comment {
            return Err(refuse(
                at,
                "a template value in a comment (after `#`) ends the comment at its first \
                 newline; remove it from the comment",
            ));
        }
        if self.escaped {
            return Err(refuse(
                at,
                "a template value right after a backslash: the backslash would escape the \
                 value's opening quote; remove the backslash",
            ));
        }
        if self.dollar {
            return Err(refuse(
                at,
                format!(
                    "a template value right after `$` would be read as $'…' (escapes \
                     interpreted); remove the `$`: {REMEDY}"
                ),
            ));
        }
        let inside = match self.levels.last_mut() {
            Some(Level::Command(frame)) => {
                if frame.heredoc_delimiter.is_some() {
                    return Err(refuse(
                        at,
                        "a template value as a here-document delimiter is not allowed",
                    ));
                }
                if frame.code_arguments {
                    return Err(refuse(
                        at,
                        "a template value as an argument of `eval` is run as shell code; \
                         pass it as a plain argument to a command instead",
                    ));
                }
                let word = start_word(frame);
                if word.command && !word.assignment {
                    return Err(refuse(
                        at,
                        "a template value in command position (the first word of a command) \
                         would become the command itself or an assignment such as `PATH=…`; \
                         write the command literally and pass values as its arguments",
                    ));
                }
                word.name_so_far = false;
                word.digits = false;
                return Ok(());
            }
            Some(Level::Single) => "single quotes ('…')",
            Some(Level::Double) => "double quotes (\"…\")",
            Some(Level::Backquote) => "backquotes (`…`; use $(…) instead)",
            Some(Level::Brace(_)) => "a parameter expansion ${…}",
            Some(Level::Arithmetic(_)) => "arithmetic $((…))",
            None => "an unknown context",
        };
        Err(refuse(
            at,
            format!(
                "a template value is wrapped in quotes or an expansion: inside {inside}, where \
                 the value's own quoting does not apply; remove them: {REMEDY}"
            ),
        ))
    }

    fn text(&mut self, text: &str) {
        let chars: Vec<char> = text.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let next = chars.get(i + 1).copied();
            let after = chars.get(i + 2).copied();
            i += self.char(chars[i], next, after);
        }
    }

    /// Read one character (with two of lookahead); returns how many were consumed.
    fn char(&mut self, c: char, next: Option<char>, after: Option<char>) -> usize {
        self.dollar = false;
        if let Some(body) = &mut self.heredoc {
            if c == '\n' {
                let line = if body.strip_tabs {
                    body.line.trim_start_matches('\t')
                } else {
                    body.line.as_str()
                };
                if line == body.delimiter {
                    self.heredoc = self.next_heredoc();
                } else {
                    body.line.clear();
                }
            } else {
                body.line.push(c);
            }
            return 1;
        }
        if self.escaped {
            self.escaped = false;
            if c != '\n' {
                self.quoted_char(c);
            }
            return 1;
        }
        if self.comment {
            if c != '\n' {
                return 1;
            }
            self.comment = false;
        }
        match self.levels.last_mut() {
            Some(Level::Single) => {
                if c == '\'' {
                    self.levels.pop();
                } else {
                    self.quoted_char(c);
                }
                1
            }
            Some(Level::Double) => match c {
                '"' => {
                    self.levels.pop();
                    1
                }
                '\\' => {
                    self.escaped = true;
                    1
                }
                '`' => {
                    self.levels.push(Level::Backquote);
                    1
                }
                '$' => self.dollar(next, after),
                _ => {
                    self.quoted_char(c);
                    1
                }
            },
            Some(Level::Backquote) => {
                match c {
                    '`' => {
                        self.levels.pop();
                    }
                    '\\' => self.escaped = true,
                    _ => {}
                }
                1
            }
            Some(Level::Brace(depth)) => match c {
                '}' if *depth == 0 => {
                    self.levels.pop();
                    1
                }
                '}' => {
                    *depth -= 1;
                    1
                }
                '{' => {
                    *depth += 1;
                    1
                }
                '\'' => {
                    self.levels.push(Level::Single);
                    1
                }
                '"' => {
                    self.levels.push(Level::Double);
                    1
                }
                '\\' => {
                    self.escaped = true;
                    1
                }
                '$' => self.dollar(next, after),
                _ => 1,
            },
            Some(Level::Arithmetic(depth)) => match c {
                ')' if *depth == 0 && next == Some(')') => {
                    self.levels.pop();
                    2
                }
                ')' => {
                    *depth = depth.saturating_sub(1);
                    1
                }
                '(' => {
                    *depth += 1;
                    1
                }
                '$' => self.dollar(next, after),
                _ => 1,
            },
            Some(Level::Command(_)) => self.unquoted(c, next, after),
            None => 1,
        }
    }

    /// A character at a command level, outside any quotes.
    fn unquoted(&mut self, c: char, next: Option<char>, after: Option<char>) -> usize {
        let nested = self.levels.len() > 1;
        let Some(Level::Command(frame)) = self.levels.last_mut() else {
            return 1;
        };
        match c {
            ' ' | '\t' => {
                self.end_word();
                1
            }
            '\n' => {
                self.end_word();
                self.command_starts();
                if !self.pending_heredocs.is_empty() {
                    self.heredoc = self.next_heredoc();
                }
                1
            }
            ';' | '&' | '|' => {
                self.end_word();
                self.command_starts();
                // `&&`, `||`, `;;`, `|&`
                match next {
                    Some(n) if n == c || (c == '|' && n == '&') => 2,
                    _ => 1,
                }
            }
            '(' => {
                self.end_word();
                self.command_starts();
                if let Some(Level::Command(frame)) = self.levels.last_mut() {
                    frame.parens += 1;
                }
                1
            }
            ')' => {
                self.end_word();
                if frame_parens(&self.levels) > 0 {
                    if let Some(Level::Command(frame)) = self.levels.last_mut() {
                        frame.parens -= 1;
                        frame.command_position = false;
                    }
                } else if nested {
                    // The end of a `$(…)`: back in the enclosing word.
                    self.levels.pop();
                } else {
                    // A `case` pattern's `)`: a command follows.
                    self.command_starts();
                }
                1
            }
            '<' | '>' => {
                // `2>file`: the digits are the redirection's fd, not a word.
                if frame.word.as_ref().is_some_and(|w| w.digits) {
                    frame.word = None;
                } else {
                    self.end_word();
                }
                let Some(Level::Command(frame)) = self.levels.last_mut() else {
                    return 1;
                };
                if c == '<' && next == Some('<') {
                    match after {
                        Some('<') => {
                            frame.redirect = true;
                            3
                        }
                        Some('-') => {
                            frame.heredoc_delimiter = Some(true);
                            3
                        }
                        _ => {
                            frame.heredoc_delimiter = Some(false);
                            2
                        }
                    }
                } else {
                    frame.redirect = true;
                    match (c, next) {
                        ('>', Some('>' | '&' | '|')) | ('<', Some('&' | '>')) => 2,
                        _ => 1,
                    }
                }
            }
            '#' if frame.word.is_none() => {
                self.comment = true;
                1
            }
            '\\' => {
                start_word(frame);
                self.escaped = true;
                1
            }
            '\'' => {
                start_word(frame);
                self.levels.push(Level::Single);
                1
            }
            '"' => {
                start_word(frame);
                self.levels.push(Level::Double);
                1
            }
            '`' => {
                start_word(frame);
                self.levels.push(Level::Backquote);
                1
            }
            '$' => {
                let word = start_word(frame);
                word.name_so_far = false;
                word.digits = false;
                self.dollar(next, after)
            }
            '=' => {
                let word = start_word(frame);
                if word.command && word.name_so_far && !word.literal.is_empty() {
                    word.assignment = true;
                }
                word.name_so_far = false;
                word.digits = false;
                word.literal.push(c);
                1
            }
            _ => {
                let word = start_word(frame);
                let first = word.literal.is_empty();
                word.name_so_far &=
                    c == '_' || c.is_ascii_alphabetic() || (!first && c.is_ascii_digit());
                word.digits &= c.is_ascii_digit();
                word.literal.push(c);
                1
            }
        }
    }

    /// `$` followed by `(`, `((`, `{` or something else.
    fn dollar(&mut self, next: Option<char>, after: Option<char>) -> usize {
        match (next, after) {
            (Some('('), Some('(')) => {
                self.levels.push(Level::Arithmetic(0));
                3
            }
            (Some('('), _) => {
                self.levels.push(Level::Command(Frame {
                    command_position: true,
                    ..Frame::default()
                }));
                2
            }
            (Some('{'), _) => {
                self.levels.push(Level::Brace(0));
                2
            }
            (None, _) => {
                self.dollar = true;
                1
            }
            _ => 1,
        }
    }

    /// A character inside quotes or escaped: part of the word, never a name character.
    fn quoted_char(&mut self, c: char) {
        if let Some(frame) = self.levels.iter_mut().rev().find_map(|l| match l {
            Level::Command(f) => Some(f),
            _ => None,
        }) {
            let word = start_word(frame);
            word.name_so_far = false;
            word.digits = false;
            word.literal.push(c);
        }
    }

    /// After `;`, `|`, `&`, `(`, a newline …: a new command starts.
    fn command_starts(&mut self) {
        if let Some(Level::Command(frame)) = self.levels.last_mut() {
            frame.command_position = true;
            frame.redirect = false;
            frame.code_arguments = false;
        }
    }

    fn end_word(&mut self) {
        let Some(Level::Command(frame)) = self.levels.last_mut() else {
            return;
        };
        let Some(word) = frame.word.take() else {
            return;
        };
        match word.target {
            Target::HeredocDelimiter(strip_tabs) => {
                frame.heredoc_delimiter = None;
                self.pending_heredocs.push((word.literal, strip_tabs));
            }
            Target::Redirect => frame.redirect = false,
            Target::Normal if word.command => {
                if CODE_RUNNERS.contains(&word.literal.as_str()) {
                    frame.code_arguments = true;
                }
                if !word.assignment && !COMMAND_PREFIXES.contains(&word.literal.as_str()) {
                    frame.command_position = false;
                }
            }
            Target::Normal => {}
        }
    }

    fn next_heredoc(&mut self) -> Option<HeredocBody> {
        if self.pending_heredocs.is_empty() {
            return None;
        }
        let (delimiter, strip_tabs) = self.pending_heredocs.remove(0);
        Some(HeredocBody {
            delimiter,
            strip_tabs,
            line: String::new(),
        })
    }
}

fn frame_parens(levels: &[Level]) -> usize {
    match levels.last() {
        Some(Level::Command(frame)) => frame.parens,
        _ => 0,
    }
}

/// The word being read at `frame`, starting one if none is.
fn start_word(frame: &mut Frame) -> &mut Word {
    let target = match (frame.heredoc_delimiter, frame.redirect) {
        (Some(strip_tabs), _) => Target::HeredocDelimiter(strip_tabs),
        (None, true) => Target::Redirect,
        (None, false) => Target::Normal,
    };
    let command = target == Target::Normal && frame.command_position;
    frame.word.get_or_insert_with(|| Word {
        target,
        command,
        assignment: false,
        name_so_far: true,
        digits: true,
        literal: String::new(),
    })
}
