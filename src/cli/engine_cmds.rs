//! `tyr run | plan | status | graph | verify | gc`: the engine's commands.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The pipeline file (TOML).
    pub pipeline: PathBuf,
    /// Work directory holding the store [default: `.tyr/` beside the pipeline file].
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Override a pipeline parameter, e.g. `--set prune.target=0.25`. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

pub fn run(_args: &RunArgs) -> anyhow::Result<()> {
    anyhow::bail!("`tyr run` is not implemented yet")
}
