//! Slicing a chosen configuration into a physically smaller model; safetensors and GGUF writers;
//! the report.
