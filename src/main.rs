//! The `tyr` command line. Parses arguments, sets up logging, dispatches to `tyr::cli`, and alone
//! decides the exit code.

use clap::{Parser, Subcommand};
use tyr::cli::{engine_cmds, model_cmds};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "tyr",
    version,
    about = "Structured pruning of Llama-family models (Týr-the-Pruner)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run or resume a pipeline; prints where the outputs are.
    Run(engine_cmds::RunArgs),
    /// Architecture, per-layer dims and parameter counts of a model.
    Inspect(model_cmds::InspectArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Run(a) => engine_cmds::run(a),
        Command::Inspect(a) => model_cmds::inspect(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
