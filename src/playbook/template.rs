//! Strict Handlebars templates over a host's variables.
//!
//! Two kinds of template field, chosen by the module's args type:
//! - [`Template`] renders to plain text (paths, names, conditions).
//! - [`ShellTemplate`] renders to a [`Cmd`] script: every interpolated value is
//!   shell-quoted by the template engine's escape function, so a hostile value such as
//!   `a'; rm -rf / #` stays one word. Raw interpolation (`{{{x}}}`, `{{&x}}`) and values
//!   wrapped in the template's own quotes are refused.
//!
//! Undefined variables are errors (strict mode) naming `file:line:column` and the variable.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;

use handlebars::{
    Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderError,
    RenderErrorReason,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::command::{quote, Cmd};
use crate::playbook::source::{Location, SourceFile};
use crate::secrets::Secrets;

/// A template string from a playbook, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    span: Option<Range<usize>>,
}

/// A template whose output is run by `sh -c`; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellTemplate(Template);

impl Template {
    /// A template not read from a file (tests, defaults).
    pub fn new(source: impl Into<String>) -> Self {
        Template {
            source: source.into(),
            span: None,
        }
    }
    pub fn source(&self) -> &str {
        &self.source
    }
    pub fn span(&self) -> Option<Range<usize>> {
        self.span.clone()
    }
}

impl ShellTemplate {
    pub fn new(source: impl Into<String>) -> Self {
        ShellTemplate(Template::new(source))
    }
    pub fn template(&self) -> &Template {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = serde_spanned::Spanned::<String>::deserialize(d)?;
        let span = spanned.span();
        Ok(Template {
            source: spanned.into_inner(),
            span: Some(span),
        })
    }
}

impl<'de> Deserialize<'de> for ShellTemplate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let t = Template::deserialize(d)?;
        check_shell_source(&t.source).map_err(serde::de::Error::custom)?;
        Ok(ShellTemplate(t))
    }
}

/// The key under which templates serialize, so [`collect_templates`] can find every
/// template in any module's args without a per-module list.
const TEMPLATE_KEY: &str = "$ferry_template";

#[derive(Serialize, Deserialize)]
struct TemplateRepr {
    #[serde(rename = "$ferry_template")]
    source: String,
    shell: bool,
    span: Option<(usize, usize)>,
}

fn serialize_template<S: Serializer>(t: &Template, shell: bool, s: S) -> Result<S::Ok, S::Error> {
    TemplateRepr {
        source: t.source.clone(),
        shell,
        span: t.span.as_ref().map(|r| (r.start, r.end)),
    }
    .serialize(s)
}

impl Serialize for Template {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_template(self, false, s)
    }
}

impl Serialize for ShellTemplate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serialize_template(&self.0, true, s)
    }
}

/// A template found inside a serialized value.
#[derive(Debug, Clone)]
pub enum AnyTemplate {
    Plain(Template),
    Shell(ShellTemplate),
}

/// Every template inside `value` (module args serialized with serde_json).
pub fn collect_templates(value: &Value) -> Vec<AnyTemplate> {
    let mut found = Vec::new();
    walk(value, &mut found);
    found
}

fn walk(value: &Value, found: &mut Vec<AnyTemplate>) {
    match value {
        Value::Object(map) if map.contains_key(TEMPLATE_KEY) => {
            if let Ok(repr) = serde_json::from_value::<TemplateRepr>(value.clone()) {
                let t = Template {
                    source: repr.source,
                    span: repr.span.map(|(a, b)| a..b),
                };
                found.push(if repr.shell {
                    AnyTemplate::Shell(ShellTemplate(t))
                } else {
                    AnyTemplate::Plain(t)
                });
            }
        }
        Value::Object(map) => map.values().for_each(|v| walk(v, found)),
        Value::Array(items) => items.iter().for_each(|v| walk(v, found)),
        _ => {}
    }
}

/// Shell templates must let the engine quote: no raw output, no self-made quotes.
fn check_shell_source(source: &str) -> Result<(), String> {
    if source.contains("{{{") || source.contains("{{&") {
        return Err(
            "raw interpolation ({{{...}}} or {{&...}}) is not allowed in a shell command; \
             use {{name}}, values are quoted for you"
                .to_string(),
        );
    }
    for (i, _) in source.match_indices("{{") {
        let before = source.get(..i).and_then(|s| s.chars().last());
        if matches!(before, Some('\'') | Some('"')) {
            return Err(
                "a template value is wrapped in quotes; remove them: values are quoted for you"
                    .to_string(),
            );
        }
    }
    Ok(())
}

/// Variables of one host, plus the same tree with secret values masked (for display).
#[derive(Debug, Clone)]
pub struct Vars {
    values: Value,
    masked: Value,
}

impl Vars {
    /// `values` must be a JSON object. Secret strings are masked in the display copy.
    pub fn new(values: serde_json::Map<String, Value>, secrets: &Secrets) -> Self {
        Vars::with_secret_vars(values, &BTreeSet::new(), secrets)
    }

    /// Like [`Vars::new`]; in the display copy the vars named in `secret_vars` are
    /// masked whole (every leaf, of any type), the others where they hold a secret.
    pub fn with_secret_vars(
        values: serde_json::Map<String, Value>,
        secret_vars: &BTreeSet<String>,
        secrets: &Secrets,
    ) -> Self {
        let masked = values
            .iter()
            .map(|(name, value)| {
                let shown = if secret_vars.contains(name) {
                    Secrets::mask_all(value)
                } else {
                    secrets.mask_value(value)
                };
                (name.clone(), shown)
            })
            .collect();
        Vars {
            values: Value::Object(values),
            masked: Value::Object(masked),
        }
    }
    pub fn values(&self) -> &Value {
        &self.values
    }
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }
}

/// A template that could not be rendered.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}template {template:?}: {message}", location.as_ref().map(|l| format!("{l}: ")).unwrap_or_default())]
pub struct TemplateError {
    pub location: Option<Location>,
    pub template: String,
    /// The undefined variable, when that is the problem.
    pub variable: Option<String>,
    pub message: String,
}

/// Renders templates; holds the playbook source to locate errors.
pub struct Renderer {
    plain: Handlebars<'static>,
    shell: Handlebars<'static>,
    source: Option<Arc<SourceFile>>,
}

impl std::fmt::Debug for Renderer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renderer").finish_non_exhaustive()
    }
}

fn quote_helper(
    h: &Helper<'_>,
    _: &Handlebars<'_>,
    _: &Context,
    _: &mut RenderContext<'_, '_>,
    out: &mut dyn Output,
) -> HelperResult {
    let param = h
        .param(0)
        .ok_or(RenderErrorReason::ParamNotFoundForIndex("quote", 0))?;
    if param.is_value_missing() {
        return Err(RenderErrorReason::MissingVariable(Some(
            param.relative_path().cloned().unwrap_or_default(),
        ))
        .into());
    }
    let text = match param.value() {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    // Written straight to the output: helper output is not escaped again.
    out.write(&quote(&text))?;
    Ok(())
}

impl Renderer {
    pub fn new(source: Option<Arc<SourceFile>>) -> Self {
        let mut plain = Handlebars::new();
        plain.set_strict_mode(true);
        plain.register_escape_fn(handlebars::no_escape);
        plain.register_helper("quote", Box::new(quote_helper));
        let mut shell = Handlebars::new();
        shell.set_strict_mode(true);
        shell.register_escape_fn(|s: &str| quote(s));
        shell.register_helper("quote", Box::new(quote_helper));
        Renderer {
            plain,
            shell,
            source,
        }
    }

    /// Plain text.
    pub fn render(&self, t: &Template, vars: &Vars) -> Result<String, TemplateError> {
        self.plain
            .render_template(&t.source, &vars.values)
            .map_err(|e| self.error(t, e))
    }

    /// Plain text that a command receives as an operand (a name or a path). Quoting
    /// keeps shell syntax out, but a leading `-` would still be read as an option by
    /// the program (`cat -n`, `docker inspect --format=…`), so such a value is refused.
    /// The value itself is not repeated in the message: it may be a secret.
    pub fn render_operand(&self, t: &Template, vars: &Vars) -> Result<String, TemplateError> {
        let text = self.render(t, vars)?;
        if text.starts_with('-') {
            return Err(TemplateError {
                location: self.location(t, None),
                template: t.source.clone(),
                variable: None,
                message: self.with_field(
                    t,
                    "renders to a value starting with `-`, which the command would read as \
                     an option (write a relative path as ./-…)"
                        .to_string(),
                ),
            });
        }
        Ok(text)
    }

    /// A shell script whose interpolated values are quoted; displays with secrets masked.
    pub fn render_shell(&self, t: &ShellTemplate, vars: &Vars) -> Result<Cmd, TemplateError> {
        let t = &t.0;
        check_shell_source(&t.source).map_err(|message| TemplateError {
            location: self.location(t, None),
            template: t.source.clone(),
            variable: None,
            message: self.with_field(t, message),
        })?;
        let text = self
            .shell
            .render_template(&t.source, &vars.values)
            .map_err(|e| self.error(t, e))?;
        let display = self
            .shell
            .render_template(&t.source, &vars.masked)
            .map_err(|e| self.error(t, e))?;
        Ok(Cmd::script(text, display))
    }

    /// Render either kind, discarding the output (the pre-flight pass).
    pub fn check(&self, t: &AnyTemplate, vars: &Vars) -> Result<(), TemplateError> {
        match t {
            AnyTemplate::Plain(t) => self.render(t, vars).map(drop),
            AnyTemplate::Shell(t) => self.render_shell(t, vars).map(drop),
        }
    }

    /// Whether a `when` condition holds: rendered text other than "", false, no, off, 0.
    pub fn truthy(&self, t: &Template, vars: &Vars) -> Result<bool, TemplateError> {
        let text = self.render(t, vars)?;
        let v = text.trim().to_ascii_lowercase();
        Ok(!matches!(v.as_str(), "" | "false" | "no" | "off" | "0"))
    }

    fn error(&self, t: &Template, e: RenderError) -> TemplateError {
        let (variable, message) = match e.reason() {
            RenderErrorReason::MissingVariable(Some(v)) => {
                (Some(v.clone()), format!("undefined variable `{v}`"))
            }
            RenderErrorReason::MissingVariable(None) => (None, "undefined variable".to_string()),
            RenderErrorReason::TemplateError(te) => {
                (None, format!("invalid template: {}", te.reason()))
            }
            other => (None, other.to_string()),
        };
        let pos = match e.reason() {
            RenderErrorReason::TemplateError(te) => te.pos(),
            _ => e.line_no.zip(e.column_no),
        };
        TemplateError {
            location: self.location(t, pos),
            template: t.source.clone(),
            variable,
            message: self.with_field(t, message),
        }
    }

    /// `message`, naming the key whose value the template is when it was read from a
    /// file (in the message: one more field would make every `ModuleError` larger).
    fn with_field(&self, t: &Template, message: String) -> String {
        let field = (self.source.as_ref())
            .zip(t.span.clone())
            .and_then(|(source, span)| source.key_near(span));
        match field {
            Some(f) => format!("{message} (field `{f}`)"),
            None => message,
        }
    }

    /// Where in the file a template (and a line/column inside it) is.
    fn location(&self, t: &Template, inner: Option<(usize, usize)>) -> Option<Location> {
        let source = self.source.as_ref()?;
        let span = t.span.as_ref()?;
        // When the file holds the template verbatim (no escapes), point inside it.
        if let (Some((line, col)), Some(raw)) = (inner, source.text.get(span.clone())) {
            if let Some(open) = raw.find(t.source.as_str()) {
                let mut lines = t.source.split_inclusive('\n');
                let before: usize = lines
                    .by_ref()
                    .take(line.saturating_sub(1))
                    .map(str::len)
                    .sum();
                // Handlebars counts columns in characters; the offset is in bytes.
                let this_line = lines.next().unwrap_or_default();
                let within = this_line
                    .char_indices()
                    .nth(col.saturating_sub(1))
                    .map_or(this_line.len(), |(i, _)| i);
                return Some(source.locate(span.start + open + before + within));
            }
        }
        Some(source.locate(span.start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect();
        Vars::new(map, &Secrets::new())
    }

    #[test]
    fn shell_values_are_quoted_by_construction() {
        let r = Renderer::new(None);
        let cmd = r
            .render_shell(
                &ShellTemplate::new("test -d {{ dir }}"),
                &vars(&[("dir", "a'; rm -rf / #")]),
            )
            .unwrap();
        assert_eq!(
            sh_words(&cmd.to_shell()),
            vec!["test", "-d", "a'; rm -rf / #"]
        );
    }

    /// How a real POSIX shell splits a command line into words.
    fn sh_words(line: &str) -> Vec<String> {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("for w in {line}; do printf '%s\\0' \"$w\"; done"))
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout)
            .unwrap()
            .split_terminator('\0')
            .map(String::from)
            .collect()
    }

    #[test]
    fn plain_templates_are_not_escaped_and_quote_helper_quotes_once() {
        let r = Renderer::new(None);
        let v = vars(&[("x", "a b&<")]);
        assert_eq!(r.render(&Template::new("{{x}}"), &v).unwrap(), "a b&<");
        assert_eq!(
            r.render(&Template::new("{{quote x}}"), &v).unwrap(),
            "'a b&<'"
        );
        let cmd = r
            .render_shell(&ShellTemplate::new("echo {{quote x}}"), &v)
            .unwrap();
        assert_eq!(cmd.to_shell(), "echo 'a b&<'");
    }

    #[test]
    fn undefined_variables_are_errors_naming_the_variable() {
        let r = Renderer::new(None);
        let e = r
            .render(&Template::new("x {{ nope }}"), &vars(&[]))
            .unwrap_err();
        assert_eq!(e.variable.as_deref(), Some("nope"));
        // `#if` is how a template asks whether a variable exists, so it is allowed.
        assert_eq!(
            r.render(&Template::new("{{#if nope}}y{{/if}}"), &vars(&[]))
                .unwrap(),
            ""
        );
        let e = r
            .render(&Template::new("{{quote nope}}"), &vars(&[]))
            .unwrap_err();
        assert_eq!(e.variable.as_deref(), Some("nope"));
    }

    #[test]
    fn raw_and_self_quoted_interpolation_is_refused() {
        let r = Renderer::new(None);
        let v = vars(&[("x", "1")]);
        assert!(r
            .render_shell(&ShellTemplate::new("echo {{{x}}}"), &v)
            .is_err());
        assert!(r
            .render_shell(&ShellTemplate::new("echo {{&x}}"), &v)
            .is_err());
        assert!(r
            .render_shell(&ShellTemplate::new("echo '{{x}}'"), &v)
            .is_err());
    }

    #[test]
    fn secrets_are_masked_in_display() {
        let secrets = Secrets::new();
        secrets.add("s3cr et");
        let map = [("pw".to_string(), Value::String("s3cr et".into()))]
            .into_iter()
            .collect();
        let v = Vars::new(map, &secrets);
        let cmd = Renderer::new(None)
            .render_shell(&ShellTemplate::new("login --password {{pw}}"), &v)
            .unwrap();
        assert_eq!(cmd.to_shell(), "login --password 's3cr et'");
        assert_eq!(cmd.display(), "login --password '********'");
    }

    #[test]
    fn truthiness() {
        let r = Renderer::new(None);
        let v = vars(&[("a", "yes"), ("b", "false")]);
        assert!(r.truthy(&Template::new("{{a}}"), &v).unwrap());
        assert!(!r.truthy(&Template::new("{{b}}"), &v).unwrap());
        assert!(!r.truthy(&Template::new(" "), &v).unwrap());
    }
}
