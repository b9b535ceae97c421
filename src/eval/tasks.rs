//! Zero-shot task files: which tasks exist, the `--tasks` specification that names them, and
//! turning each file (JSONL, or parquet as Hugging Face datasets ship it) into examples — the
//! (context, continuation) strings that are scored, the gold answer, and the answer texts that
//! `acc_norm` divides by. The prompt of every task follows lm-eval-harness's task definition of
//! the same name (docs/ALGORITHM.md §11.1); scoring is in `zeroshot.rs`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{Error, Result};

/// The task formats tyr reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    ArcEasy,
    ArcChallenge,
    Hellaswag,
    Piqa,
    Winogrande,
    Boolq,
    Openbookqa,
    Lambada,
    /// One JSON object per line with `context`, `choices` and `gold`.
    Generic,
}

/// How the requests of one example differ and what is measured from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scoring {
    /// One context, one continuation per choice: `acc` (argmax of the summed log-likelihood) and
    /// `acc_norm` (argmax of the log-likelihood per character of the answer).
    Choices,
    /// One context per choice and one shared continuation (WinoGrande's partial scoring): `acc`.
    Contexts,
    /// One request whose continuation is the last word: `acc` is whether greedy decoding gives
    /// exactly its tokens; perplexity is `exp(−mean log-likelihood)` over examples.
    LastWord,
}

impl TaskKind {
    pub const ALL: [TaskKind; 9] = [
        TaskKind::ArcEasy,
        TaskKind::ArcChallenge,
        TaskKind::Hellaswag,
        TaskKind::Piqa,
        TaskKind::Winogrande,
        TaskKind::Boolq,
        TaskKind::Openbookqa,
        TaskKind::Lambada,
        TaskKind::Generic,
    ];

    /// The name used in `--tasks` and in reports.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::ArcEasy => "arc-easy",
            TaskKind::ArcChallenge => "arc-challenge",
            TaskKind::Hellaswag => "hellaswag",
            TaskKind::Piqa => "piqa",
            TaskKind::Winogrande => "winogrande",
            TaskKind::Boolq => "boolq",
            TaskKind::Openbookqa => "openbookqa",
            TaskKind::Lambada => "lambada",
            TaskKind::Generic => "generic",
        }
    }

    /// A task name as typed: case-insensitive, `_` taken as `-` (so lm-eval's `arc_easy` works),
    /// and `lambada-openai` / `lambada-standard` as `lambada` (they differ only in their file).
    pub fn parse(s: &str) -> Option<TaskKind> {
        let norm = s.trim().to_ascii_lowercase().replace('_', "-");
        let norm = match norm.as_str() {
            "lambada-openai" | "lambada-standard" => "lambada",
            other => other,
        };
        TaskKind::ALL.into_iter().find(|k| k.name() == norm)
    }

    pub fn scoring(self) -> Scoring {
        match self {
            TaskKind::Winogrande => Scoring::Contexts,
            TaskKind::Lambada => Scoring::LastWord,
            _ => Scoring::Choices,
        }
    }

    fn known() -> String {
        TaskKind::ALL.map(TaskKind::name).join(", ")
    }
}

/// One task as the user named it: `KIND=PATH` or `KIND:LABEL=PATH`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The key of its result: the kind's name, or `KIND:LABEL`.
    pub name: String,
    pub kind: TaskKind,
    pub path: PathBuf,
}

/// Parse `--tasks` values (each `KIND=PATH` or `KIND:LABEL=PATH`; the CLI has already split
/// them on commas). A name used twice is an error.
pub fn parse_task_specs<S: AsRef<str>>(items: &[S]) -> Result<Vec<TaskSpec>> {
    let mut specs: Vec<TaskSpec> = Vec::new();
    for item in items {
        let item = item.as_ref().trim();
        if item.is_empty() {
            continue;
        }
        let (name, path) = item.split_once('=').ok_or_else(|| {
            Error::EvalSetting(format!(
                "--tasks `{item}`: expected TASK=FILE (e.g. arc-easy=arc_easy_test.jsonl); tasks: {}",
                TaskKind::known()
            ))
        })?;
        let (name, path) = (name.trim(), path.trim());
        let kind_part = name.split_once(':').map_or(name, |(k, _)| k);
        let kind = TaskKind::parse(kind_part).ok_or_else(|| Error::EvalTaskName {
            name: kind_part.to_string(),
            known: TaskKind::known(),
        })?;
        if path.is_empty() {
            return Err(Error::EvalSetting(format!(
                "--tasks `{item}`: no file after `=`"
            )));
        }
        let name = match name.split_once(':') {
            Some((_, label)) if !label.trim().is_empty() => {
                format!("{}:{}", kind.name(), label.trim())
            }
            _ => kind.name().to_string(),
        };
        if specs.iter().any(|s| s.name == name) {
            return Err(Error::EvalSetting(format!(
                "--tasks names `{name}` twice; give the second one a label, e.g. {}:b=FILE",
                kind.name()
            )));
        }
        specs.push(TaskSpec {
            name,
            kind,
            path: PathBuf::from(path),
        });
    }
    if specs.is_empty() {
        return Err(Error::EvalSetting("--tasks names no task".into()));
    }
    Ok(specs)
}

/// One scored string pair: the model reads `context` and is scored on `continuation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub context: String,
    pub continuation: String,
}

/// One example of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    /// Where it came from: the 1-based line (JSONL) or row (parquet) of the file.
    pub line: usize,
    /// One request per choice (`Choices`, `Contexts`), or the single request (`LastWord`).
    pub requests: Vec<Request>,
    /// The answer texts `acc_norm` normalizes by, without the delimiter (`Choices` only; empty
    /// otherwise).
    pub choices: Vec<String>,
    /// Index of the right request (0 for `LastWord`).
    pub gold: usize,
}

/// A task read from its file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub name: String,
    pub kind: TaskKind,
    pub path: PathBuf,
    /// "line" for JSONL, "row" for parquet: how `Example::line` is counted.
    pub unit: String,
    pub examples: Vec<Example>,
}

impl Task {
    /// "FILE: line N" for messages about one example.
    pub fn locate(&self, ex: &Example) -> String {
        format!("{}: {} {}", self.path.display(), self.unit, ex.line)
    }
}

/// How the prompt is put together (`--target-delimiter`, `--limit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReadOptions {
    /// Put between the context and each answer [lm-eval's default: one space]. LAMBADA has
    /// none (its continuation carries its own space).
    pub target_delimiter: String,
    /// Read only the first N examples.
    pub limit: Option<usize>,
}

impl Default for TaskReadOptions {
    fn default() -> Self {
        TaskReadOptions {
            target_delimiter: " ".into(),
            limit: None,
        }
    }
}

/// Read the file of `spec`: parquet when its name ends in `.parquet`, else JSONL (blank lines
/// skipped). A file with no example is an error, as is any malformed example (naming its line).
pub fn read_task(spec: &TaskSpec, opts: &TaskReadOptions) -> Result<Task> {
    let path = spec.path.as_path();
    let is_parquet = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
    let unit = if is_parquet { "row" } else { "line" };
    let mut examples = Vec::new();
    let limit = opts.limit.unwrap_or(usize::MAX);
    if limit == 0 {
        return Err(Error::EvalSetting("--limit must be at least 1".into()));
    }
    let mut take = |line: usize, obj: &Map<String, Value>| -> Result<bool> {
        let doc = Doc {
            obj,
            path,
            at: format!("{unit} {line}"),
        };
        examples.push(build_example(
            spec.kind,
            &doc,
            line,
            &opts.target_delimiter,
        )?);
        Ok(examples.len() < limit)
    };
    if is_parquet {
        read_parquet_rows(path, &mut take)?;
    } else {
        read_jsonl_rows(path, &mut take)?;
    }
    if examples.is_empty() {
        return Err(Error::EvalTaskFile {
            path: path.to_path_buf(),
            location: None,
            reason: format!("holds no examples (task {})", spec.name),
        });
    }
    tracing::debug!(task = %spec.name, path = %path.display(), examples = examples.len(), "task read");
    Ok(Task {
        name: spec.name.clone(),
        kind: spec.kind,
        path: path.to_path_buf(),
        unit: unit.to_string(),
        examples,
    })
}

/// Receives each example's (1-based line or row, JSON object); `false` stops the reading.
type TakeRow<'a> = dyn FnMut(usize, &Map<String, Value>) -> Result<bool> + 'a;

/// Calls `take(line, object)` for each non-blank line until it returns `false`.
fn read_jsonl_rows(path: &Path, take: &mut TakeRow<'_>) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let lineno = i + 1;
        let line = line.map_err(|e| Error::EvalTaskFile {
            path: path.to_path_buf(),
            location: Some(format!("line {lineno}")),
            reason: format!("cannot read: {e}"),
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |reason: String| Error::EvalTaskFile {
            path: path.to_path_buf(),
            location: Some(format!("line {lineno}")),
            reason,
        };
        let value: Value =
            serde_json::from_str(&line).map_err(|e| bad(format!("not JSON: {e}")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| bad("not a JSON object".into()))?;
        if !take(lineno, obj)? {
            break;
        }
    }
    Ok(())
}

/// Calls `take(row, object)` for each row (1-based), every column converted to JSON.
fn read_parquet_rows(path: &Path, take: &mut TakeRow<'_>) -> Result<()> {
    let perr = |e: parquet::errors::ParquetError| Error::EvalTaskFile {
        path: path.to_path_buf(),
        location: None,
        reason: format!("parquet: {e}"),
    };
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let reader = SerializedFileReader::new(file).map_err(perr)?;
    for (i, row) in reader.get_row_iter(None).map_err(perr)?.enumerate() {
        let row = row.map_err(perr)?;
        let obj: Map<String, Value> = row
            .get_column_iter()
            .map(|(k, f)| (k.clone(), field_json(f)))
            .collect();
        if !take(i + 1, &obj)? {
            break;
        }
    }
    Ok(())
}

/// A parquet value as JSON: strings, numbers, booleans, lists and structs (what HF datasets
/// write); anything else becomes its display string.
fn field_json(f: &Field) -> Value {
    match f {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(x) => Value::from(*x),
        Field::Short(x) => Value::from(*x),
        Field::Int(x) => Value::from(*x),
        Field::Long(x) => Value::from(*x),
        Field::UByte(x) => Value::from(*x),
        Field::UShort(x) => Value::from(*x),
        Field::UInt(x) => Value::from(*x),
        Field::ULong(x) => Value::from(*x),
        Field::Float(x) => Value::from(*x),
        Field::Double(x) => Value::from(*x),
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(b) => match b.as_utf8() {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => Value::String(format!("{f}")),
        },
        Field::Group(row) => Value::Object(
            row.get_column_iter()
                .map(|(k, v)| (k.clone(), field_json(v)))
                .collect(),
        ),
        Field::ListInternal(list) => Value::Array(list.elements().iter().map(field_json).collect()),
        other => Value::String(format!("{other}")),
    }
}

/// One JSON object of a task file, with what error messages need.
struct Doc<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
    /// "line 3" or "row 3".
    at: String,
}

impl<'a> Doc<'a> {
    fn err(&self, reason: impl Into<String>) -> Error {
        Error::EvalTaskFile {
            path: self.path.to_path_buf(),
            location: Some(self.at.clone()),
            reason: reason.into(),
        }
    }

    fn get(&self, field: &str) -> Result<&'a Value> {
        self.obj.get(field).ok_or_else(|| {
            let have: Vec<&str> = self.obj.keys().map(String::as_str).collect();
            self.err(format!(
                "no field `{field}` (the object has: {})",
                have.join(", ")
            ))
        })
    }

    fn str(&self, field: &str) -> Result<&'a str> {
        match self.get(field)? {
            Value::String(s) => Ok(s),
            other => Err(self.err(format!("field `{field}` is {other}, not a string"))),
        }
    }

    fn strings_of(&self, field: &str, v: &Value) -> Result<Vec<String>> {
        let arr = v
            .as_array()
            .ok_or_else(|| self.err(format!("field `{field}` is {v}, not a list of strings")))?;
        arr.iter()
            .enumerate()
            .map(|(i, s)| match s {
                Value::String(s) => Ok(s.clone()),
                other => {
                    Err(self.err(format!("field `{field}` item {i} is {other}, not a string")))
                }
            })
            .collect()
    }

    fn strings(&self, field: &str) -> Result<Vec<String>> {
        self.strings_of(field, self.get(field)?)
    }

    /// `{text: [...], label: [...]}` (ARC, OpenBookQA).
    fn choices_struct(&self, field: &str) -> Result<(Vec<String>, Vec<String>)> {
        let v = self.get(field)?;
        let obj = v.as_object().ok_or_else(|| {
            self.err(format!(
                "field `{field}` is {v}, not an object with `text` and `label` lists"
            ))
        })?;
        let part = |name: &str| -> Result<Vec<String>> {
            let inner = obj
                .get(name)
                .ok_or_else(|| self.err(format!("field `{field}` has no `{name}` list")))?;
            self.strings_of(&format!("{field}.{name}"), inner)
        };
        let (text, label) = (part("text")?, part("label")?);
        if text.len() != label.len() {
            return Err(self.err(format!(
                "field `{field}` has {} texts but {} labels",
                text.len(),
                label.len()
            )));
        }
        Ok((text, label))
    }

    /// A non-negative integer, or a string holding one (HellaSwag's `label` is "0".."3").
    fn index(&self, field: &str) -> Result<usize> {
        let v = self.get(field)?;
        let n = match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            Value::Bool(b) => Some(u64::from(*b)),
            _ => None,
        };
        n.map(|n| n as usize).ok_or_else(|| {
            self.err(format!(
                "field `{field}` is {v}, not a non-negative integer"
            ))
        })
    }
}

fn check_gold(doc: &Doc, field: &str, gold: usize, n: usize) -> Result<usize> {
    if gold >= n {
        return Err(doc.err(format!(
            "gold answer `{field}` = {gold} is out of range for {n} choices (0-based)"
        )));
    }
    Ok(gold)
}

/// Context plus one continuation per choice, delimiter in front of each.
fn choices_example(
    doc: &Doc,
    line: usize,
    context: String,
    choices: Vec<String>,
    gold: usize,
    delimiter: &str,
) -> Result<Example> {
    if choices.is_empty() {
        return Err(doc.err("has no answer choices"));
    }
    if let Some(i) = choices.iter().position(|c| c.is_empty()) {
        return Err(doc.err(format!("answer choice {i} is empty")));
    }
    let requests = choices
        .iter()
        .map(|c| Request {
            context: context.clone(),
            continuation: format!("{delimiter}{c}"),
        })
        .collect();
    Ok(Example {
        line,
        requests,
        choices,
        gold,
    })
}

/// The index of `key` among the labels (ARC's `answerKey` in `choices.label`).
fn label_index(doc: &Doc, key: &str, labels: &[String]) -> Result<usize> {
    labels.iter().position(|l| l == key).ok_or_else(|| {
        doc.err(format!(
            "answerKey `{key}` is not one of the choice labels {labels:?}"
        ))
    })
}

fn build_example(kind: TaskKind, doc: &Doc, line: usize, delim: &str) -> Result<Example> {
    match kind {
        TaskKind::ArcEasy | TaskKind::ArcChallenge => {
            let q = doc.str("question")?;
            let (text, label) = doc.choices_struct("choices")?;
            let gold = label_index(doc, doc.str("answerKey")?, &label)?;
            choices_example(
                doc,
                line,
                format!("Question: {q}\nAnswer:"),
                text,
                gold,
                delim,
            )
        }
        TaskKind::Openbookqa => {
            let q = doc.str("question_stem")?;
            let (text, label) = doc.choices_struct("choices")?;
            let gold = label_index(doc, doc.str("answerKey")?.trim_start(), &label)?;
            choices_example(doc, line, q.to_string(), text, gold, delim)
        }
        TaskKind::Hellaswag => {
            let ctx = format!(
                "{} {}",
                doc.str("ctx_a")?,
                python_capitalize(doc.str("ctx_b")?)
            );
            let query = hellaswag_preprocess(&format!("{}: {ctx}", doc.str("activity_label")?));
            let endings: Vec<String> = doc
                .strings("endings")?
                .iter()
                .map(|e| hellaswag_preprocess(e))
                .collect();
            let gold = check_gold(doc, "label", doc.index("label")?, endings.len())?;
            choices_example(doc, line, query, endings, gold, delim)
        }
        TaskKind::Piqa => {
            let goal = doc.str("goal")?;
            let sols = vec![doc.str("sol1")?.to_string(), doc.str("sol2")?.to_string()];
            let gold = check_gold(doc, "label", doc.index("label")?, 2)?;
            choices_example(
                doc,
                line,
                format!("Question: {goal}\nAnswer:"),
                sols,
                gold,
                delim,
            )
        }
        TaskKind::Boolq => {
            let passage = doc.str("passage")?;
            let question = doc.str("question")?;
            // google/boolq has `answer` (bool); super_glue's boolq has `label` (0 = no, 1 = yes).
            let gold = match doc.obj.get("answer") {
                Some(Value::Bool(b)) => usize::from(*b),
                Some(other) => {
                    return Err(doc.err(format!("field `answer` is {other}, not true/false")));
                }
                None if doc.obj.contains_key("label") => {
                    check_gold(doc, "label", doc.index("label")?, 2)?
                }
                None => {
                    return Err(doc.err(
                        "no field `answer` (true/false) or `label` (0/1) for the gold answer",
                    ));
                }
            };
            choices_example(
                doc,
                line,
                format!("{passage}\nQuestion: {question}?\nAnswer:"),
                vec!["no".into(), "yes".into()],
                gold,
                delim,
            )
        }
        TaskKind::Winogrande => {
            let sentence = doc.str("sentence")?;
            let blank = sentence
                .find('_')
                .ok_or_else(|| doc.err("field `sentence` has no `_` blank"))?;
            let options = [doc.str("option1")?, doc.str("option2")?];
            let answer = doc.index("answer")?;
            if !(1..=2).contains(&answer) {
                return Err(doc.err(format!("gold answer `answer` = {answer} is not 1 or 2")));
            }
            let before = &sentence[..blank];
            let after = sentence[blank + 1..].trim();
            let requests = options
                .iter()
                .map(|o| Request {
                    context: format!("{before}{o}"),
                    continuation: format!("{delim}{after}"),
                })
                .collect();
            Ok(Example {
                line,
                requests,
                choices: Vec::new(),
                gold: answer - 1,
            })
        }
        TaskKind::Lambada => {
            let text = doc.str("text")?;
            if text.trim().is_empty() {
                return Err(doc.err("field `text` is empty"));
            }
            // lm-eval splits on single spaces: the context is every piece but the last.
            let (context, word) = text.rsplit_once(' ').unwrap_or(("", text));
            Ok(Example {
                line,
                requests: vec![Request {
                    context: context.to_string(),
                    continuation: format!(" {word}"),
                }],
                choices: Vec::new(),
                gold: 0,
            })
        }
        TaskKind::Generic => {
            let context = doc.str("context")?;
            let choices = doc.strings("choices")?;
            let gold = match doc.get("gold")? {
                Value::String(s) => match choices.iter().position(|c| c == s) {
                    Some(i) => i,
                    None => {
                        return Err(
                            doc.err(format!("gold answer `gold` = {s:?} is none of the choices"))
                        );
                    }
                },
                _ => check_gold(doc, "gold", doc.index("gold")?, choices.len())?,
            };
            choices_example(doc, line, context.to_string(), choices, gold, delim)
        }
    }
}

/// Python's `str.capitalize`: the first character upper-cased, the rest lower-cased.
pub fn python_capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        None => String::new(),
        Some(first) => first
            .to_uppercase()
            .chain(chars.flat_map(char::to_lowercase))
            .collect(),
    }
}

/// lm-eval's HellaSwag clean-up: strip surrounding whitespace, turn " [title]" into ". ", drop
/// every bracketed span (`[...]`, shortest, not across a newline; WikiHow artifacts), then turn
/// each double space into one (one left-to-right pass).
pub fn hellaswag_preprocess(text: &str) -> String {
    let text = text.trim().replace(" [title]", ". ");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        // The shortest `[...]` starting here, with no newline inside.
        let close = after
            .char_indices()
            .take_while(|&(_, c)| c != '\n')
            .find(|&(_, c)| c == ']')
            .map(|(i, _)| i);
        match close {
            Some(i) => {
                out.push_str(&rest[..open]);
                rest = &after[i + 1..];
            }
            None => {
                out.push_str(&rest[..open + 1]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hellaswag_preprocess_removes_titles_and_brackets_like_lm_eval() {
        assert_eq!(
            hellaswag_preprocess(" How to cook [title] Boil water. [step] Add salt.  "),
            "How to cook. Boil water. Add salt."
        );
        // An unclosed bracket stays; brackets do not span lines.
        assert_eq!(hellaswag_preprocess("a [b\n] c [d]"), "a [b\n] c ");
        // One pass of the double-space rule: three spaces become two.
        assert_eq!(hellaswag_preprocess("x   y"), "x  y");
    }

    #[test]
    fn capitalize_lowers_the_rest_as_python_does() {
        assert_eq!(python_capitalize("then THE man"), "Then the man");
        assert_eq!(python_capitalize(""), "");
    }

    #[test]
    fn task_names_accept_lm_eval_spellings() {
        assert_eq!(TaskKind::parse("arc_easy"), Some(TaskKind::ArcEasy));
        assert_eq!(
            TaskKind::parse("ARC-Challenge"),
            Some(TaskKind::ArcChallenge)
        );
        assert_eq!(TaskKind::parse("lambada_openai"), Some(TaskKind::Lambada));
        assert_eq!(TaskKind::parse("mmlu"), None);
        for k in TaskKind::ALL {
            assert_eq!(TaskKind::parse(k.name()), Some(k));
        }
    }

    #[test]
    fn specs_parse_labels_and_reject_duplicates() -> Result<()> {
        let s = parse_task_specs(&["piqa=a.jsonl", "generic:mine=b.jsonl", "generic=c.jsonl"])?;
        assert_eq!(
            s.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
            ["piqa", "generic:mine", "generic"]
        );
        assert_eq!(s[1].path, PathBuf::from("b.jsonl"));
        assert!(parse_task_specs(&["piqa=a", "piqa=b"]).is_err());
        assert!(matches!(
            parse_task_specs(&["mmlu=a"]),
            Err(Error::EvalTaskName { .. })
        ));
        assert!(parse_task_specs(&["piqa"]).is_err());
        assert!(parse_task_specs(&["piqa="]).is_err());
        Ok(())
    }
}
