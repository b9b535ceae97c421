//! Slicing a chosen configuration into a physically smaller model; safetensors and GGUF writers;
//! the report.

// ---- report (report.json / report.html) ----
pub mod report;
mod report_html;
mod report_tables;
mod svg;
mod svg_charts;

pub use report::{
    BaselineReport, GenerationSummary, KindStep, LayerReport, LayerWidths, ModelRole, ModuleLevel,
    Outputs, ParamCounts, ParamSummary, Perplexity, REPORT_FORMAT, Report, ReportFiles,
    RoundReport, SourceModel, StageTiming, Timings, UnitSparsity, unit_sparsity, write_report,
};
