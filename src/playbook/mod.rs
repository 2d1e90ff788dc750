//! Playbooks: an ordered list of tasks read from TOML. Templating lives in [`template`],
//! file locations in [`source`].
//!
//! ```toml
//! name = "optional title"
//! [vars]                      # defaults; inventory vars override them
//! data_dir = "/srv/data"
//!
//! [[task]]
//! name = "Check the data dir"
//! hosts = "old"               # a host, a group, "all", or a comma-separated list
//! tags = ["preflight"]
//! when = "{{ check_data }}"   # optional; rendered per host, "", false, no, off, 0 skip
//! after = ["Some earlier task"]  # optional: wait until it finished on all its hosts
//! lane = "storage"            # optional, default "main"; see "Lanes" below
//! [task.command]              # exactly one module table
//! cmd = "test -d {{ data_dir }}"
//! ```
//!
//! Lanes: the tasks of one host that are in the same lane (`lane`, default `main`; a
//! name of `[a-z0-9_-]+`) run in playbook order, one at a time. Tasks in different
//! lanes of the same host run at the same time (e.g. streaming the storage while
//! PostgreSQL is restored). The only order between lanes is the one `after` gives. A
//! failure in any lane stops the whole host: running tasks finish, no new task starts.

pub mod shell_check;
pub mod source;
pub mod task_keys;
pub mod template;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_spanned::Spanned;

use crate::inventory::Inventory;
use crate::registry::{ModuleArgs, MODULE_NAMES};
use source::{InputError, SourceFile};
use template::{check_shell_template, collect_templates, AnyTemplate, Template, BUILTIN_VARS};

/// A parsed playbook.
#[derive(Debug, Clone)]
pub struct Playbook {
    pub path: PathBuf,
    pub source: Arc<SourceFile>,
    /// `name`, or the file stem.
    pub name: String,
    /// Playbook-level defaults for variables (inventory vars override them).
    pub vars: serde_json::Map<String, serde_json::Value>,
    pub tasks: Vec<Task>,
    /// `[downtime]`: which tasks take the application down and bring it back, for the
    /// report's downtime summary.
    pub downtime: Option<crate::report::Downtime>,
    /// `next_steps`: what is left to the operator once every host finished without a
    /// failure, printed after the recap (not in check mode).
    pub next_steps: Vec<String>,
}

/// One task: where it runs, when, after what, and its module.
#[derive(Debug, Clone)]
pub struct Task {
    pub name: String,
    /// Host pattern: host, group, `all`, or a comma-separated list of those.
    pub hosts: Spanned<String>,
    pub tags: Vec<String>,
    pub when: Option<Template>,
    /// Tasks (by name) that must have finished on all their hosts first.
    pub after: Vec<Spanned<String>>,
    /// The host's lane this task runs in ([`DEFAULT_LANE`] when not given): tasks of one
    /// lane run in order, lanes of one host run at the same time.
    pub lane: String,
    pub module: ModuleArgs,
    /// Where the task is in the file.
    pub span: Range<usize>,
    /// `register`: the task's result becomes this var for the host's later tasks.
    pub register: Option<String>,
    /// `loop`: run once per item, the item as the var `item`.
    pub loop_: Option<task_keys::Loop>,
    /// `notify`: handlers to run at the end of the play on hosts where this changed.
    pub notify: Vec<Spanned<String>>,
    /// `ignore_errors`: a failure is reported and the host goes on.
    pub ignore_errors: bool,
    /// `changed_when`/`failed_when`: conditions that replace the module's own verdict.
    pub changed_when: Option<Template>,
    pub failed_when: Option<Template>,
    /// `timeout`: longest the whole task may take on a host.
    pub timeout: Option<crate::module::units::Seconds>,
    /// `become`: the task's own escalation over the host's (`None`: the host's).
    pub become_: Option<bool>,
    /// A `[[handler]]`: runs only when notified, after the host's tasks.
    pub handler: bool,
    /// The file the task is written in (the playbook, or a task file it includes):
    /// `span` and the task's template spans are in it.
    pub source: Arc<SourceFile>,
    /// Vars of the task file it came from and of its `include` (playbook vars <
    /// these < inventory vars).
    pub vars: serde_json::Map<String, serde_json::Value>,
}

const TASK_KEYS: &[&str] = &[
    "name",
    "hosts",
    "tags",
    "when",
    "after",
    "lane",
    "register",
    "loop",
    "notify",
    "ignore_errors",
    "changed_when",
    "failed_when",
    "timeout",
    "become",
    "include",
    "vars",
];

/// The lane of a task that names none.
pub const DEFAULT_LANE: &str = "main";

/// Lane names are short identifiers: they appear in logs and may become part of file
/// names, so no spaces, no capitals, nothing to quote.
fn valid_lane(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

enum TaskKey {
    Name,
    Hosts,
    Tags,
    When,
    After,
    Lane,
    Register,
    Loop,
    Notify,
    IgnoreErrors,
    ChangedWhen,
    FailedWhen,
    Timeout,
    Become,
    Include,
    Vars,
    Module(String),
}

/// Reads one key of a task table; errors here carry the key's location.
struct TaskKeySeed<'a> {
    module_seen: Option<&'a str>,
}

impl<'de> DeserializeSeed<'de> for TaskKeySeed<'_> {
    type Value = TaskKey;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<TaskKey, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for TaskKeySeed<'_> {
    type Value = TaskKey;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a task key")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<TaskKey, E> {
        Ok(match key {
            "name" => TaskKey::Name,
            "hosts" => TaskKey::Hosts,
            "tags" => TaskKey::Tags,
            "when" => TaskKey::When,
            "after" => TaskKey::After,
            "lane" => TaskKey::Lane,
            "register" => TaskKey::Register,
            "loop" => TaskKey::Loop,
            "notify" => TaskKey::Notify,
            "ignore_errors" => TaskKey::IgnoreErrors,
            "changed_when" => TaskKey::ChangedWhen,
            "failed_when" => TaskKey::FailedWhen,
            "timeout" => TaskKey::Timeout,
            "become" => TaskKey::Become,
            "include" => TaskKey::Include,
            "vars" => TaskKey::Vars,
            m if MODULE_NAMES.contains(&m) => {
                if let Some(first) = self.module_seen {
                    return Err(E::custom(format!(
                        "a task has exactly one module, this one has two: `{first}` and `{m}`"
                    )));
                }
                TaskKey::Module(m.to_string())
            }
            other => {
                return Err(E::custom(format!(
                    "unknown field `{other}`, expected one of {} or a module: {}",
                    TASK_KEYS.join(", "),
                    MODULE_NAMES.join(", ")
                )))
            }
        })
    }
}

struct ModuleSeed(String);

impl<'de> DeserializeSeed<'de> for ModuleSeed {
    type Value = ModuleArgs;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ModuleArgs, D::Error> {
        ModuleArgs::deserialize_named(&self.0, d)
    }
}

/// A task as parsed, before its span is attached.
struct RawTask {
    name: String,
    hosts: Option<Spanned<String>>,
    tags: Vec<String>,
    when: Option<Template>,
    after: Vec<Spanned<String>>,
    lane: Option<Spanned<String>>,
    module: ModuleArgs,
    register: Option<Spanned<String>>,
    loop_: Option<Spanned<toml::Value>>,
    notify: Vec<Spanned<String>>,
    ignore_errors: bool,
    changed_when: Option<Template>,
    failed_when: Option<Template>,
    timeout: Option<crate::module::units::Seconds>,
    become_: Option<bool>,
}

/// `[[task]]` with `include = "tasks/x.toml"`: that file's tasks, here.
struct RawInclude {
    path: Spanned<String>,
    /// Hosts for the included tasks that name none.
    hosts: Option<Spanned<String>>,
    /// Added to every included task's tags.
    tags: Vec<String>,
    /// Over the task file's own `[vars]` (see `docs/playbooks.md`).
    vars: BTreeMap<String, Spanned<toml::Value>>,
}

/// One `[[task]]` table: a task, or an include of a task file.
enum RawEntry {
    Task(Box<RawTask>),
    Include(RawInclude),
}

impl<'de> Deserialize<'de> for RawEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TaskVisitor;
        impl<'de> Visitor<'de> for TaskVisitor {
            type Value = RawEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a task table")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawEntry, A::Error> {
                let mut include: Option<Spanned<String>> = None;
                let mut vars: Option<BTreeMap<String, Spanned<toml::Value>>> = None;
                let mut name = None;
                let mut hosts = None;
                let mut tags = None;
                let mut when = None;
                let mut after = None;
                let mut lane = None;
                let mut register = None;
                let mut loop_ = None;
                let mut notify = None;
                let mut ignore_errors = None;
                let mut changed_when = None;
                let mut failed_when = None;
                let mut timeout = None;
                let mut become_ = None;
                let mut module: Option<ModuleArgs> = None;
                let mut module_name: Option<String> = None;
                while let Some(key) = map.next_key_seed(TaskKeySeed {
                    module_seen: module_name.as_deref(),
                })? {
                    match key {
                        TaskKey::Name => name = Some(map.next_value::<String>()?),
                        TaskKey::Hosts => hosts = Some(map.next_value()?),
                        TaskKey::Tags => tags = Some(map.next_value()?),
                        TaskKey::When => when = Some(map.next_value()?),
                        TaskKey::After => after = Some(map.next_value()?),
                        TaskKey::Lane => lane = Some(map.next_value()?),
                        TaskKey::Register => register = Some(map.next_value()?),
                        TaskKey::Loop => loop_ = Some(map.next_value()?),
                        TaskKey::Notify => notify = Some(map.next_value()?),
                        TaskKey::IgnoreErrors => ignore_errors = Some(map.next_value()?),
                        TaskKey::ChangedWhen => changed_when = Some(map.next_value()?),
                        TaskKey::FailedWhen => failed_when = Some(map.next_value()?),
                        TaskKey::Timeout => timeout = Some(map.next_value()?),
                        TaskKey::Become => become_ = Some(map.next_value()?),
                        TaskKey::Include => include = Some(map.next_value()?),
                        TaskKey::Vars => vars = Some(map.next_value()?),
                        TaskKey::Module(m) => {
                            module = Some(map.next_value_seed(ModuleSeed(m.clone()))?);
                            module_name = Some(m);
                        }
                    }
                }
                if let Some(path) = include {
                    let task_only = [
                        ("a module", module_name.is_some()),
                        ("`when`", when.is_some()),
                        ("`after`", after.is_some()),
                        ("`lane`", lane.is_some()),
                        ("`register`", register.is_some()),
                        ("`loop`", loop_.is_some()),
                        ("`notify`", notify.is_some()),
                        ("`ignore_errors`", ignore_errors.is_some()),
                        ("`changed_when`", changed_when.is_some()),
                        ("`failed_when`", failed_when.is_some()),
                        ("`timeout`", timeout.is_some()),
                        ("`become`", become_.is_some()),
                    ];
                    if let Some((key, _)) = task_only.iter().find(|(_, set)| *set) {
                        return Err(de::Error::custom(format!(
                            "an `include` has only `include`, `name`, `hosts`, `tags` and \
                             `vars`, not {key}: put it on the tasks of {}",
                            path.get_ref()
                        )));
                    }
                    return Ok(RawEntry::Include(RawInclude {
                        path,
                        hosts,
                        tags: tags.unwrap_or_default(),
                        vars: vars.unwrap_or_default(),
                    }));
                }
                if vars.is_some() {
                    return Err(de::Error::custom(
                        "`vars` belongs to an `include` (a task's vars are the playbook's \
                         `[vars]` and the inventory's)",
                    ));
                }
                let name = name.ok_or_else(|| de::Error::missing_field("name"))?;
                let module = module.ok_or_else(|| {
                    de::Error::custom(format!(
                        "task `{name}` has no module; add exactly one table of: {}",
                        MODULE_NAMES.join(", ")
                    ))
                })?;
                Ok(RawEntry::Task(Box::new(RawTask {
                    name,
                    hosts,
                    tags: tags.unwrap_or_default(),
                    when,
                    after: after.unwrap_or_default(),
                    lane,
                    module,
                    register,
                    loop_,
                    notify: notify.unwrap_or_default(),
                    ignore_errors: ignore_errors.unwrap_or_default(),
                    changed_when,
                    failed_when,
                    timeout,
                    become_,
                })))
            }
        }
        d.deserialize_map(TaskVisitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlaybook {
    name: Option<String>,
    #[serde(default)]
    vars: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    task: Vec<Spanned<RawEntry>>,
    #[serde(default)]
    handler: Vec<Spanned<RawEntry>>,
    downtime: Option<Spanned<crate::report::Downtime>>,
    #[serde(default)]
    next_steps: Vec<String>,
}

impl Playbook {
    pub fn load(path: &Path) -> Result<Playbook, InputError> {
        Playbook::parse(SourceFile::read(path)?)
    }

    /// Parse a playbook: types, unknown keys, module tables, names and dependencies.
    /// Host patterns are checked against an inventory by [`Playbook::validate`].
    pub fn parse(source: SourceFile) -> Result<Playbook, InputError> {
        let source = Arc::new(source);
        let raw: RawPlaybook = toml::from_str(&source.text).map_err(|e| source.toml_error(&e))?;
        let vars = user_vars(&source, &raw.vars)?;
        if raw.task.is_empty() {
            // An empty (or task-less) file is almost surely the wrong file.
            return Err(source.error_at(
                None,
                None,
                "the playbook has no tasks; add at least one [[task]] table",
            ));
        }
        let mut tasks: Vec<Task> = Vec::new();
        let mut entries = Vec::new();
        let mut stack = vec![source.path.clone()];
        let top = Inherited::default();
        flatten(&source, raw.task, false, &top, &mut stack, &mut entries)?;
        flatten(&source, raw.handler, true, &top, &mut stack, &mut entries)?;
        for entry in entries {
            let span = entry.span;
            let mut t = *entry.task;
            let handler = entry.handler;
            let src = &entry.source;
            t.tags.extend(entry.inherited.tags.iter().cloned());
            let what = if handler { "handler" } else { "task" };
            let hosts = match (t.hosts, handler) {
                (Some(h), _) => h,
                // Hosts from the include: located at the task, in its own file.
                (None, _) if entry.inherited.hosts.is_some() => Spanned::new(
                    span.clone(),
                    entry.inherited.hosts.clone().unwrap_or_default(),
                ),
                // A handler runs where it was notified: on any host, unless it says.
                (None, true) => Spanned::new(span.clone(), "all".to_string()),
                (None, false) => {
                    return Err(src.error_at(
                        Some(span),
                        Some("hosts".into()),
                        format!("task `{}`: missing field `hosts`", t.name),
                    ))
                }
            };
            if handler {
                let misplaced = [
                    ("after", !t.after.is_empty()),
                    ("lane", t.lane.is_some()),
                    ("notify", !t.notify.is_empty()),
                ];
                if let Some((key, _)) = misplaced.iter().find(|(_, set)| *set) {
                    return Err(src.error_at(
                        Some(span),
                        Some((*key).into()),
                        format!(
                            "handler `{}`: a handler has no `{key}`: handlers run one after \
                             another at the end of the play, on the hosts that notified them",
                            t.name
                        ),
                    ));
                }
            }
            if tasks.iter().any(|o| o.name == t.name) {
                return Err(src.error_at(
                    Some(span),
                    Some("name".into()),
                    if handler {
                        format!(
                            "a handler is named `{}` as another handler or a task is; \
                             names must be unique",
                            t.name
                        )
                    } else {
                        format!(
                            "two tasks are named `{}`; task names must be unique",
                            t.name
                        )
                    },
                ));
            }
            for dep in &t.after {
                if !tasks.iter().any(|o| &o.name == dep.get_ref() && !o.handler) {
                    let later = dep.get_ref() == &t.name;
                    return Err(src.error_at(
                        Some(dep.span()),
                        Some("after".into()),
                        format!(
                            "task `{}` depends on `{}`, {}; dependencies must name earlier tasks",
                            t.name,
                            dep.get_ref(),
                            if later {
                                "itself (a cycle)"
                            } else {
                                "which is not an earlier task"
                            }
                        ),
                    ));
                }
            }
            if hosts.get_ref().split(',').all(|p| p.trim().is_empty()) {
                return Err(src.error_at(
                    Some(hosts.span()),
                    Some("hosts".into()),
                    format!(
                        "{what} `{}`: `hosts` is empty and would select no host; name hosts, \
                         groups or `all`",
                        t.name
                    ),
                ));
            }
            if let Some(r) = &t.register {
                task_keys::check_register_name(r.get_ref()).map_err(|e| {
                    src.error_at(
                        Some(r.span()),
                        Some("register".into()),
                        format!("{what} `{}`: {e}", t.name),
                    )
                })?;
            }
            let loop_ = match &t.loop_ {
                None => None,
                Some(l) => Some(task_keys::Loop::parse(l.get_ref(), l.span()).map_err(|e| {
                    src.error_at(
                        Some(l.span()),
                        Some("loop".into()),
                        format!("{what} `{}`: {e}", t.name),
                    )
                })?),
            };
            let templates = collect_templates(&serde_json::to_value(&t.module).unwrap_or_default());
            for template in &templates {
                if let AnyTemplate::Shell(shell) = template {
                    check_shell_template(shell, src)?;
                }
            }
            let lane = match t.lane {
                None => DEFAULT_LANE.to_string(),
                Some(lane) if valid_lane(lane.get_ref()) => lane.into_inner(),
                Some(lane) => {
                    return Err(src.error_at(
                        Some(lane.span()),
                        Some("lane".into()),
                        format!(
                            "task `{}`: lane `{}` is not a lane name; use lowercase letters, digits, `_` and `-` (e.g. `storage`)",
                            t.name,
                            lane.get_ref()
                        ),
                    ))
                }
            };
            tasks.push(Task {
                name: t.name,
                hosts,
                tags: t.tags,
                when: t.when,
                after: t.after,
                lane,
                module: t.module,
                span,
                register: t.register.map(Spanned::into_inner),
                loop_,
                notify: t.notify,
                ignore_errors: t.ignore_errors,
                changed_when: t.changed_when,
                failed_when: t.failed_when,
                timeout: t.timeout,
                become_: t.become_,
                handler,
                source: src.clone(),
                vars: entry.inherited.vars.clone(),
            });
        }
        // `notify` names handlers (checked once all are read: they come last).
        for t in &tasks {
            for n in &t.notify {
                if !tasks.iter().any(|h| h.handler && &h.name == n.get_ref()) {
                    let handlers: Vec<&str> = tasks
                        .iter()
                        .filter(|h| h.handler)
                        .map(|h| h.name.as_str())
                        .collect();
                    return Err(t.source.error_at(
                        Some(n.span()),
                        Some("notify".into()),
                        format!(
                            "task `{}` notifies `{}`, which is not a [[handler]] of this playbook (its handlers: {})",
                            t.name,
                            n.get_ref(),
                            if handlers.is_empty() { "none".to_string() } else { handlers.join(", ") }
                        ),
                    ));
                }
            }
        }
        let name = raw.name.unwrap_or_else(|| {
            source
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
        let downtime = match raw.downtime {
            None => None,
            Some(spanned) => {
                let span = spanned.span();
                let d = spanned.into_inner();
                let named = std::iter::once(("from", &d.from))
                    .chain(std::iter::once(("to", &d.to)))
                    .chain(
                        d.stages
                            .iter()
                            .flat_map(|s| s.tasks.iter().map(|t| ("stage.tasks", t))),
                    );
                for (field, task) in named {
                    if !tasks.iter().any(|t| &t.name == task) {
                        return Err(source.error_at(
                            Some(span),
                            Some(format!("downtime.{field}")),
                            format!("`[downtime]` names task `{task}`, which the playbook does not have"),
                        ));
                    }
                }
                Some(d)
            }
        };
        Ok(Playbook {
            path: source.path.clone(),
            name,
            vars,
            tasks,
            downtime,
            next_steps: raw.next_steps,
            source,
        })
    }

    /// Every task's `hosts` must name inventory hosts or groups.
    pub fn validate(&self, inventory: &Inventory) -> Result<(), InputError> {
        for t in &self.tasks {
            if let Err(e) = inventory.select(t.hosts.get_ref()) {
                return Err(self.source.error_at(
                    Some(t.hosts.span()),
                    Some("hosts".into()),
                    format!("task `{}`: {e}", t.name),
                ));
            }
        }
        Ok(())
    }

    pub fn task(&self, name: &str) -> Option<&Task> {
        self.tasks.iter().find(|t| t.name == name)
    }

    /// Tasks selected by `--tags`, `--skip-tags` and `--start-at`, in order.
    pub fn select_tasks(
        &self,
        tags: &[String],
        skip_tags: &[String],
        start_at: Option<&str>,
    ) -> Result<Vec<&Task>, UnknownTask> {
        let start = match start_at {
            Some(n) => self
                .tasks
                .iter()
                .position(|t| t.name == n && !t.handler)
                .ok_or_else(|| UnknownTask(n.to_string()))?,
            None => 0,
        };
        let wanted: BTreeSet<&str> = tags.iter().map(String::as_str).collect();
        let skipped: BTreeSet<&str> = skip_tags.iter().map(String::as_str).collect();
        Ok(self.tasks[start..]
            .iter()
            .filter(|t| !t.handler)
            .filter(|t| wanted.is_empty() || t.tags.iter().any(|g| wanted.contains(g.as_str())))
            .filter(|t| !t.tags.iter().any(|g| skipped.contains(g.as_str())))
            .collect())
    }
}

/// What an `include` gives the tasks of its file (and of the files they include).
#[derive(Debug, Clone, Default)]
struct Inherited {
    hosts: Option<String>,
    tags: Vec<String>,
    vars: serde_json::Map<String, serde_json::Value>,
}

/// One task as read, with the file it is in and what its includes give it.
struct Entry {
    source: Arc<SourceFile>,
    span: Range<usize>,
    handler: bool,
    task: Box<RawTask>,
    inherited: Inherited,
}

/// A task file an `include` names: its own `[vars]` (defaults for its tasks) and tasks.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTaskFile {
    #[serde(default)]
    vars: BTreeMap<String, Spanned<toml::Value>>,
    #[serde(default)]
    task: Vec<Spanned<RawEntry>>,
}

/// The tasks of `raw` in order, each include replaced by its file's tasks (relative to
/// the including file's directory; a file that includes itself, directly or not, is an
/// error at the include).
fn flatten(
    source: &Arc<SourceFile>,
    raw: Vec<Spanned<RawEntry>>,
    handler: bool,
    inherited: &Inherited,
    stack: &mut Vec<PathBuf>,
    out: &mut Vec<Entry>,
) -> Result<(), InputError> {
    for spanned in raw {
        let span = spanned.span();
        match spanned.into_inner() {
            RawEntry::Task(task) => out.push(Entry {
                source: source.clone(),
                span,
                handler,
                task,
                inherited: inherited.clone(),
            }),
            RawEntry::Include(include) => {
                let at = |message: String| {
                    source.error_at(Some(include.path.span()), Some("include".into()), message)
                };
                if handler {
                    return Err(at(
                        "a handler cannot `include`; list the handlers in the playbook".into(),
                    ));
                }
                let base = source.path.parent().unwrap_or(Path::new(""));
                let path = base.join(include.path.get_ref());
                let canonical = path.canonicalize().unwrap_or_else(|_| path.clone());
                if stack
                    .iter()
                    .any(|p| p.canonicalize().unwrap_or_else(|_| p.clone()) == canonical)
                {
                    return Err(at(format!(
                        "`{}` includes itself (through {}); includes must not loop",
                        include.path.get_ref(),
                        stack
                            .iter()
                            .map(|p| p.display().to_string())
                            .collect::<Vec<_>>()
                            .join(" → ")
                    )));
                }
                let file = SourceFile::read(&path).map_err(|e| {
                    at(format!(
                        "cannot read task file {}: {}",
                        path.display(),
                        e.message
                    ))
                })?;
                let file = Arc::new(file);
                let parsed: RawTaskFile =
                    toml::from_str(&file.text).map_err(|e| file.toml_error(&e))?;
                if parsed.task.is_empty() {
                    return Err(file.error_at(
                        None,
                        None,
                        "the task file has no tasks; add at least one [[task]] table",
                    ));
                }
                let mut given = inherited.clone();
                // The file's vars are defaults for its tasks; the include's beat them.
                given.vars.extend(user_vars(&file, &parsed.vars)?);
                given.vars.extend(user_vars(source, &include.vars)?);
                given.tags.extend(include.tags);
                if let Some(h) = include.hosts {
                    given.hosts = Some(h.into_inner());
                }
                stack.push(path);
                flatten(&file, parsed.task, false, &given, stack, out)?;
                stack.pop();
            }
        }
    }
    Ok(())
}

/// User variables (the playbook's `[vars]` or an inventory's `vars`) as JSON. A name
/// ferry sets itself, or a NUL byte anywhere in a value, is an error at the value.
pub fn user_vars(
    source: &SourceFile,
    vars: &BTreeMap<String, Spanned<toml::Value>>,
) -> Result<serde_json::Map<String, serde_json::Value>, InputError> {
    let mut out = serde_json::Map::new();
    for (name, value) in vars {
        check_user_var(source, name, value)?;
        let json = serde_json::to_value(value.get_ref())
            .map_err(|e| source.error_at(Some(value.span()), Some(name.clone()), e.to_string()))?;
        out.insert(name.clone(), json);
    }
    Ok(out)
}

/// See [`user_vars`].
pub fn check_user_var(
    source: &SourceFile,
    name: &str,
    value: &Spanned<toml::Value>,
) -> Result<(), InputError> {
    if BUILTIN_VARS.contains(&name) {
        return Err(source.error_at(
            Some(value.span()),
            Some(name.to_string()),
            format!(
                "`{name}` is a variable ferry sets itself ({}); a variable of that name would \
                 be replaced, rename it",
                BUILTIN_VARS.join(", ")
            ),
        ));
    }
    if name.contains('\0') || has_nul(value.get_ref()) {
        return Err(source.error_at(
            Some(value.span()),
            Some(name.to_string()),
            format!(
                "variable `{}` contains a NUL byte, which no command line can carry",
                name.escape_default()
            ),
        ));
    }
    Ok(())
}

fn has_nul(value: &toml::Value) -> bool {
    match value {
        toml::Value::String(s) => s.contains('\0'),
        toml::Value::Array(items) => items.iter().any(has_nul),
        toml::Value::Table(table) => table.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// `--start-at` named no task.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no task named `{0}` in the playbook")]
pub struct UnknownTask(pub String);
