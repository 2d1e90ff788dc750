//! The command line, as clap parses it. Flags follow `ansible-playbook`'s where ferry has
//! the same thing (`-i`, `-C`, `-l`, `-t`, `-f`, `-e`, `-u`, `-K`, ...), so an operator's
//! habits and wrappers carry over.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::VERSION;

#[derive(Debug, Parser)]
#[command(name = "ferry", version = VERSION, about = "Idempotent provisioning over SSH")]
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
    /// Run one command on the hosts a pattern selects, a line per host (like
    /// `ansible PATTERN -a CMD` or `pyinfra INVENTORY exec -- CMD`).
    Run(RunArgs),
    /// Connect to each host, authenticate and run `true`.
    Ping(PingArgs),
    /// Show what the journal says is done, without connecting.
    Status(StatusArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print ferry's man page (roff), e.g. `ferry man > /usr/local/share/man/man1/ferry.1`.
    Man,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// How to reach the hosts, beside the inventory: below the inventory's own settings, as
/// `ansible-playbook`'s `-u` and `--private-key` are below `ansible_user`.
#[derive(Debug, Clone, Default, Args)]
pub struct ConnectArgs {
    /// Log in as this user where the inventory names none (beats the ssh config's User).
    #[arg(short = 'u', long = "user", value_name = "REMOTE_USER")]
    pub user: Option<String>,
    /// Use this key where the inventory names none.
    #[arg(long = "private-key", visible_alias = "key-file", value_name = "FILE")]
    pub private_key: Option<PathBuf>,
    /// Ask for the sudo password on the terminal, for hosts with `become`.
    #[arg(short = 'K', long = "ask-become-pass")]
    pub ask_become_pass: bool,
}

#[derive(Debug, Args)]
pub struct PlayArgs {
    pub playbook: PathBuf,
    #[arg(short, long)]
    pub inventory: PathBuf,
    /// Report what would change; change nothing.
    #[arg(short = 'C', long)]
    pub check: bool,
    /// Show the differences a change makes, where a module can show them.
    #[arg(short = 'D', long)]
    pub diff: bool,
    /// Only these hosts: a pattern as Ansible's (`web*:&prod:!web3`, `,` or `:`).
    #[arg(short = 'l', long, value_name = "SUBSET")]
    pub limit: Option<String>,
    /// Only tasks with one of these tags (comma-separated, or repeat the flag).
    #[arg(short = 't', long, value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Leave out tasks with one of these tags.
    #[arg(long, value_delimiter = ',')]
    pub skip_tags: Vec<String>,
    /// Start at this task (skipping earlier ones).
    #[arg(
        long = "start-at-task",
        visible_alias = "start-at",
        value_name = "TASK"
    )]
    pub start_at: Option<String>,
    /// Variables over every other: `key=value` (a string), `@file.toml` (a table), or
    /// an inline TOML table `{ key = 1 }`; repeat the flag for more.
    #[arg(short = 'e', long = "extra-vars", value_name = "VARS")]
    pub extra_vars: Vec<String>,
    /// List the tasks that would run (after --tags, --skip-tags, --start-at-task) and exit.
    #[arg(long)]
    pub list_tasks: bool,
    /// List the hosts that would be contacted (after --limit) and exit.
    #[arg(long)]
    pub list_hosts: bool,
    /// Check the inventory, playbook and templates, contact nothing, and exit.
    #[arg(long)]
    pub syntax_check: bool,
    /// Confirm destructive steps in advance.
    #[arg(long)]
    pub yes: bool,
    /// After a completed migration, allow overwriting these stores on the new side
    /// (comma-separated: postgres, redis, storage, app, or all). Without it a re-run
    /// never touches a completed (possibly live) target.
    #[arg(long, value_delimiter = ',')]
    pub overwrite: Vec<String>,
    /// Hosts at a time (default: all).
    #[arg(short = 'f', long, value_parser = clap::value_parser!(u16).range(1..))]
    pub forks: Option<u16>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Write JSON-lines events here.
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// Journal file (default: beside the inventory, in .ferry/).
    #[arg(long)]
    pub journal: Option<PathBuf>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The hosts: a pattern as Ansible's (`all`, `web*:&prod:!web3`).
    pub pattern: String,
    #[arg(short, long)]
    pub inventory: PathBuf,
    /// Say where it would run; run nothing.
    #[arg(short = 'C', long)]
    pub check: bool,
    /// Hosts at a time (default: all).
    #[arg(short = 'f', long, value_parser = clap::value_parser!(u16).range(1..))]
    pub forks: Option<u16>,
    /// Variables for the command's templates: as `ferry play -e`.
    #[arg(short = 'e', long = "extra-vars", value_name = "VARS")]
    pub extra_vars: Vec<String>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Write JSON-lines events here.
    #[arg(long)]
    pub events: Option<PathBuf>,
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// The command, after `--`: its words are joined with spaces and run by the host's
    /// `sh -c`, as `ssh HOST CMD...` does; `{{ var }}` is rendered, quoted.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PingArgs {
    #[arg(short, long)]
    pub inventory: PathBuf,
    #[arg(short = 'l', long, value_name = "SUBSET")]
    pub limit: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    #[arg(long)]
    pub events: Option<PathBuf>,
    #[command(flatten)]
    pub connect: ConnectArgs,
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
