//! `quotad`: the quota service, its REST edge, migrations and the admin
//! `token` commands in one binary. `main` parses the command line and hands
//! over; a failure is one line on stderr and a non-zero exit.

mod cli;
mod health;
mod output;
mod run;
mod telemetry;
mod tls;
mod token;
mod verify;

use clap::Parser;
use clap::error::ErrorKind;
use std::process::ExitCode;

/// mimalloc rather than the system's allocator: a request allocates and
/// frees a hundred small blocks on its way through hyper, axum and tower,
/// and mimalloc's thread-local free lists make each of those a few
/// instructions rather than glibc's bins and locks. Built without
/// transparent huge pages (`no_thp`): with them its arenas held 33 MiB of
/// resident memory at start instead of 18, for no measurable speed.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(refused) => return command_line_refused(&refused),
    };
    let log_format = cli.log_format;
    telemetry::init_logging(log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("quotad: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run::run(cli)) {
        Ok(code) => code,
        // What was printed was all the reader wanted.
        Err(e) if output::stopped_reading(&e) => ExitCode::SUCCESS,
        Err(e) => {
            telemetry::fatal(log_format, &format!("quotad: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// A command line clap did not take. Help and the version are printed as
/// clap prints them; a bad flag or value is one `quotad: …` line on stderr
/// (clap's own message, its tip, and the `--help` to read), in the log
/// format asked for, with clap's exit code (2).
fn command_line_refused(refused: &clap::Error) -> ExitCode {
    let code = ExitCode::from(u8::try_from(refused.exit_code()).unwrap_or(2));
    if matches!(
        refused.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = refused.print();
        return code;
    }
    let format = cli::log_format_of(
        std::env::args_os().skip(1),
        std::env::var_os("QUOTA_LOG_FORMAT"),
    );
    telemetry::init_logging(format);
    let command = cli::command_of(std::env::args_os().skip(1));
    telemetry::fatal(
        format,
        &cli::one_line(&refused.render().to_string(), &command),
    );
    code
}
