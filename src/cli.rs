//! Command-line interface: flags → a run → report → exit code.
//!
//! Exit codes: 0 all good; 2 bad input (CLI, inventory, playbook, template, journal
//! locked), nothing contacted; 3 a task failed or a host was unreachable.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::engine::connect::SshConnector;
use crate::engine::{self, RunEnv, RunOptions};
use crate::inventory::Inventory;
use crate::journal::{check_owner, Journal, JournalError};
use crate::module::Confirm;
use crate::playbook::Playbook;
use crate::report::{journal_table, visible, EventSink, PlayReport};
use crate::secrets::Secrets;
use crate::transport::Connector;

pub const EXIT_OK: u8 = 0;
pub const EXIT_BAD_INPUT: u8 = 2;
pub const EXIT_FAILED: u8 = 3;

#[derive(Debug, Parser)]
#[command(name = "ferry", version, about = "Idempotent provisioning over SSH")]
pub struct Cli {
    /// More logs on stderr (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a playbook.
    Play(PlayArgs),
    /// Connect to each host, authenticate and run `true`.
    Ping(PingArgs),
    /// Show what the journal says is done, without connecting.
    Status(StatusArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct PlayArgs {
    pub playbook: PathBuf,
    #[arg(short, long)]
    pub inventory: PathBuf,
    /// Report what would change; change nothing.
    #[arg(long)]
    pub check: bool,
    /// Only these hosts/groups (comma-separated).
    #[arg(long)]
    pub limit: Option<String>,
    #[arg(long, value_delimiter = ',')]
    pub tags: Vec<String>,
    #[arg(long, value_delimiter = ',')]
    pub skip_tags: Vec<String>,
    /// Start at this task (skipping earlier ones).
    #[arg(long)]
    pub start_at: Option<String>,
    /// Confirm destructive steps in advance.
    #[arg(long)]
    pub yes: bool,
    /// After a completed migration, allow overwriting these stores on the new side
    /// (comma-separated: postgres, redis, storage, app, or all). Without it a re-run
    /// never touches a completed (possibly live) target.
    #[arg(long, value_delimiter = ',')]
    pub overwrite: Vec<String>,
    /// Hosts at a time (default: all).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub forks: Option<u16>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Write JSON-lines events here.
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// Journal file (default: beside the inventory, in .ferry/).
    #[arg(long)]
    pub journal: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PingArgs {
    #[arg(short, long)]
    pub inventory: PathBuf,
    #[arg(long)]
    pub limit: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    #[arg(long)]
    pub events: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    pub playbook: PathBuf,
    #[arg(short, long)]
    pub inventory: PathBuf,
    #[arg(long)]
    pub journal: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

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
                EXIT_BAD_INPUT
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
            return ExitCode::from(EXIT_FAILED);
        }
    };
    ExitCode::from(runtime.block_on(run_with_secrets(cli, Arc::new(SshConnector), secrets)))
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

/// Print an input error and return exit code 2.
fn bad_input(e: impl std::fmt::Display) -> u8 {
    eprintln!("ferry: {}", visible(&e.to_string()));
    EXIT_BAD_INPUT
}

fn print_report(report: &PlayReport, format: Format) -> u8 {
    match format {
        Format::Json => println!("{}", report.to_json()),
        Format::Table => print!("{}", report.to_table()),
    }
    if report.success() {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

fn events(path: Option<&Path>, secrets: &Secrets) -> Result<EventSink, String> {
    match path {
        Some(p) => EventSink::to_file(p, secrets.clone())
            .map_err(|e| format!("cannot write events to {}: {e}", p.display())),
        None => Ok(EventSink::none()),
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
        Command::Play(args) => play(args, connector, secrets).await,
        Command::Ping(args) => {
            let inventory = match Inventory::load(&args.inventory, &secrets) {
                Ok(i) => Arc::new(i),
                Err(e) => return bad_input(e),
            };
            let hosts = match inventory.select(args.limit.as_deref().unwrap_or("all")) {
                Ok(h) => h,
                Err(e) => return bad_input(format!("--limit: {e}")),
            };
            let sink = match events(args.events.as_deref(), &secrets) {
                Ok(s) => s,
                Err(e) => return bad_input(e),
            };
            let report = engine::ping(inventory, hosts, connector, secrets, sink).await;
            print_report(&report, args.format)
        }
        Command::Status(args) => {
            let inventory = match Inventory::load(&args.inventory, &secrets) {
                Ok(i) => i,
                Err(e) => return bad_input(e),
            };
            let path = match journal_path(args.journal, &inventory, &args.playbook) {
                Ok(p) => p,
                Err(e) => return bad_input(e),
            };
            let read = Journal::read(&path).and_then(|data| {
                // Only with a playbook that parses: status is also for a playbook
                // being repaired.
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
                Err(JournalError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    println!(
                        "no journal at {}: nothing has run yet",
                        visible(&path.display().to_string())
                    );
                    EXIT_OK
                }
                Err(e) => bad_input(e),
            }
        }
    }
}

async fn play(args: PlayArgs, connector: Arc<dyn Connector>, secrets: Secrets) -> u8 {
    let inventory = match Inventory::load(&args.inventory, &secrets) {
        Ok(i) => Arc::new(i),
        Err(e) => return bad_input(e),
    };
    let playbook = match Playbook::load(&args.playbook) {
        Ok(p) => Arc::new(p),
        Err(e) => return bad_input(e),
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
    };
    let prepared = match engine::prepare(playbook.clone(), inventory.clone(), options, &secrets) {
        Ok(p) => p,
        Err(e) => return bad_input(e),
    };
    let journal_path = match journal_path(args.journal, &inventory, &args.playbook) {
        Ok(p) => p,
        Err(e) => return bad_input(e),
    };
    let owner = engine::journal_owner(&playbook, &inventory);
    let journal = match Journal::open_for(&journal_path, &owner, secrets.clone(), !args.check) {
        Ok(j) => Arc::new(j),
        Err(e) => return bad_input(e),
    };
    if let Err(e) = engine::check_start_at(&prepared, &journal) {
        return bad_input(e);
    }
    let sink = match events(args.events.as_deref(), &secrets) {
        Ok(s) if matches!(args.format, Format::Table) => s.with_progress_bars(),
        Ok(s) => s,
        Err(e) => return bad_input(e),
    };
    let env = RunEnv {
        connector,
        journal,
        events: sink,
        secrets,
        confirmer: Arc::new(TtyConfirm),
    };
    let report = engine::run(prepared, env).await;
    print_report(&report, args.format)
}
