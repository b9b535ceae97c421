//! `eval-text` stage: held-out text → evaluation windows (ALGORITHM.md §11). Input `model` (for
//! the tokenizer); params: data source, format, `separator` between documents ["\n\n"],
//! `seq-len`, `max-tokens`. Output record `windows` (`data::EvalWindows`). Invalidated by: the
//! params, the model record, and the text file's bytes (fingerprint).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::light;
use super::model::{read_source, source_fingerprint};
use super::model_ref::{ModelRecord, open};
use crate::Result;
use crate::data::{DataSource, TextFormat, eval_windows, token_stream};
use crate::engine::{InputSlot, Outputs, Resources, Stage, StageContext};

pub struct EvalText(EvalTextParams);

fn blank_line() -> String {
    "\n\n".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct EvalTextParams {
    pub data: DataSource,
    pub format: TextFormat,
    /// Joins the documents into one stream ["\n\n"].
    #[serde(default = "blank_line")]
    pub separator: String,
    /// Window length S.
    pub seq_len: usize,
    /// Cut the stream to this many tokens [no cut].
    #[serde(default)]
    pub max_tokens: Option<usize>,
    #[serde(default, skip_serializing)]
    pub cache_dir: Option<PathBuf>,
}

impl Stage for EvalText {
    const KIND: &'static str = "eval-text";
    const VERSION: u32 = 1;
    type Params = EvalTextParams;

    fn new(p: EvalTextParams) -> Result<Self> {
        Ok(Self(p))
    }

    fn inputs(&self) -> Vec<InputSlot> {
        vec![InputSlot::one("model")]
    }

    fn resources(&self) -> Resources {
        light()
    }

    fn fingerprint(&self) -> Result<Option<String>> {
        source_fingerprint(&self.0.data, &self.0.cache_dir)
    }

    fn run(&self, ctx: &mut StageContext<'_>) -> Result<Outputs> {
        let record: ModelRecord = ctx.input("model")?.record("model")?;
        let model = open(&record)?;
        let docs = read_source(&self.0.data, &self.0.format, &self.0.cache_dir)?;
        let stream = token_stream(&docs, &self.0.separator, &|t| model.codec.encode(t))?;
        let w = eval_windows(&stream, self.0.seq_len, self.0.max_tokens)?;
        let mut o = Outputs::new();
        o.metric("tokens", w.tokens as f64);
        o.metric("windows", w.windows.len() as f64);
        o.record("windows", &w)?;
        Ok(o)
    }
}
