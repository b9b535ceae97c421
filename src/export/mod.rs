//! Slicing a chosen configuration into a physically smaller model; safetensors and GGUF writers;
//! the report.

pub mod gguf;
pub mod gguf_form;
pub mod slice;

pub use gguf::{GgufDtype, GgufExportOptions, GgufExportReport, write_gguf};
pub use gguf_form::{GgufLayerForm, ZeroWidth, layer_form, written_config};
pub use slice::{
    LayerChoice, LayerPlan, ModuleChoice, SlicedSource, plan_layer, slice_model, sliced_config,
};
