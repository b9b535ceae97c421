//! Corpus readers: plain text (whole, blank-line and per-line documents), JSONL with a named
//! field, parquet with a named column (files written here with the parquet writer), and the
//! errors for an empty corpus and a wrong field or column.

use std::path::Path;
use std::sync::Arc;

use parquet::data_type::{ByteArray, ByteArrayType, Int32Type};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use tyr::data::{TextDocuments, TextFormat, read_documents};

fn text(documents: TextDocuments) -> TextFormat {
    TextFormat::Text { documents }
}

/// A parquet file with an optional UTF-8 `text` column (None = null) and an `id` column.
fn write_parquet(path: &Path, texts: &[Option<&str>]) {
    let schema = Arc::new(
        parse_message_type(
            "message schema { OPTIONAL BYTE_ARRAY text (UTF8); REQUIRED INT32 id; }",
        )
        .unwrap(),
    );
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, schema, Default::default()).unwrap();
    // Two row groups, to check that reading crosses them.
    for half in texts.chunks(texts.len().div_ceil(2).max(1)) {
        let mut rg = writer.next_row_group().unwrap();
        let mut col = rg.next_column().unwrap().unwrap();
        let values: Vec<ByteArray> = half.iter().flatten().map(|s| ByteArray::from(*s)).collect();
        let defs: Vec<i16> = half.iter().map(|t| i16::from(t.is_some())).collect();
        col.typed::<ByteArrayType>()
            .write_batch(&values, Some(&defs), None)
            .unwrap();
        col.close().unwrap();
        let mut col = rg.next_column().unwrap().unwrap();
        let ids: Vec<i32> = (0..half.len() as i32).collect();
        col.typed::<Int32Type>()
            .write_batch(&ids, None, None)
            .unwrap();
        col.close().unwrap();
        rg.close().unwrap();
    }
    writer.close().unwrap();
}

#[test]
fn a_whole_text_file_is_one_document_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.txt");
    std::fs::write(&p, "One.\n\nTwo.\n").unwrap();
    let docs = read_documents(&p, &text(TextDocuments::Whole)).unwrap();
    assert_eq!(docs, vec!["One.\n\nTwo.\n"]);
}

#[test]
fn blank_lines_and_lines_split_a_text_file_into_documents() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.txt");
    std::fs::write(&p, "a1\na2\n\n\nb1\n \nc1\n").unwrap();
    let docs = read_documents(&p, &text(TextDocuments::BlankLines)).unwrap();
    assert_eq!(docs, vec!["a1\na2", "b1", "c1"]);
    let docs = read_documents(&p, &text(TextDocuments::Lines)).unwrap();
    assert_eq!(docs, vec!["a1", "a2", "b1", "c1"]);
}

#[test]
fn an_empty_corpus_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("empty.txt");
    std::fs::write(&p, " \n\n").unwrap();
    for f in [
        TextDocuments::Whole,
        TextDocuments::BlankLines,
        TextDocuments::Lines,
    ] {
        let err = read_documents(&p, &text(f)).unwrap_err();
        assert!(matches!(err, tyr::Error::DataEmpty { .. }), "{err}");
        assert!(err.to_string().contains("empty.txt"), "{err}");
    }
    let j = dir.path().join("empty.jsonl");
    std::fs::write(&j, "").unwrap();
    let err = read_documents(
        &j,
        &TextFormat::Jsonl {
            field: "text".into(),
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("empty.jsonl"), "{err}");
}

#[test]
fn non_utf8_text_is_an_error_with_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("latin1.txt");
    std::fs::write(&p, b"price \xa3 5").unwrap();
    let err = read_documents(&p, &text(TextDocuments::Whole))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("latin1.txt") && err.contains("offset 6"),
        "{err}"
    );
}

#[test]
fn jsonl_reads_the_named_field() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.jsonl");
    std::fs::write(
        &p,
        "{\"text\": \"first\", \"id\": 1}\n\n{\"text\": \"\", \"id\": 2}\n{\"id\": 3, \"text\": \"third\"}\n",
    )
    .unwrap();
    let docs = read_documents(
        &p,
        &TextFormat::Jsonl {
            field: "text".into(),
        },
    )
    .unwrap();
    assert_eq!(docs, vec!["first", "third"]);
}

#[test]
fn a_wrong_jsonl_field_lists_the_available_ones() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.jsonl");
    std::fs::write(&p, "{\"content\": \"x\", \"url\": \"u\"}\n").unwrap();
    let err = read_documents(
        &p,
        &TextFormat::Jsonl {
            field: "text".into(),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("`text`") && err.contains("content") && err.contains("url"),
        "{err}"
    );
    assert!(err.contains("line 1"), "{err}");
    std::fs::write(&p, "{\"text\": 5}\n").unwrap();
    let err = read_documents(
        &p,
        &TextFormat::Jsonl {
            field: "text".into(),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not a string"), "{err}");
    std::fs::write(&p, "not json\n").unwrap();
    let err = read_documents(
        &p,
        &TextFormat::Jsonl {
            field: "text".into(),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("line 1") && err.contains("not JSON"), "{err}");
}

#[test]
fn parquet_reads_the_named_column_across_row_groups_skipping_nulls() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fw.parquet");
    write_parquet(
        &p,
        &[
            Some("doc one"),
            None,
            Some("doc two"),
            Some(""),
            Some("doc three"),
        ],
    );
    let docs = read_documents(
        &p,
        &TextFormat::Parquet {
            column: "text".into(),
        },
    )
    .unwrap();
    assert_eq!(docs, vec!["doc one", "doc two", "doc three"]);
}

#[test]
fn a_wrong_parquet_column_lists_the_available_ones() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fw.parquet");
    write_parquet(&p, &[Some("doc")]);
    let err = read_documents(
        &p,
        &TextFormat::Parquet {
            column: "content".into(),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("fw.parquet") && err.contains("`content`"),
        "{err}"
    );
    assert!(err.contains("\"text\"") && err.contains("\"id\""), "{err}");
    let err = read_documents(
        &p,
        &TextFormat::Parquet {
            column: "id".into(),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("not a string"), "{err}");
}

#[test]
fn a_parquet_file_of_only_nulls_is_an_empty_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nulls.parquet");
    write_parquet(&p, &[None, None]);
    let err = read_documents(
        &p,
        &TextFormat::Parquet {
            column: "text".into(),
        },
    )
    .unwrap_err();
    assert!(matches!(err, tyr::Error::DataEmpty { .. }), "{err}");
}

#[test]
fn a_file_that_is_not_parquet_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fake.parquet");
    std::fs::write(&p, "hello").unwrap();
    let err = read_documents(
        &p,
        &TextFormat::Parquet {
            column: "text".into(),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("fake.parquet"), "{err}");
}
