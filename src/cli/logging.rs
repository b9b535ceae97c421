//! Logging and progress display for the CLI: `tracing` to stderr as text or JSON lines
//! (`--log-format json`), filtered by `RUST_LOG` (default `info`). On an interactive terminal
//! with text logs, stage progress bars (indicatif) are drawn and log lines are printed above
//! them; otherwise progress appears as plain log lines.

use std::io::{IsTerminal, Write};

use indicatif::MultiProgress;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// What the commands need from the logging setup.
#[derive(Clone, Default)]
pub struct Ui {
    /// Present when progress bars should be drawn.
    pub bars: Option<MultiProgress>,
}

/// Writes log lines through the progress bars so they do not tear them.
#[derive(Clone)]
struct BarWriter(MultiProgress);

impl Write for BarWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for BarWriter {
    type Writer = BarWriter;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(format: LogFormat) -> Ui {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let tty = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(tty);
    match format {
        LogFormat::Json => {
            let _ = builder.json().with_writer(std::io::stderr).try_init();
            Ui::default()
        }
        LogFormat::Text if tty => {
            let bars = MultiProgress::new();
            let _ = builder.with_writer(BarWriter(bars.clone())).try_init();
            Ui { bars: Some(bars) }
        }
        LogFormat::Text => {
            let _ = builder.with_writer(std::io::stderr).try_init();
            Ui::default()
        }
    }
}
