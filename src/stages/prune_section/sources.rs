//! `calib` and `eval` in `[prune]`: each is one source table (today's form, its layout in
//! `calib-format` / `eval-format`) or an array of tables, one per text, each with its own
//! `format`, and a `weight` (calibration: its share of the pool) or a `name` (evaluation: how
//! the report and `ppl/<name>/` call it).
//!
//! ```toml
//! [[prune.calib]]
//! source = "pip"
//! package = "gensim"
//! version = "4.4.0"
//! member = "gensim/test/test_data/lee_background.cor"
//! format = { format = "text", documents = "lines" }
//! weight = 2
//! ```

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::data::{DataSource, TextFormat};

/// One calibration text of a mix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CalibEntry {
    #[serde(flatten)]
    pub data: DataSource,
    /// Its layout [`calib-format`].
    #[serde(default)]
    pub format: Option<TextFormat>,
    /// Its share of `calib-tokens`, relative to the others' [1].
    #[serde(default)]
    pub weight: Option<f64>,
}

/// One held-out text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct EvalEntry {
    #[serde(flatten)]
    pub data: DataSource,
    /// Its layout [`eval-format`].
    #[serde(default)]
    pub format: Option<TextFormat>,
    /// Its name in stage ids, `ppl/<name>/` and the report [the file's stem].
    #[serde(default)]
    pub name: Option<String>,
}

impl From<DataSource> for CalibEntry {
    fn from(data: DataSource) -> Self {
        CalibEntry {
            data,
            format: None,
            weight: None,
        }
    }
}

impl From<DataSource> for EvalEntry {
    fn from(data: DataSource) -> Self {
        EvalEntry {
            data,
            format: None,
            name: None,
        }
    }
}

impl EvalEntry {
    /// The given name, else the stem of the file (`kjv` for `…/kjv.jsonl`).
    pub fn name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let file = match &self.data {
            DataSource::Path { path } => path.to_string_lossy().into_owned(),
            DataSource::Pip { member, .. } => member.clone(),
        };
        let base = file.rsplit('/').next().unwrap_or(&file);
        let stem = base.split('.').next().unwrap_or(base);
        let clean: String = stem
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        if clean.is_empty() {
            "text".into()
        } else {
            clean
        }
    }
}

/// A table (one source) or an array of tables (several), kept as the list.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Sources<T>(pub Vec<T>);

impl<'de, T> Deserialize<'de> for Sources<T>
where
    T: Deserialize<'de> + From<DataSource>,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T> Visitor<'de> for V<T>
        where
            T: Deserialize<'de> + From<DataSource>,
        {
            type Value = Sources<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a source table or an array of source tables")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let one = DataSource::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(Sources(vec![one.into()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(e) = seq.next_element::<T>()? {
                    if out.len() == MAX_SOURCES {
                        return Err(de::Error::custom(format!(
                            "more than the {MAX_SOURCES} sources tyr accepts"
                        )));
                    }
                    out.push(e);
                }
                if out.is_empty() {
                    return Err(de::Error::custom("the list of sources is empty"));
                }
                Ok(Sources(out))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// Most texts in one `calib` or `eval` list.
pub const MAX_SOURCES: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct T {
        calib: Sources<CalibEntry>,
        eval: Sources<EvalEntry>,
    }

    #[test]
    fn one_table_or_a_list_of_them() {
        let t: T = toml::from_str(
            r#"
            calib = { source = "path", path = "a.txt" }
            [[eval]]
            source = "pip"
            package = "p"
            member = "x/kjv.jsonl"
            format = { format = "jsonl", field = "text" }
            [[eval]]
            source = "path"
            path = "b.txt"
            name = "news"
            "#,
        )
        .unwrap();
        assert_eq!(t.calib.0.len(), 1);
        assert_eq!(t.calib.0[0].weight, None);
        assert_eq!(t.eval.0[0].name(), "kjv");
        assert_eq!(t.eval.0[1].name(), "news");
        assert!(matches!(t.eval.0[0].format, Some(TextFormat::Jsonl { .. })));
    }

    #[test]
    fn an_unknown_key_or_an_empty_list_is_refused() {
        let e = toml::from_str::<T>(
            r#"
            calib = []
            eval = { source = "path", path = "b.txt" }
            "#,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("empty"), "{e}");
        let e = toml::from_str::<T>(
            r#"
            eval = { source = "path", path = "b.txt" }
            [[calib]]
            source = "path"
            path = "a.txt"
            wieght = 2
            "#,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("wieght"), "{e}");
    }
}
