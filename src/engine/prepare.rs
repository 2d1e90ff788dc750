//! [`prepare`]: the pure step before a run. Selects hosts and tasks, renders every
//! template for every host, runs the modules' argument checks and checks the host
//! variables modules read; also [`check_start_at`] and the plan types.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use super::{PrepareError, RunOptions};
use crate::inventory::Inventory;
use crate::journal::{Journal, JournalData};
use crate::module::{ArgCheck, ArgError};
use crate::playbook::source::InputError;
use crate::playbook::template::{collect_templates, AnyTemplate, Renderer, TemplateError, Vars};
use crate::playbook::Playbook;
use crate::secrets::Secrets;

/// `--start-at` skips the tasks before it, trusting the journal that they are done. It
/// refuses to skip a task whose record on a host of this run was made by another
/// definition of the task (the playbook was edited since): that record says nothing
/// about what the task does now. Tasks never recorded are skipped as asked.
pub fn check_start_at(prepared: &Prepared, journal: &Journal) -> Result<(), PrepareError> {
    let Some(start) = prepared.options.start_at.as_deref() else {
        return Ok(());
    };
    let pb = &prepared.playbook;
    let Some(start_index) = pb.tasks.iter().position(|t| t.name == start) else {
        return Ok(());
    };
    let data: JournalData = journal.snapshot();
    // The hosts of the run as `--limit` chose them (prepare() checked the pattern).
    let limit = prepared
        .options
        .limit
        .as_deref()
        .map(|l| prepared.inventory.select(l).unwrap_or_default());
    let mut edited = Vec::new();
    for task in &pb.tasks[..start_index] {
        let targets = prepared
            .inventory
            .select(task.hosts.get_ref())
            .unwrap_or_default();
        for host in targets {
            if limit.as_ref().is_some_and(|l| !l.contains(&host)) {
                continue;
            }
            let Some(record) = data.hosts.get(&host).and_then(|t| t.get(&task.name)) else {
                continue;
            };
            if !journal.is_current(&task.name, record) {
                edited.push(format!(
                    "task `{}` is skipped but has been edited since its journal record on `{host}` was made ({}); its record no longer says the task is done: run from `{}` or earlier",
                    task.name,
                    task.source.locate(task.span.start),
                    task.name
                ));
            }
        }
    }
    if edited.is_empty() {
        Ok(())
    } else {
        Err(PrepareError::StartAtEdited(edited))
    }
}

/// One task scheduled on one host.
#[derive(Debug, Clone)]
pub struct Scheduled {
    /// Index into `Playbook::tasks`.
    pub task: usize,
    /// Its `when` was false for this host.
    pub skip: bool,
    /// Its `when` reads what an earlier task registers: decided when the task is reached.
    pub when_at_run: bool,
    /// Its `loop`'s items on this host; `None` with a `loop`: they come from what an
    /// earlier task registers, and are read when the task is reached.
    pub items: Option<Vec<Value>>,
    /// The host's vars for this task when the task has vars of its own (from a task
    /// file and its `include`); `None`: the host's ([`Prepared::vars`]).
    pub vars: Option<Arc<Vars>>,
}

/// The validated plan of a run: which tasks run where, with every template rendered
/// once for every host it targets.
#[derive(Debug)]
pub struct Prepared {
    pub playbook: Arc<Playbook>,
    pub inventory: Arc<Inventory>,
    pub options: RunOptions,
    /// Hosts of the run, each with its scheduled tasks in order.
    pub hosts: BTreeMap<String, Vec<Scheduled>>,
    pub vars: BTreeMap<String, Arc<Vars>>,
    pub renderer: Arc<Renderer>,
    /// A renderer per task file other than the playbook (errors are located in it).
    pub renderers: BTreeMap<std::path::PathBuf, Arc<Renderer>>,
}

impl Prepared {
    /// The renderer for `task`'s templates: the one of the file it is written in.
    pub fn renderer_for(&self, task: &crate::playbook::Task) -> Arc<Renderer> {
        self.renderers
            .get(&task.source.path)
            .cloned()
            .unwrap_or_else(|| self.renderer.clone())
    }
}

/// The template variables of `host`: playbook vars < inventory vars, plus
/// `inventory_hostname`, `group_names` and `hostvars`.
pub fn host_vars(
    playbook: &Playbook,
    inventory: &Inventory,
    host: &str,
    secrets: &Secrets,
) -> Vars {
    task_host_vars(playbook, inventory, host, secrets, &serde_json::Map::new())
}

/// [`host_vars`] for a task with vars of its own (`crate::playbook::Task::vars`),
/// which sit between the playbook's and the inventory's.
pub fn task_host_vars(
    playbook: &Playbook,
    inventory: &Inventory,
    host: &str,
    secrets: &Secrets,
    task_vars: &serde_json::Map<String, Value>,
) -> Vars {
    let mut vars = playbook.vars.clone();
    vars.extend(task_vars.clone());
    let mut secret_vars = std::collections::BTreeSet::new();
    if let Some(h) = inventory.hosts.get(host) {
        vars.extend(h.vars.clone());
        // A secret var may take its value from the playbook's `[vars]`: register it.
        for name in &h.secret_vars {
            if let Some(value) = vars.get(name) {
                secrets.add_value(value);
            }
        }
        secret_vars.clone_from(&h.secret_vars);
        vars.insert(
            "group_names".into(),
            Value::Array(h.groups.iter().cloned().map(Value::String).collect()),
        );
    }
    // `hostvars` and `groups` are shared by every host, not copied into each.
    Vars::with_shared(vars, &secret_vars, secrets, inventory.shared_vars(secrets))
}

/// Select hosts and tasks and render every template for every targeted host.
pub fn prepare(
    playbook: Arc<Playbook>,
    inventory: Arc<Inventory>,
    options: RunOptions,
    secrets: &Secrets,
) -> Result<Prepared, PrepareError> {
    playbook.validate(&inventory)?;
    check_tags(&playbook, "--tags", &options.tags)?;
    check_tags(&playbook, "--skip-tags", &options.skip_tags)?;
    let limit = match &options.limit {
        Some(pattern) => Some(inventory.select(pattern).map_err(PrepareError::Limit)?),
        None => None,
    };
    let tasks = playbook.select_tasks(
        &options.tags,
        &options.skip_tags,
        options.start_at.as_deref(),
    )?;
    let renderer = Arc::new(Renderer::new(Some(playbook.source.clone())));
    let mut renderers = BTreeMap::new();
    for task in &playbook.tasks {
        if task.source.path != playbook.source.path {
            renderers
                .entry(task.source.path.clone())
                .or_insert_with(|| Arc::new(Renderer::new(Some(task.source.clone()))));
        }
    }
    let mut hosts: BTreeMap<String, Vec<Scheduled>> = BTreeMap::new();
    let mut vars = BTreeMap::new();
    let mut errors = Vec::new();
    let mut arg_errors: Vec<InputError> = Vec::new();
    // Per host: what earlier tasks register, as placeholders of a registered result's
    // shape (so later templates are checked against it before anything runs).
    let mut registered: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    let handlers = playbook.tasks.iter().filter(|t| t.handler);
    for task in tasks.into_iter().chain(handlers) {
        let index = playbook
            .tasks
            .iter()
            .position(|t| std::ptr::eq(t, task))
            .unwrap_or_default();
        // validate() made sure every pattern resolves.
        let targets = inventory.select(task.hosts.get_ref()).unwrap_or_default();
        for host in targets {
            if limit.as_ref().is_some_and(|l| !l.contains(&host)) {
                continue;
            }
            if task.handler && !notified_on(&playbook, &hosts, &host, &task.name) {
                continue;
            }
            let mut host_vars = vars
                .entry(host.clone())
                .or_insert_with(|| Arc::new(host_vars(&playbook, &inventory, &host, secrets)))
                .clone();
            let own_vars = !task.vars.is_empty();
            if own_vars {
                host_vars = Arc::new(task_host_vars(
                    &playbook, &inventory, &host, secrets, &task.vars,
                ));
            }
            let task_renderer = renderers.get(&task.source.path).unwrap_or(&renderer);
            let earlier = registered.entry(host.clone()).or_default();
            let mut scheduled = plan_on_host(
                &PlanCtx {
                    renderer: task_renderer,
                    secrets,
                },
                task,
                index,
                &host,
                &host_vars,
                earlier,
                &mut errors,
                &mut arg_errors,
            );
            if own_vars {
                scheduled.vars = Some(host_vars);
            }
            if let Some(name) = &task.register {
                earlier.insert(name.clone(), super::keys::placeholder());
            }
            hosts.entry(host).or_default().push(scheduled);
        }
    }
    if !errors.is_empty() {
        return Err(PrepareError::Templates(errors));
    }
    if hosts.is_empty() {
        return Err(PrepareError::NoHosts(match &options.limit {
            Some(l) => format!(
                "--limit {l}: none of the hosts it names runs a task of this playbook{}",
                selection_note(&options)
            ),
            None => format!(
                "no task of this playbook runs on any host{}",
                selection_note(&options)
            ),
        }));
    }
    if !arg_errors.is_empty() {
        return Err(PrepareError::Args(arg_errors));
    }
    Ok(Prepared {
        playbook,
        inventory,
        options,
        hosts,
        vars,
        renderer,
        renderers,
    })
}

/// Whether a task scheduled on `host` so far notifies handler `handler`.
fn notified_on(
    playbook: &Playbook,
    hosts: &BTreeMap<String, Vec<Scheduled>>,
    host: &str,
    handler: &str,
) -> bool {
    hosts.get(host).is_some_and(|s| {
        s.iter().any(|s| {
            playbook.tasks[s.task]
                .notify
                .iter()
                .any(|n| n.get_ref() == handler)
        })
    })
}

struct PlanCtx<'a> {
    renderer: &'a Renderer,
    secrets: &'a Secrets,
}

/// One task on one host: its `when` and `loop` where they can be known now, and every
/// template rendered (for each item) and the module's argument checks, with the
/// placeholders of what earlier tasks register. A template that reads a registered
/// result beyond its known keys (a module's `facts`) is left to the run.
#[allow(clippy::too_many_arguments)]
fn plan_on_host(
    at: &PlanCtx<'_>,
    task: &crate::playbook::Task,
    index: usize,
    host: &str,
    host_vars: &Vars,
    earlier: &serde_json::Map<String, Value>,
    errors: &mut Vec<TemplateError>,
    arg_errors: &mut Vec<InputError>,
) -> Scheduled {
    let renderer = at.renderer;
    let reads_registered = |source: &str| earlier.keys().any(|name| source.contains(name.as_str()));
    let checked_vars = host_vars.overlay(earlier, at.secrets);
    // A host var of the wrong kind is an error whether or not the task runs here.
    if let Err(e) = check_host_vars(task, host, host_vars) {
        if !arg_errors.iter().any(|o| o.to_string() == e.to_string()) {
            arg_errors.push(e);
        }
    }
    let mut scheduled = Scheduled {
        task: index,
        skip: false,
        when_at_run: false,
        items: None,
        vars: None,
    };
    if let Some(when) = &task.when {
        if reads_registered(when.source()) {
            scheduled.when_at_run = true;
        } else {
            match renderer.truthy(when, &checked_vars) {
                Ok(holds) => scheduled.skip = !holds,
                Err(e) => {
                    errors.push(e);
                    return scheduled;
                }
            }
        }
    }
    if scheduled.skip {
        return scheduled;
    }
    let runtime_loop = match &task.loop_ {
        None => false,
        Some(l) if l.root_var().is_some_and(|v| earlier.contains_key(v)) => true,
        Some(l) => match l.items(host_vars) {
            Ok(items) => {
                scheduled.items = Some(items);
                false
            }
            Err(message) => {
                let span = match l {
                    crate::playbook::task_keys::Loop::Var { span, .. } => Some(span.clone()),
                    crate::playbook::task_keys::Loop::Items(_) => None,
                };
                arg_errors.push(task.source.error_at(
                    span,
                    Some("loop".into()),
                    format!("task `{}` on host `{host}`: {message}", task.name),
                ));
                return scheduled;
            }
        },
    };
    // The vars each run of the task sees: one per item, or the host's.
    let per_item: Vec<Vars> = match &scheduled.items {
        Some(items) => items
            .iter()
            .map(|item| {
                let mut extra = earlier.clone();
                extra.insert("item".into(), item.clone());
                host_vars.overlay(&extra, at.secrets)
            })
            .collect(),
        None => vec![checked_vars],
    };
    let templates = collect_templates(&serde_json::to_value(&task.module).unwrap_or(Value::Null));
    let conditions = task.changed_when.iter().chain(task.failed_when.iter());
    // What only the run can know: a module's `facts` in a registered result, an item
    // of a loop over a registered result.
    // A helper's missing parameter names no variable: then the template's text says
    // whether it reads such a value (`{{ eq r.facts.status 200 }}`).
    // `own`: the task's own `register` name, which its conditions see.
    let left_to_run = |e: &TemplateError, source: &str, own: Option<&String>| {
        let registered = |name: &str| earlier.contains_key(name) || own.is_some_and(|o| o == name);
        match e.variable.as_deref() {
            Some(v) => {
                let mut path = v.split('.');
                let root = path.next().unwrap_or_default();
                (registered(root) && path.next() == Some("facts"))
                    || (runtime_loop && root == "item")
            }
            None => {
                earlier
                    .keys()
                    .chain(own)
                    .any(|name| source.contains(&format!("{name}.facts")))
                    || (runtime_loop && source.contains("item"))
            }
        }
    };
    for vars in &per_item {
        let mut rendered = true;
        for t in &templates {
            if let Err(e) = check_template(task, renderer, t, vars) {
                rendered = false;
                let source = match t {
                    AnyTemplate::Plain(t) => t.source(),
                    AnyTemplate::Shell(t) => t.template().source(),
                };
                if !left_to_run(&e, source, None) {
                    errors.push(TemplateError {
                        message: format!("{} (host `{host}`)", e.message),
                        ..e
                    });
                }
            }
        }
        for cond in conditions.clone() {
            // Conditions also see the task's own result, under its `register` name.
            let mut own = serde_json::Map::new();
            if let Some(name) = &task.register {
                own.insert(name.clone(), super::keys::placeholder());
            }
            if let Err(e) = renderer.render(cond, &vars.overlay(&own, at.secrets)) {
                if !left_to_run(&e, cond.source(), task.register.as_ref()) {
                    errors.push(e);
                }
            }
        }
        // The module's own checks, on templates known to render.
        if rendered {
            let check = ArgCheck {
                host,
                base_dir: task
                    .source
                    .path
                    .parent()
                    .unwrap_or(std::path::Path::new("")),
                vars,
                renderer,
            };
            if let Err(e) = task.module.module().check_args(&check) {
                let e = locate_arg_error(task, e);
                if !arg_errors.iter().any(|o| o.to_string() == e.to_string()) {
                    arg_errors.push(e);
                }
            }
        }
    }
    scheduled
}

/// Every tag given must be on some task of the playbook.
fn check_tags(playbook: &Playbook, flag: &str, tags: &[String]) -> Result<(), PrepareError> {
    let unknown: Vec<&str> = tags
        .iter()
        .map(String::as_str)
        .filter(|t| {
            !playbook
                .tasks
                .iter()
                .any(|task| task.tags.iter().any(|g| g == t))
        })
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    let mut known: Vec<&str> = playbook
        .tasks
        .iter()
        .flat_map(|t| t.tags.iter().map(String::as_str))
        .collect();
    known.sort_unstable();
    known.dedup();
    Err(PrepareError::Tags(format!(
        "{flag}: no task of this playbook has the tag{} {}; its tags: {}",
        if unknown.len() == 1 { "" } else { "s" },
        unknown.join(", "),
        if known.is_empty() {
            "none".to_string()
        } else {
            known.join(", ")
        }
    )))
}

/// " (with --tags ...)" when a task selection may be why nothing is left.
fn selection_note(options: &RunOptions) -> String {
    let mut parts = Vec::new();
    if !options.tags.is_empty() {
        parts.push(format!("--tags {}", options.tags.join(",")));
    }
    if !options.skip_tags.is_empty() {
        parts.push(format!("--skip-tags {}", options.skip_tags.join(",")));
    }
    if let Some(t) = &options.start_at {
        parts.push(format!("--start-at-task {t}"));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" (with {})", parts.join(", "))
    }
}

/// The host vars `task`'s module declares ([`crate::module::Module::vars`]) that the
/// host has (inventory or playbook vars) must be of their declared kind; reported at
/// the task.
fn check_host_vars(
    task: &crate::playbook::Task,
    host: &str,
    vars: &Vars,
) -> Result<(), InputError> {
    let wrong: Vec<String> = task
        .module
        .module()
        .vars()
        .iter()
        .filter_map(|decl| {
            let value = vars.get(decl.name)?;
            decl.mismatch(value)?;
            Some(format!(
                "host var `{}` must be {}, found {}",
                decl.name,
                decl.kind.as_str(),
                crate::module::vars::kind_of(value)
            ))
        })
        .collect();
    if wrong.is_empty() {
        return Ok(());
    }
    let at = task.span.start;
    Err(task.source.error_at(
        Some(at..at),
        None,
        format!(
            "task `{}` on inventory host `{host}`: {}",
            task.name,
            wrong.join("; ")
        ),
    ))
}

/// Render one template of `task` for one host the way the module will: plain templates
/// are names or paths a command receives (operands: a leading `-` is refused) unless
/// the module lists their field as text.
fn check_template(
    task: &crate::playbook::Task,
    renderer: &Renderer,
    template: &AnyTemplate,
    vars: &Vars,
) -> Result<(), TemplateError> {
    match template {
        AnyTemplate::Plain(t) => {
            let field = t.span().and_then(|span| task.source.key_near(span));
            let text = field
                .as_deref()
                .is_some_and(|f| task.module.text_fields().contains(&f));
            if text {
                renderer.render(t, vars).map(drop)
            } else {
                renderer.render_operand(t, vars).map(drop)
            }
        }
        shell => renderer.check(shell, vars),
    }
}

/// Where in the playbook an argument error is: at its template, at its key in the
/// task, or at the task.
fn locate_arg_error(task: &crate::playbook::Task, e: ArgError) -> InputError {
    let source = &task.source;
    if let Some(span) = e.template.as_ref().and_then(|t| t.span()) {
        return source.error_at(
            Some(span),
            None,
            format!("task `{}`: {}", task.name, e.message),
        );
    }
    let key_at = e.field.and_then(|key| {
        // The task's span ends with its own keys; its module table follows, up to the
        // next task.
        let text = source.text.get(task.span.start..)?;
        let mut offset = 0;
        for (n, line) in text.split_inclusive('\n').enumerate() {
            let trimmed = line.trim_start();
            if n > 0 && trimmed.starts_with("[[") {
                break;
            }
            if let Some(rest) = trimmed.strip_prefix(key) {
                if rest.trim_start().starts_with('=') {
                    return Some(task.span.start + offset + (line.len() - trimmed.len()));
                }
            }
            offset += line.len();
        }
        None
    });
    let at = key_at.unwrap_or(task.span.start);
    source.error_at(
        Some(at..at),
        e.field.map(str::to_string),
        format!("task `{}`: {}", task.name, e.message),
    )
}
