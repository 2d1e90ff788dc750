//! Command-line interface: flags → a run → report → exit code (see [`exit`] for the
//! table, which is `ansible-playbook`'s).

mod adhoc;
mod args;
mod exit;
mod extra_vars;

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{CommandFactory, Parser};

use crate::engine::connect::SshConnector;
use crate::engine::{self, PrepareError, Prepared, RunEnv, RunOptions};
use crate::inventory::Inventory;
use crate::journal::{check_owner, Journal, JournalError};
use crate::module::Confirm;
use crate::playbook::Playbook;
use crate::report::{journal_table, visible, EventSink, PlayReport};
use crate::secrets::Secrets;
use crate::transport::Connector;

pub use args::{
    Cli, Command, ConnectArgs, Format, PingArgs, PlayArgs, RunArgs, StatusArgs, VERSION,
};
pub use exit::{
    EXIT_BAD_OPTIONS, EXIT_ERROR, EXIT_HOST_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARSE_ERROR,
    EXIT_UNEXPECTED, EXIT_UNREACHABLE,
};

/// Asks on the terminal; never when stdin is not a terminal.
struct TtyConfirm;

impl Confirm for TtyConfirm {
    fn confirm(&self, question: &str) -> bool {
        if !std::io::stdin().is_terminal() {
            return false;
        }
        eprint!("{} [y/N] ", visible(question));
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        if std::io::stdin().lock().read_line(&mut line).is_err() {
            return false;
        }
        matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes")
    }
}

/// How log fields are written: every field value — the message too, which often carries
/// a command line or a host's output — masked and with control characters made
/// visible; names, levels and times as they are. The same formatter writes span
/// fields, so nothing reaches the log unmasked.
fn masked_fields(
    secrets: Secrets,
) -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync + 'static {
    use tracing_subscriber::field::MakeExt;
    tracing_subscriber::fmt::format::debug_fn(
        move |w: &mut tracing_subscriber::fmt::format::Writer<'_>,
              field: &tracing::field::Field,
              value: &dyn std::fmt::Debug| {
            let shown = visible(&secrets.mask(&format!("{value:?}")));
            if field.name() == "message" {
                write!(w, "{shown}")
            } else {
                write!(w, "{}={shown}", field.name())
            }
        },
    )
    .delimited(" ")
}

fn init_logs(verbose: u8, secrets: &Secrets) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("ferry={level}")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .fmt_fields(masked_fields(secrets.clone()))
        .with_writer(std::io::stderr)
        .try_init();
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                EXIT_BAD_OPTIONS
            } else {
                EXIT_OK
            });
        }
    };
    // One set of secrets for the whole process, known to the log formatter before
    // anything is logged.
    let secrets = Secrets::new();
    init_logs(cli.verbose, &secrets);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferry: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    // A panic is a bug in ferry: the hook has printed it; say what to do and exit 250,
    // as ansible-playbook does for an unexpected error.
    let run = std::panic::AssertUnwindSafe(|| {
        runtime.block_on(run_with_secrets(cli, Arc::new(SshConnector), secrets))
    });
    match std::panic::catch_unwind(run) {
        Ok(code) => ExitCode::from(code),
        Err(_) => {
            eprintln!(
                "ferry: unexpected error (a bug in ferry {VERSION}); the journal holds what \
                 completed, a re-run resumes from there. Please report the message above."
            );
            ExitCode::from(EXIT_UNEXPECTED)
        }
    }
}

/// The journal of a run: `--journal`, else the default beside the inventory. A journal
/// an older ferry left at the old default path (shared by every playbook of the same
/// file name) is not taken over silently: the operator says whose it is by moving it.
fn journal_path(
    given: Option<PathBuf>,
    inventory: &Inventory,
    playbook: &Path,
) -> Result<PathBuf, String> {
    if let Some(path) = given {
        return Ok(path);
    }
    let path = inventory.default_journal_path(playbook);
    let legacy = inventory.legacy_journal_path(playbook);
    if !path.exists() && legacy.exists() {
        return Err(format!(
            "found a journal of an older ferry at {legacy}, which does not record which playbook \
             wrote it (any playbook named like {playbook} shared it). Journals are now kept per \
             playbook and inventory. If it is this playbook's, move it: mv {legacy} {path}; \
             otherwise delete it, or pass it with --journal",
            legacy = crate::command::quote(&legacy.to_string_lossy()),
            playbook = playbook.display(),
            path = crate::command::quote(&path.to_string_lossy()),
        ));
    }
    Ok(path)
}

/// Print an error and return `code`.
fn fail_with(code: u8, e: impl std::fmt::Display) -> u8 {
    eprintln!("ferry: {}", visible(&e.to_string()));
    code
}

/// A file that does not parse or check (inventory, playbook, template): exit 4.
fn parse_error(e: impl std::fmt::Display) -> u8 {
    fail_with(EXIT_PARSE_ERROR, e)
}

/// Options that cannot be used: exit 5.
fn bad_options(e: impl std::fmt::Display) -> u8 {
    fail_with(EXIT_BAD_OPTIONS, e)
}

/// Anything else that stops a run before it starts (the journal is locked): exit 1.
fn error(e: impl std::fmt::Display) -> u8 {
    fail_with(EXIT_ERROR, e)
}

/// The report on stdout; with `-v` the table's long cells stay whole (the terminal wraps
/// them) instead of being folded to its width.
fn print_report(report: &PlayReport, format: Format, verbose: u8) -> u8 {
    match format {
        Format::Json => println!("{}", report.to_json()),
        Format::Table => print!("{}", report.table(verbose == 0)),
    }
    exit::of_report(report)
}

fn events(path: Option<&Path>, secrets: &Secrets) -> Result<EventSink, String> {
    match path {
        Some(p) => EventSink::to_file(p, secrets.clone())
            .map_err(|e| format!("cannot write events to {}: {e}", p.display())),
        None => Ok(EventSink::none_masking(secrets.clone())),
    }
}

/// Run a parsed command line with `connector`; returns the exit code.
pub async fn run(cli: Cli, connector: Arc<dyn Connector>) -> u8 {
    run_with_secrets(cli, connector, Secrets::new()).await
}

/// [`run`], registering the run's secrets in `secrets` (which the logs mask with).
pub async fn run_with_secrets(cli: Cli, connector: Arc<dyn Connector>, secrets: Secrets) -> u8 {
    crate::install_tls_provider();
    match cli.command {
        Command::Play(args) => play(args, connector, secrets, cli.verbose).await,
        Command::Run(args) => adhoc::run(args, connector, secrets, cli.verbose).await,
        Command::Ping(args) => ping(args, connector, secrets, cli.verbose).await,
        Command::Status(args) => status(args, &secrets),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "ferry", &mut std::io::stdout());
            EXIT_OK
        }
        Command::Man => {
            let mut out = Vec::new();
            if let Err(e) = clap_mangen::Man::new(Cli::command()).render(&mut out) {
                return error(format!("cannot write the man page: {e}"));
            }
            let _ = std::io::stdout().write_all(&out);
            EXIT_OK
        }
    }
}

/// The inventory with the command line's connection settings under its own: `-u` and
/// `--private-key` where the inventory names no user or key, the `-K` password for
/// hosts with `become` and no password of their own.
fn load_inventory(
    path: &Path,
    connect: &ConnectArgs,
    extra_vars: &[String],
    secrets: &Secrets,
) -> Result<Inventory, u8> {
    let extra = extra_vars::parse(extra_vars).map_err(|e| match e {
        extra_vars::ExtraVarsError::Malformed { .. } => bad_options(e),
        extra_vars::ExtraVarsError::Input(e) => parse_error(e),
    })?;
    let mut inventory = Inventory::load(path, secrets).map_err(parse_error)?;
    let become_password = if connect.ask_become_pass {
        Some(ask_become_password(secrets)?)
    } else {
        None
    };
    // A person at a terminal is asked for a key's passphrase or a login password that
    // the inventory does not give, as ssh asks; a pipe or a CI job never is.
    let person = std::io::stdin().is_terminal();
    for host in inventory.hosts.values_mut() {
        let spec = &mut host.connect;
        spec.allow_prompt = person;
        if spec.user.is_none() {
            spec.user.clone_from(&connect.user);
        }
        if spec.identity_files.is_empty() {
            spec.identity_files
                .extend(connect.private_key.iter().cloned());
        }
        if let (Some(become_), Some(password)) = (spec.become_.as_mut(), &become_password) {
            become_.password.get_or_insert_with(|| password.clone());
        }
        // Extra vars beat the inventory's and the playbook's (inventory vars already
        // beat the playbook's).
        host.vars
            .extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    Ok(inventory)
}

/// `-K`: the sudo password, asked on the terminal (never without one: a pipe or a CI job
/// would otherwise hang or feed the password from somewhere unexpected).
fn ask_become_password(secrets: &Secrets) -> Result<String, u8> {
    if !std::io::stdin().is_terminal() {
        return Err(bad_options(
            "-K/--ask-become-pass asks on a terminal and stdin is not one; give the password \
             through the inventory's become_password_env instead",
        ));
    }
    match rpassword::prompt_password("BECOME password: ") {
        Ok(p) => {
            if !p.is_empty() {
                secrets.add(p.clone());
            }
            Ok(p)
        }
        Err(e) => Err(error(format!("cannot read the become password: {e}"))),
    }
}

async fn ping(args: PingArgs, connector: Arc<dyn Connector>, secrets: Secrets, verbose: u8) -> u8 {
    let inventory = match load_inventory(&args.inventory, &args.connect, &[], &secrets) {
        Ok(i) => Arc::new(i),
        Err(code) => return code,
    };
    let hosts = match inventory.select(args.limit.as_deref().unwrap_or("all")) {
        Ok(h) => h,
        Err(e) => return bad_options(format!("--limit: {e}")),
    };
    let sink = match events(args.events.as_deref(), &secrets) {
        Ok(s) => s,
        Err(e) => return error(e),
    };
    let report = engine::ping(inventory, hosts, connector, secrets, sink).await;
    print_report(&report, args.format, verbose)
}

fn status(args: StatusArgs, secrets: &Secrets) -> u8 {
    let inventory = match Inventory::load(&args.inventory, secrets) {
        Ok(i) => i,
        Err(e) => return parse_error(e),
    };
    let path = match journal_path(args.journal, &inventory, &args.playbook) {
        Ok(p) => p,
        Err(e) => return error(e),
    };
    let read = Journal::read(&path).and_then(|data| {
        // Only with a playbook that parses: status is also for a playbook being repaired.
        if let Ok(playbook) = Playbook::load(&args.playbook) {
            check_owner(&path, &data, &engine::journal_owner(&playbook, &inventory))?;
        }
        Ok(data)
    });
    match read {
        Ok(data) => {
            match args.format {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&data).unwrap_or_default()
                ),
                Format::Table => print!("{}", journal_table(&data)),
            }
            EXIT_OK
        }
        Err(JournalError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "no journal at {}: nothing has run yet",
                visible(&path.display().to_string())
            );
            EXIT_OK
        }
        Err(e) => error(e),
    }
}

/// The exit code of a plan that could not be made: a file that does not parse or
/// check (4), or options that select nothing or name what is not there (5).
fn prepare_failed(e: PrepareError) -> u8 {
    match e {
        PrepareError::Input(_) | PrepareError::Templates(_) | PrepareError::Args(_) => {
            parse_error(e)
        }
        PrepareError::Limit(_)
        | PrepareError::StartAt(_)
        | PrepareError::StartAtEdited(_)
        | PrepareError::Tags(_)
        | PrepareError::NoHosts(_) => bad_options(e),
    }
}

async fn play(args: PlayArgs, connector: Arc<dyn Connector>, secrets: Secrets, verbose: u8) -> u8 {
    let inventory = match load_inventory(&args.inventory, &args.connect, &args.extra_vars, &secrets)
    {
        Ok(i) => Arc::new(i),
        Err(code) => return code,
    };
    let playbook = match Playbook::load(&args.playbook) {
        Ok(p) => Arc::new(p),
        Err(e) => return parse_error(e),
    };
    let options = RunOptions {
        check: args.check,
        yes: args.yes,
        forks: args.forks.map(usize::from),
        limit: args.limit,
        tags: args.tags,
        skip_tags: args.skip_tags,
        start_at: args.start_at,
        overwrite: args.overwrite,
        diff: args.diff,
    };
    let prepared = match engine::prepare(playbook.clone(), inventory.clone(), options, &secrets) {
        Ok(p) => p,
        Err(e) => return prepare_failed(e),
    };
    if args.syntax_check || args.list_tasks || args.list_hosts {
        print!(
            "{}",
            listing(&prepared, &args.playbook, args.list_tasks, args.list_hosts)
        );
        return EXIT_OK;
    }
    let journal_path = match journal_path(args.journal, &inventory, &args.playbook) {
        Ok(p) => p,
        Err(e) => return error(e),
    };
    let owner = engine::journal_owner(&playbook, &inventory);
    let journal = match Journal::open_for(&journal_path, &owner, secrets.clone(), !args.check) {
        Ok(j) => Arc::new(j),
        Err(e) => return error(e),
    };
    if let Err(e) = engine::check_start_at(&prepared, &journal) {
        return bad_options(e);
    }
    let report = match run_prepared(
        prepared,
        journal,
        connector,
        secrets,
        args.events.as_deref(),
        args.format,
        Arc::new(TtyConfirm),
    )
    .await
    {
        Ok(r) => r,
        Err(code) => return code,
    };
    print_report(&report, args.format, verbose)
}

/// Run a prepared play as the command line does (`play` and `run`): events to `events`
/// (progress bars with the table format), Ctrl-C watched, and, once it ends, the
/// remote stops of abandoned commands waited for and the live lines cleared, so the
/// report can take the terminal. `Err`: the exit code of an events file that cannot be
/// written.
async fn run_prepared(
    prepared: Prepared,
    journal: Arc<Journal>,
    connector: Arc<dyn Connector>,
    secrets: Secrets,
    events_to: Option<&Path>,
    format: Format,
    confirmer: Arc<dyn Confirm>,
) -> Result<PlayReport, u8> {
    let sink = match events(events_to, &secrets) {
        Ok(s) if matches!(format, Format::Table) => s.with_progress_bars(),
        Ok(s) => s,
        Err(e) => return Err(error(e)),
    };
    let interrupt = tokio_util::sync::CancellationToken::new();
    let watcher = watch_signals(interrupt.clone());
    let live = sink.clone();
    let env = RunEnv {
        connector,
        journal,
        events: sink,
        secrets,
        confirmer,
        interrupt,
    };
    let report = engine::run(prepared, env).await;
    // Commands ferry gave up on (interrupted, timed out) are stopped by tasks spawned
    // when their futures were dropped: let those reach the hosts before the process,
    // and with it every connection, ends.
    crate::transport::ssh::wait_for_stops(std::time::Duration::from_secs(15)).await;
    if let Some(w) = watcher {
        w.abort();
    }
    // The live lines go before the report takes the terminal.
    live.finish();
    Ok(report)
}

/// SIGINT or SIGTERM: the first stops the run cleanly (no task starts, running ones are
/// stopped and recorded as interrupted, the report so far is printed, exit 99); a
/// second SIGINT exits at once.
fn watch_signals(
    interrupt: tokio_util::sync::CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("cannot watch SIGINT/SIGTERM: Ctrl-C will end ferry at once");
        return None;
    };
    Some(tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!(
            "\nferry: interrupted: stopping the running tasks (their remote commands are told \
             to stop) and writing the journal; Ctrl-C again exits at once"
        );
        interrupt.cancel();
        int.recv().await;
        eprintln!("ferry: interrupted again: exiting now (the journal may show a task as running)");
        std::process::exit(i32::from(EXIT_INTERRUPTED));
    }))
}

/// `--syntax-check`, `--list-tasks`, `--list-hosts`: what the plan is, in
/// `ansible-playbook`'s layout, nothing contacted.
fn listing(prepared: &Prepared, path: &Path, tasks: bool, hosts: bool) -> String {
    let mut out = format!("\nplaybook: {}\n", path.display());
    if hosts {
        let names: Vec<&String> = prepared.hosts.keys().collect();
        out.push_str(&format!("\n  hosts ({}):\n", names.len()));
        for h in names {
            out.push_str(&format!("    {}\n", visible(h)));
        }
    }
    if tasks {
        out.push_str("\n  tasks:\n");
        for (index, task) in prepared.playbook.tasks.iter().enumerate() {
            let on: Vec<&str> = prepared
                .hosts
                .iter()
                .filter(|(_, planned)| planned.iter().any(|s| s.task == index && !s.skip))
                .map(|(h, _)| h.as_str())
                .collect();
            if on.is_empty() {
                continue;
            }
            out.push_str(&format!(
                "    {}\tTAGS: [{}]\tHOSTS: {}\n",
                visible(&task.name),
                task.tags.join(", "),
                on.join(", ")
            ));
        }
    }
    out
}
