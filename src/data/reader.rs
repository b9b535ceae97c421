//! Reading a corpus file into documents: plain text, JSONL with a named string field, or parquet
//! with a named string column (FineWeb-Edu ships parquet with a `text` column). Documents keep
//! their file order; empty documents are dropped; a file with none left is an error naming it.

use std::io::{BufRead, BufReader};
use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use parquet::schema::types::Type;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// How a corpus file is laid out (pipeline key `format`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TextFormat {
    /// UTF-8 text.
    Text {
        /// How the file splits into documents [default `whole`].
        #[serde(default)]
        documents: TextDocuments,
    },
    /// One JSON object per line; `field` holds the document's text.
    Jsonl { field: String },
    /// A parquet file; `column` (a top-level string column) holds the documents' text.
    Parquet { column: String },
}

/// How a plain-text file splits into documents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TextDocuments {
    /// The whole file is one document, byte for byte (what evaluation wants: one stream).
    #[default]
    Whole,
    /// Documents are separated by one or more blank (empty or whitespace-only) lines; each
    /// document's lines are joined with `\n`, without the separator lines. Gives the calibration
    /// pool many documents to shuffle from one book-like file.
    BlankLines,
    /// Every non-blank line is one document (corpora stored one document per line).
    Lines,
}

/// Read the documents of `path` as `format` says.
pub fn read_documents(path: &Path, format: &TextFormat) -> Result<Vec<String>> {
    let docs = match format {
        TextFormat::Text { documents } => read_text(path, *documents)?,
        TextFormat::Jsonl { field } => read_jsonl(path, field)?,
        TextFormat::Parquet { column } => read_parquet(path, column)?,
    };
    if docs.is_empty() {
        return Err(Error::DataEmpty {
            path: path.to_path_buf(),
        });
    }
    tracing::debug!(path = %path.display(), documents = docs.len(), "corpus read");
    Ok(docs)
}

fn read_text(path: &Path, documents: TextDocuments) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| Error::DataFormat {
        path: path.to_path_buf(),
        reason: format!(
            "not UTF-8 text (first bad byte at offset {})",
            e.utf8_error().valid_up_to()
        ),
    })?;
    Ok(match documents {
        TextDocuments::Whole => {
            if text.trim().is_empty() {
                Vec::new()
            } else {
                vec![text]
            }
        }
        TextDocuments::BlankLines => split_on_blank_lines(&text),
        TextDocuments::Lines => text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// Documents separated by blank lines; see [`TextDocuments::BlankLines`].
pub fn split_on_blank_lines(text: &str) -> Vec<String> {
    let mut docs = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                docs.push(current.join("\n"));
                current.clear();
            }
        } else {
            current.push(line);
        }
    }
    if !current.is_empty() {
        docs.push(current.join("\n"));
    }
    docs
}

fn read_jsonl(path: &Path, field: &str) -> Result<Vec<String>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut docs = Vec::new();
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Error::io(path, e))?;
        let lineno = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| Error::DataFormat {
                path: path.to_path_buf(),
                reason: format!("line {lineno}: not JSON: {e}"),
            })?;
        let obj = value.as_object().ok_or_else(|| Error::DataFormat {
            path: path.to_path_buf(),
            reason: format!("line {lineno}: not a JSON object"),
        })?;
        match obj.get(field) {
            Some(serde_json::Value::String(s)) => {
                if !s.trim().is_empty() {
                    docs.push(s.clone());
                }
            }
            Some(other) => {
                return Err(Error::DataFormat {
                    path: path.to_path_buf(),
                    reason: format!("line {lineno}: field `{field}` is {other}, not a string"),
                });
            }
            None => {
                return Err(Error::DataField {
                    path: path.to_path_buf(),
                    kind: format!("field on line {lineno}"),
                    name: field.to_string(),
                    available: obj.keys().cloned().collect(),
                });
            }
        }
    }
    Ok(docs)
}

fn read_parquet(path: &Path, column: &str) -> Result<Vec<String>> {
    let perr = |e: parquet::errors::ParquetError| Error::DataFormat {
        path: path.to_path_buf(),
        reason: format!("parquet: {e}"),
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(perr)?;
    let schema = reader.metadata().file_metadata().schema();
    let fields = schema.get_fields();
    let chosen = fields
        .iter()
        .find(|f| f.name() == column)
        .ok_or_else(|| Error::DataField {
            path: path.to_path_buf(),
            kind: "column".to_string(),
            name: column.to_string(),
            available: fields.iter().map(|f| f.name().to_string()).collect(),
        })?;
    if !chosen.is_primitive() {
        return Err(Error::DataFormat {
            path: path.to_path_buf(),
            reason: format!("column `{column}` is a nested group, not a string column"),
        });
    }
    // Read only the chosen column.
    let projection = Type::group_type_builder(schema.name())
        .with_fields(vec![chosen.clone()])
        .build()
        .map_err(perr)?;
    let mut docs = Vec::new();
    for (i, row) in reader
        .get_row_iter(Some(projection))
        .map_err(perr)?
        .enumerate()
    {
        let row = row.map_err(perr)?;
        let Some((_, value)) = row.get_column_iter().next() else {
            continue;
        };
        let text = match value {
            Field::Str(s) => s.as_str(),
            Field::Bytes(b) => b.as_utf8().map_err(|_| Error::DataFormat {
                path: path.to_path_buf(),
                reason: format!("row {i}: column `{column}` is not UTF-8"),
            })?,
            Field::Null => continue,
            other => {
                return Err(Error::DataFormat {
                    path: path.to_path_buf(),
                    reason: format!("row {i}: column `{column}` holds {other}, not a string"),
                });
            }
        };
        if !text.trim().is_empty() {
            docs.push(text.to_string());
        }
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_lines_split_documents_and_inner_newlines_stay() {
        let docs = split_on_blank_lines("a\nb\n\n  \nc\n\n\nd");
        assert_eq!(docs, vec!["a\nb", "c", "d"]);
        assert!(split_on_blank_lines("\n \n").is_empty());
    }

    #[test]
    fn the_format_parses_from_the_pipeline_form() {
        let f: TextFormat = toml::from_str("format = \"text\"").unwrap();
        assert_eq!(
            f,
            TextFormat::Text {
                documents: TextDocuments::Whole
            }
        );
        let f: TextFormat =
            toml::from_str("format = \"text\"\ndocuments = \"blank-lines\"").unwrap();
        assert_eq!(
            f,
            TextFormat::Text {
                documents: TextDocuments::BlankLines
            }
        );
        let f: TextFormat = toml::from_str("format = \"parquet\"\ncolumn = \"text\"").unwrap();
        assert_eq!(
            f,
            TextFormat::Parquet {
                column: "text".into()
            }
        );
    }
}
