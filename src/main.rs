//! The `tyr` command line. Parses arguments, sets up logging, dispatches to `tyr::cli`, and alone
//! decides the exit code.

use clap::{Parser, Subcommand};
use tyr::cli::{bench_cmds, engine_cmds, model_cmds};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "tyr",
    version,
    about = "Structured pruning of Llama-family models (Týr-the-Pruner)"
)]
struct Cli {
    /// Log lines on stderr as text (with progress bars on a terminal) or JSON.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: tyr::cli::logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run or resume a pipeline; prints where the outputs are.
    Run(engine_cmds::RunArgs),
    /// Dry run: each stage cached, run or blocked, with the reason.
    Plan(engine_cmds::PlanArgs),
    /// What is done, pending or failed; sizes on disk and times.
    Status(engine_cmds::StatusArgs),
    /// The pipeline's DAG as Graphviz dot or Mermaid.
    Graph(engine_cmds::GraphArgs),
    /// Check every blob's digest and the index; `--repair` fixes what it can.
    Verify(engine_cmds::VerifyArgs),
    /// Delete manifests and blobs no pinned run references.
    Gc(engine_cmds::GcArgs),
    /// Architecture, per-layer dims and parameter counts of a model.
    Inspect(model_cmds::InspectArgs),
    /// Perplexity of a model on a text (non-overlapping windows, no BOS).
    Eval(model_cmds::EvalArgs),
    /// Continue a prompt (greedy unless --temperature is given).
    Generate(model_cmds::GenerateArgs),
    /// Speed benchmarks (`tyr bench forward`).
    Bench(bench_cmds::BenchArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let ui = tyr::cli::logging::init(cli.log_format);
    let result = match &cli.command {
        Command::Run(a) => engine_cmds::run(a, &ui),
        Command::Plan(a) => engine_cmds::plan(a),
        Command::Status(a) => engine_cmds::status(a),
        Command::Graph(a) => engine_cmds::graph(a),
        Command::Verify(a) => engine_cmds::verify(a),
        Command::Gc(a) => engine_cmds::gc(a),
        Command::Inspect(a) => model_cmds::inspect(a),
        Command::Eval(a) => model_cmds::eval(a),
        Command::Generate(a) => model_cmds::generate_cmd(a),
        Command::Bench(a) => bench_cmds::bench(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
