//! Strict Handlebars templates over a host's variables.
//!
//! Two kinds of template field, chosen by the module's args type:
//! - [`Template`] renders to plain text (paths, names, conditions).
//! - [`ShellTemplate`] renders to a [`Cmd`] script: every interpolated value is
//!   shell-quoted by the template engine's escape function, so a hostile value such as
//!   `a'; rm -rf / #` stays one word. Raw interpolation (in any spelling) and values
//!   where one quoted word does not protect them (inside the template's own quotes, a
//!   here-document, a comment, command position) are refused; see [`super::shell_check`].
//!
//! Undefined variables are errors (strict mode) naming `file:line:column` and the variable.
//! A NUL byte in a rendered value is an error: no command line can carry one.
//!
//! The variables every host shares (`hostvars`, `groups`) are held once, in
//! [`SharedVars`], and put in a template's context only when the template names them:
//! a copy per host would make memory grow with the square of the host count.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;

use handlebars::template::{HelperTemplate, Parameter, TemplateElement};
use handlebars::{
    Context, Handlebars, Helper, HelperResult, Output, Path, PathSeg, RenderContext, RenderError,
    RenderErrorReason,
};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::command::{quote, Cmd};
use crate::playbook::shell_check::{self, ShellCheckError};
use crate::playbook::source::{InputError, Location, SourceFile};
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
    /// A template read from a file other than a playbook (a `template` module's file),
    /// at `span` of it, so errors are located in that file.
    pub fn located(source: impl Into<String>, span: Range<usize>) -> Self {
        Template {
            source: source.into(),
            span: Some(span),
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

/// Checked by [`check_shell_template`] when the playbook is parsed (so the error can
/// point at the interpolation), and again by [`Renderer::render_shell`].
impl<'de> Deserialize<'de> for ShellTemplate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Template::deserialize(d).map(ShellTemplate)
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

/// `value` (module args serialized with serde_json) without the templates' positions in
/// the file: what a task does, not where it is written (for the journal's task digest).
pub fn without_template_spans(value: &Value) -> Value {
    match value {
        Value::Object(map) if map.contains_key(TEMPLATE_KEY) => Value::Object(
            map.iter()
                .filter(|(k, _)| k.as_str() != "span")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), without_template_spans(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(without_template_spans).collect()),
        other => other.clone(),
    }
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

/// The variables ferry sets itself; a user variable of one of these names is an error
/// (it would be silently replaced).
pub const BUILTIN_VARS: &[&str] = &["inventory_hostname", "group_names", "groups", "hostvars"];

/// Shell templates must let the engine quote: no raw output, no value where one quoted
/// word does not protect it. Decided on the parsed template, not on its text.
pub fn check_shell_source(source: &str) -> Result<(), ShellCheckError> {
    shell_check::check(source)
}

/// [`check_shell_source`] for a template read from `source`, with the error located at
/// the interpolation (`file:line:column`) and naming its field.
pub fn check_shell_template(t: &ShellTemplate, source: &SourceFile) -> Result<(), InputError> {
    let t = &t.0;
    check_shell_source(&t.source).map_err(|e| {
        let location = locate(source, t, e.position).unwrap_or_else(|| source.locate(0));
        InputError {
            location,
            field: t.span.clone().and_then(|span| source.key_near(span)),
            message: format!("template {:?}: {}", t.source, e.message),
        }
    })
}

/// Variables every host sees the same (`hostvars`, `groups`), built once per inventory
/// and shared by every host's [`Vars`], with their masked display copy.
#[derive(Debug, Default)]
pub struct SharedVars {
    values: serde_json::Map<String, Value>,
    masked: serde_json::Map<String, Value>,
}

impl SharedVars {
    pub fn new(values: serde_json::Map<String, Value>, secrets: &Secrets) -> Self {
        let masked = values
            .iter()
            .map(|(k, v)| (k.clone(), secrets.mask_value(v)))
            .collect();
        SharedVars { values, masked }
    }
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }
}

/// Variables of one host (its own, plus the shared ones by reference), and the same with
/// secret values masked (for display). The own variables are kept as ready template
/// contexts, so rendering a template that does not name a shared variable copies nothing.
#[derive(Debug, Clone)]
pub struct Vars {
    own: Context,
    masked: Context,
    shared: Arc<SharedVars>,
}

impl Vars {
    /// `values` are the host's own variables. Secret strings are masked in the display copy.
    pub fn new(values: serde_json::Map<String, Value>, secrets: &Secrets) -> Self {
        Vars::with_shared(values, &BTreeSet::new(), secrets, Arc::default())
    }
    /// As [`Vars::new`], with the variables every host shares; in the display copy the
    /// vars named in `secret_vars` are masked whole (every leaf, of any type), the
    /// others where they hold a secret.
    pub fn with_shared(
        values: serde_json::Map<String, Value>,
        secret_vars: &BTreeSet<String>,
        secrets: &Secrets,
        shared: Arc<SharedVars>,
    ) -> Self {
        let masked: serde_json::Map<String, Value> = values
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
        let values = Value::Object(values);
        let masked = Value::Object(masked);
        Vars {
            own: Context::from(values),
            masked: Context::from(masked),
            shared,
        }
    }
    /// These vars with `extra` over them (a task's `item`, what earlier tasks
    /// registered); a secret inside `extra` is masked in the display copy.
    pub fn overlay(&self, extra: &serde_json::Map<String, Value>, secrets: &Secrets) -> Vars {
        if extra.is_empty() {
            return self.clone();
        }
        let mut own = self.own.data().as_object().cloned().unwrap_or_default();
        let mut masked = self.masked.data().as_object().cloned().unwrap_or_default();
        for (name, value) in extra {
            own.insert(name.clone(), value.clone());
            masked.insert(name.clone(), secrets.mask_value(value));
        }
        Vars {
            own: Context::from(Value::Object(own)),
            masked: Context::from(Value::Object(masked)),
            shared: self.shared.clone(),
        }
    }

    /// The host's own variables (without the shared ones).
    pub fn values(&self) -> &Value {
        self.own.data()
    }
    /// A variable, own or shared.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.own
            .data()
            .get(name)
            .or_else(|| self.shared.values.get(name))
    }
    /// The shared variables (the same allocation for every host of an inventory).
    pub fn shared(&self) -> &Arc<SharedVars> {
        &self.shared
    }

    /// The context for `source`: the own variables, plus the shared ones when the
    /// template may read them (a transient copy, dropped after rendering).
    fn context(&self, source: &str, masked: bool) -> std::borrow::Cow<'_, Context> {
        let own = if masked { &self.masked } else { &self.own };
        let shared = if masked {
            &self.shared.masked
        } else {
            &self.shared.values
        };
        if shared.is_empty() || !may_read_shared(source, shared) {
            return std::borrow::Cow::Borrowed(own);
        }
        let mut all = own.data().as_object().cloned().unwrap_or_default();
        all.extend(shared.iter().map(|(k, v)| (k.clone(), v.clone())));
        std::borrow::Cow::Owned(Context::from(Value::Object(all)))
    }
}

/// Whether a template may read one of `shared`'s variables: it names one, or reads the
/// context as a whole or by a relative path (`this`, `..`, `@root`), or does not compile
/// (then rendering reports the error as before).
fn may_read_shared(source: &str, shared: &serde_json::Map<String, Value>) -> bool {
    match handlebars::Template::compile(source) {
        Ok(ast) => template_reads(&ast, shared),
        Err(_) => true,
    }
}

fn template_reads(ast: &handlebars::Template, shared: &serde_json::Map<String, Value>) -> bool {
    ast.elements.iter().any(|e| element_reads(e, shared))
}

fn element_reads(e: &TemplateElement, shared: &serde_json::Map<String, Value>) -> bool {
    let helper = |h: &HelperTemplate| {
        parameter_reads(&h.name, shared)
            || h.params.iter().any(|p| parameter_reads(p, shared))
            || h.hash.values().any(|p| parameter_reads(p, shared))
            || h.template
                .as_ref()
                .is_some_and(|t| template_reads(t, shared))
            || h.inverse
                .as_ref()
                .is_some_and(|t| template_reads(t, shared))
    };
    match e {
        TemplateElement::RawString(_) | TemplateElement::Comment(_) => false,
        TemplateElement::Expression(h)
        | TemplateElement::HtmlExpression(h)
        | TemplateElement::HelperBlock(h) => helper(h),
        // Decorators, partials, future kinds: assume they may.
        _ => true,
    }
}

fn parameter_reads(p: &Parameter, shared: &serde_json::Map<String, Value>) -> bool {
    match p {
        Parameter::Name(name) => shared.contains_key(name),
        Parameter::Path(Path::Relative((segments, _))) => match segments.first() {
            Some(PathSeg::Named(name)) => shared.contains_key(name),
            // `this`, `.`, `../`, `@root` …
            _ => true,
        },
        Parameter::Path(Path::Local((level, name, _))) => *level > 0 || name == "root",
        Parameter::Literal(_) => false,
        Parameter::Subexpression(sub) => element_reads(sub.as_element(), shared),
        _ => true,
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
    out.write(&shell_word(&text))?;
    Ok(())
}

/// A NUL byte cannot be part of a command line; quoting would drop it silently. The
/// marker survives into the rendered text, which is then refused as a whole.
const NUL: char = '\0';

/// One value as a quoted shell word, or the NUL marker (see [`NUL`]).
fn shell_word(value: &str) -> String {
    if value.contains(NUL) {
        NUL.to_string()
    } else {
        quote(value)
    }
}

impl Renderer {
    pub fn new(source: Option<Arc<SourceFile>>) -> Self {
        let mut plain = Handlebars::new();
        plain.set_strict_mode(true);
        plain.register_escape_fn(handlebars::no_escape);
        plain.register_helper("quote", Box::new(quote_helper));
        let mut shell = Handlebars::new();
        shell.set_strict_mode(true);
        shell.register_escape_fn(shell_word);
        shell.register_helper("quote", Box::new(quote_helper));
        Renderer {
            plain,
            shell,
            source,
        }
    }

    /// Plain text.
    pub fn render(&self, t: &Template, vars: &Vars) -> Result<String, TemplateError> {
        self.render_with(&self.plain, t, vars, false)
    }

    fn render_with(
        &self,
        registry: &Handlebars<'static>,
        t: &Template,
        vars: &Vars,
        masked: bool,
    ) -> Result<String, TemplateError> {
        let text = registry
            .render_template_with_context(&t.source, &vars.context(&t.source, masked))
            .map_err(|e| self.error(t, e))?;
        if text.contains(NUL) {
            return Err(TemplateError {
                location: self.location(t, None),
                template: t.source.clone(),
                variable: None,
                message: self.with_field(
                    t,
                    "renders to text with a NUL byte (in a value or in the template), which \
                     a command line cannot carry"
                        .to_string(),
                ),
            });
        }
        Ok(text)
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
        check_shell_source(&t.source).map_err(|e| TemplateError {
            location: self.location(t, e.position),
            template: t.source.clone(),
            variable: None,
            message: self.with_field(t, e.message),
        })?;
        let text = self.render_with(&self.shell, t, vars, false)?;
        let display = self.render_with(&self.shell, t, vars, true)?;
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
        locate(self.source.as_ref()?, t, inner)
    }
}

/// Where in `source` a template (and a line/column inside it) is.
fn locate(source: &SourceFile, t: &Template, inner: Option<(usize, usize)>) -> Option<Location> {
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

#[cfg(test)]
mod tests;
