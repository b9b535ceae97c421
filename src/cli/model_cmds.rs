//! `tyr eval | generate | inspect | bench`: commands that work on one model.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// A GGUF file, a Hugging Face directory, or a model saved by tyr.
    #[arg(long)]
    pub model: PathBuf,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn inspect(_args: &InspectArgs) -> anyhow::Result<()> {
    anyhow::bail!("`tyr inspect` is not implemented yet")
}
