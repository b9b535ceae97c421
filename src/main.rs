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

/// mimalloc's `mi_option_purge_delay` and `mi_option_arena_purge_mult` (the same indices in its
/// v2 and v3 headers).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
const MI_OPTION_ARENA_PURGE_MULT: std::ffi::c_int = 24;

/// How long mimalloc keeps freed memory before handing it back to the OS, in ms.
///
/// The forward allocates and frees activations of tens of MB per layer and, with logits, hundreds
/// of MB per batch; with mimalloc's default (10 ms) the next layer or batch faults those pages
/// back in and the kernel zeroes them. Keeping freed memory forever (-1, until issue 10's stop
/// 30) avoided that, but then a run's RSS only grows: free space of one stage that the next
/// stage cannot use (another size, another thread) stays resident, and the 8B-shape benchmark
/// was killed for memory at 20,138 MiB where its largest stage declares 12,992 MiB. Measured on
/// `tyr bench forward --batch 8 --logits` (SmolLM2 shape, 2-core AMD EPYC): 10 ms 527 tokens/s,
/// 1 s 569, 10 s 636–681, never 661–668. Ten seconds keeps a stage's own reuse warm and lets
/// what a finished stage freed go. The large blocks (mimalloc's arenas) wait as long, not ten
/// times as long (its v2 default multiplier). Explicit `MIMALLOC_PURGE_DELAY` and
/// `MIMALLOC_ARENA_PURGE_MULT` in the environment still win.
const PURGE_DELAY_MS: std::ffi::c_long = 10_000;

fn tune_allocator() {
    for (var, option, value) in [
        (
            "MIMALLOC_PURGE_DELAY",
            MI_OPTION_PURGE_DELAY,
            PURGE_DELAY_MS,
        ),
        ("MIMALLOC_ARENA_PURGE_MULT", MI_OPTION_ARENA_PURGE_MULT, 1),
    ] {
        if std::env::var_os(var).is_none() {
            // SAFETY: sets an option value; mimalloc allows this at any time.
            unsafe { mi_option_set(option, value) };
        }
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
