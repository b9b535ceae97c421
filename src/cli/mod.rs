//! Subcommand implementations behind the thin `main.rs`. Each file owns one group of commands.

pub mod bench_cmds;
pub mod engine_cmds;
pub mod exit;
pub mod logging;
pub mod model_cmds;
