//! Slicing a chosen configuration into a physically smaller model; safetensors and GGUF writers;
//! the report.

// ---- slicing and GGUF export ----
pub mod gguf;
pub mod gguf_form;
pub mod slice;

pub use gguf::{GgufDtype, GgufExportOptions, GgufExportReport, write_gguf};
pub use gguf_form::{GgufLayerForm, ZeroWidth, layer_form, written_config};
pub use slice::{
    ChoiceWeight, LayerChoice, LayerPlan, ModuleChoice, SlicedSource, plan_layer, slice_model,
    sliced_config,
};

// ---- report (report.json / report.html) ----
pub mod report;
mod report_html;
mod report_tables;
mod svg;
mod svg_charts;
pub mod sweep_report;

pub use report::{
    Accuracy, BaselineReport, GenerationSummary, KindStep, LayerReport, LayerWidths, ModelRole,
    ModuleLevel, Outputs, ParamCounts, ParamSummary, Perplexity, REPORT_FORMAT, Report,
    ReportFiles, RoundReport, SourceModel, StageTiming, Timings, UnitSparsity, unit_sparsity,
    write_report,
};
