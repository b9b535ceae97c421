//! Subcommand implementations behind the thin `main.rs`. Each file owns one group of commands.

pub mod bench_cmds;
pub mod engine_cmds;
pub mod exit;
pub mod logging;
pub mod model_cmds;

/// `--device` / `--dtype` of the commands that run a model (`eval`, `generate`, `bench`).
#[derive(Debug, Clone, clap::Args)]
pub struct DeviceArgs {
    /// Where the model runs: `cpu` (tyr's packed f32 kernels), `cpu-candle` (the device path on
    /// the CPU), `cuda` or `cuda:N` (a build with `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Weights and activations: `f32` or `bf16`.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

impl DeviceArgs {
    pub fn compute(&self) -> anyhow::Result<crate::model::Compute> {
        Ok(crate::model::Compute::parse(&self.device, &self.dtype)?)
    }
}
