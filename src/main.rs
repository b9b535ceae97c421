//! The `tyr` command line. Parses arguments, sets up logging, dispatches to `tyr::cli`, and alone
//! decides the exit code (the codes are listed in `tyr::cli::exit`).

use clap::{Parser, Subcommand};
use tyr::cli::exit::{ExitKind, classify};
use tyr::cli::{bench_cmds, engine_cmds, model_cmds};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// From the mimalloc library that the `mimalloc` crate links (declared in its `mimalloc.h`).
unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// mimalloc's `mi_option_purge_delay` (the same index in its v2 and v3 headers).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// The forward allocates and frees activations of tens of MB per layer and, with logits, hundreds
/// of MB per batch; by default mimalloc hands freed memory back to the OS after a delay, so the
/// next layer or batch faults the pages back in and the kernel zeroes them (7% of a batch-8
/// forward with logits in the profile of the notes; a 1 s delay did not remove it). Freed memory
/// is therefore kept for reuse until the process exits. Measured on the quickstart: 7% less wall
/// time for 8% more peak RSS. An explicit `MIMALLOC_PURGE_DELAY` in the environment still wins.
fn tune_allocator() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an option value; mimalloc allows this at any time.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

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
    /// Perplexity on a text (--data) or zero-shot task accuracy (--tasks).
    Eval(model_cmds::EvalArgs),
    /// Continue a prompt (greedy unless --temperature is given).
    Generate(model_cmds::GenerateArgs),
    /// Speed benchmarks (`tyr bench forward`).
    Bench(bench_cmds::BenchArgs),
    /// Runs one attempt of one stage inside a Slurm job (`tyr run --executor slurm` submits
    /// it; not for use by hand).
    #[command(hide = true)]
    ExecStage(engine_cmds::ExecStageArgs),
}

fn main() -> std::process::ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    let ui = tyr::cli::logging::init(cli.log_format);
    // A `TYR_KERNEL` that is unknown or that this CPU cannot run fails here, before any work;
    // otherwise the kernels would warn and run the best class instead.
    if let Err(e) = tyr::model::cpu_kernel::kernel_from_env() {
        eprintln!("error: {e:#}");
        return std::process::ExitCode::from(ExitKind::BadInput.code());
    }
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
        Command::ExecStage(a) => engine_cmds::exec_stage(a),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(classify(&e).code())
        }
    }
}
