//! The `cutover` command line: a thin shell over the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cutover",
    version,
    about = "Migrate mailboxes from a legacy IMAP server to Office 365 and keep them in sync until the MX cutover"
)]
struct Cli {
    /// Configuration file (TOML); every key can be overridden by CUTOVER_<SECTION>__<KEY>.
    #[arg(
        long,
        global = true,
        default_value = "/etc/cutover/cutover.toml",
        env = "CUTOVER_CONFIG"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Copy every mailbox of the CSV from the source to the destination.
    Sync {
        /// Run one pass and exit (0 only if every mailbox finished).
        #[arg(long)]
        once: bool,
    },
    /// Log in to both sides for every mailbox and list folders; change nothing.
    Check,
    /// The daemon: sync every mailbox, then deltas every `[sync] interval`, watch the MX
    /// and complete the migration after the cutover. Stops on SIGTERM/SIGINT.
    Run,
    /// Per-mailbox status, from the running daemon or from the spool.
    Status {
        /// Print the rows as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Per-mailbox report and the list of skipped/failed items, as CSV.
    Report {
        /// CSV output (the only format; accepted for clarity in scripts).
        #[arg(long)]
        csv: bool,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Final sync, then Completed: for the named mailboxes, or every one.
    Complete {
        /// A mailbox (EmailAddress) to complete; repeat for several. Default: all.
        #[arg(long)]
        mailbox: Vec<String>,
    },
    /// Send the failed messages again on the next pass, without waiting out their backoff
    /// (after fixing what they failed on: a quota, a folder).
    RetryErrors {
        /// A mailbox (EmailAddress); repeat for several. Default: all.
        #[arg(long)]
        mailbox: Vec<String>,
    },
    /// Pause the named mailboxes, or the whole migration: no pass runs (a running one
    /// stops) until `resume`. Kept across restarts.
    Pause {
        /// A mailbox (EmailAddress); repeat for several. Default: the whole migration.
        #[arg(long)]
        mailbox: Vec<String>,
    },
    /// Undo `pause` (with no mailbox named: nothing stays paused).
    Resume {
        /// A mailbox (EmailAddress); repeat for several. Default: the whole migration.
        #[arg(long)]
        mailbox: Vec<String>,
    },
    /// Ask the running daemon for a pass now instead of at the next interval.
    SyncNow {
        /// A mailbox (EmailAddress); repeat for several. Default: all.
        #[arg(long)]
        mailbox: Vec<String>,
    },
    /// Set the status page's password: its argon2 hash goes to `[web] password_file`
    /// (the password is read from standard input).
    WebPassword,
    /// Letters to the users (`[notify]`): the notice in the old INBOX, the welcome in the
    /// new one.
    Notify {
        #[command(subcommand)]
        letter: NotifyCommand,
    },
    /// Write what the spool holds for a mailbox as a Maildir++ tree (folders, flags,
    /// INTERNALDATE as mtime): an archive of what was migrated, without the destination.
    Export {
        /// The mailbox (EmailAddress).
        #[arg(long)]
        mailbox: String,
        /// A new or empty directory, the Maildir root.
        #[arg(long)]
        to: PathBuf,
        /// Only this folder (its source name, as `cutover status` shows it).
        #[arg(long)]
        folder: Option<String>,
    },
    /// Start a local source and destination Dovecot with sample mailboxes and migrate
    /// them with the daemon, its status page on http://127.0.0.1:8080, until Ctrl-C.
    Demo {
        /// Two `sync --once` passes and exit, without the daemon or the page (for scripts).
        #[arg(long)]
        once: bool,
        /// With --once: keep the demo servers running until Ctrl-C, to look at them.
        #[arg(long, requires = "once")]
        keep: bool,
        /// Where the status page listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: String,
        /// Messages per second per mailbox toward the destination: slow enough to watch.
        #[arg(long, default_value_t = 10.0)]
        rate: f64,
    },
    /// A migration spread over several appliances (`[fleet] shard`).
    Fleet {
        #[command(subcommand)]
        fleet: FleetCommand,
    },
}

#[derive(Subcommand)]
enum FleetCommand {
    /// Which shard of N would migrate which mailboxes, and their bytes at the source
    /// (one EXAMINE login per mailbox), before anything starts. Reads the whole CSV.
    Plan {
        /// The number of shards (appliances).
        #[arg(long)]
        shards: u32,
        /// Count mailboxes only; do not log in to the source to measure them.
        #[arg(long)]
        no_sizes: bool,
        /// Also list every mailbox with its shard.
        #[arg(long)]
        list: bool,
    },
}

#[derive(Subcommand)]
enum NotifyCommand {
    /// APPEND the `[notify] before` notice to each user's INBOX at the SOURCE (the only
    /// write cutover makes there), once; it is not migrated. Run it with the daemon
    /// stopped.
    Before {
        /// A mailbox (EmailAddress); repeat for several. Default: all.
        #[arg(long)]
        mailbox: Vec<String>,
        /// Send it again to mailboxes that already have it.
        #[arg(long)]
        again: bool,
    },
    /// APPEND the `[notify] after` welcome to the Office 365 INBOX of the Completed
    /// mailboxes that have not had it (the daemon sends it by itself at completion).
    After {
        /// A mailbox (EmailAddress); repeat for several. Default: all.
        #[arg(long)]
        mailbox: Vec<String>,
        /// Send it again to mailboxes that already have it.
        #[arg(long)]
        again: bool,
    },
}

/// Threads that run the IMAP sessions: `CUTOVER_WORKER_THREADS`, 0 for one per core;
/// one by default.
///
/// One thread drives a copy at over 200 MB/s of mail on the development machine, more
/// than a gigabit LAN or Exchange Online's throttling let through. Several threads
/// hand the sessions' tasks to each other and wake each other across cores, which cost
/// 7-13 % more CPU (and 3-6 % more time) on a 2-core machine also running the servers.
/// An appliance with cores to spare and a fast enough network can raise it.
/// Message bodies of a MiB and more are mapped for themselves and given back to the
/// kernel when freed. glibc's default threshold grows with every large block freed (up
/// to 32 MiB), after which 30 MB bodies come from the heap, whose freed memory the process
/// keeps: with 30 MB messages that kept the RSS some 60 MiB above what the in-flight
/// budget (`[spool] max_inflight_bytes`) holds. A fixed threshold keeps it at the budget.
fn large_allocations_to_the_kernel() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc tunable; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn worker_threads() -> Option<usize> {
    match std::env::var("CUTOVER_WORKER_THREADS") {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(0) => None,
            Ok(n) => Some(n),
            Err(_) => {
                eprintln!("warning: CUTOVER_WORKER_THREADS={v:?} is not a number; using 1");
                Some(1)
            }
        },
        Err(_) => Some(1),
    }
}

/// Makes every file and directory the process creates private to its user (umask
/// 077), whatever umask it was started with.
///
/// The spool holds every migrated message, and sled creates its own files (the log, its
/// snapshots) with the process umask: under the usual 022 every local user could read
/// them. The spool's own code sets modes explicitly where it creates files; this covers
/// what it does not create itself. Not for `demo`, whose Dovecot servers read the files
/// the demo writes for them.
fn private_umask() {
    // SAFETY: umask only swaps the process's file mode creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Demo { .. }) {
        private_umask();
    }
    cutover::logging::init();
    large_allocations_to_the_kernel();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = worker_threads() {
        builder.worker_threads(n);
    }
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Sync { once } => {
                if !once {
                    anyhow::bail!("only `sync --once` is available; `cutover run` is the daemon");
                }
                cutover::cli::sync_once(&cli.config).await
            }
            Command::Check => cutover::cli::check(&cli.config).await,
            Command::Run => cutover::daemon::run(&cli.config).await,
            Command::Status { json } => cutover::daemon::commands::status(&cli.config, json),
            Command::Report { csv: _, output } => {
                cutover::daemon::commands::report(&cli.config, output.as_ref())
            }
            Command::Complete { mailbox } => {
                cutover::daemon::commands::complete(&cli.config, &mailbox).await
            }
            Command::RetryErrors { mailbox } => {
                cutover::daemon::commands::retry_errors(&cli.config, &mailbox).await
            }
            Command::Pause { mailbox } => {
                cutover::daemon::commands::pause(&cli.config, &mailbox, true).await
            }
            Command::Resume { mailbox } => {
                cutover::daemon::commands::pause(&cli.config, &mailbox, false).await
            }
            Command::SyncNow { mailbox } => {
                cutover::daemon::commands::sync_now(&cli.config, &mailbox).await
            }
            Command::WebPassword => cutover::web::password::run(&cli.config),
            Command::Notify { letter } => match letter {
                NotifyCommand::Before { mailbox, again } => {
                    cutover::notify::command::run(
                        &cli.config,
                        cutover::notify::Kind::Before,
                        &mailbox,
                        again,
                    )
                    .await
                }
                NotifyCommand::After { mailbox, again } => {
                    cutover::notify::command::run(
                        &cli.config,
                        cutover::notify::Kind::After,
                        &mailbox,
                        again,
                    )
                    .await
                }
            },
            Command::Demo {
                once,
                keep,
                listen,
                rate,
            } => {
                if once {
                    cutover::demo::run(keep).await
                } else {
                    cutover::demo::live::run(cutover::demo::live::LiveOptions {
                        listen,
                        rate,
                        ..Default::default()
                    })
                    .await
                }
            }
            Command::Fleet {
                fleet:
                    FleetCommand::Plan {
                        shards,
                        no_sizes,
                        list,
                    },
            } => cutover::fleet::plan::run(&cli.config, shards, !no_sizes, list).await,
            Command::Export {
                mailbox,
                to,
                folder,
            } => cutover::cli::export(&cli.config, &mailbox, &to, folder.as_deref()),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
