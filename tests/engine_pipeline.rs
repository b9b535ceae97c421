//! Pipeline files beyond `[[stage]]`: a registered section expander turns an extra top-level
//! section into stages (the way `[prune]` will), `--set section.key=…` reaches it, and
//! generated stages may read hand-written ones.

use std::collections::BTreeMap;
use std::path::Path;

use tyr::engine::{ExpandContext, InputRef, Registry, SectionExpander, StageSpec};

/// `[fanout] copies = N` → stages `copy-0…copy-{N-1}` (text) and `joined` (summary) reading
/// them plus the hand-written stage named by `also`.
struct Fanout;

impl SectionExpander for Fanout {
    fn section(&self) -> &'static str {
        "fanout"
    }
    fn expand(&self, table: &toml::Table, ctx: &ExpandContext<'_>) -> tyr::Result<Vec<StageSpec>> {
        let n = table
            .get("copies")
            .and_then(|v| v.as_integer())
            .ok_or_else(|| tyr::Error::msg("`copies`: expected an integer"))?;
        let also = table
            .get("also")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        assert!(
            ctx.declared.contains(&also),
            "expanders see the hand-written stage ids"
        );
        let mut specs: Vec<StageSpec> = (0..n)
            .map(|i| StageSpec {
                id: format!("copy-{i}"),
                kind: "text".into(),
                params: toml::Table::from_iter([(
                    "text".to_string(),
                    toml::Value::String(format!("{} #{i}", ctx.pipeline)),
                )]),
                inputs: BTreeMap::new(),
                line: None,
                section: None,
                mem_bytes: None,
            })
            .collect();
        let mut parts: Vec<String> = specs.iter().map(|s| s.id.clone()).collect();
        parts.push(also);
        specs.push(StageSpec {
            id: "joined".into(),
            kind: "summary".into(),
            params: toml::Table::new(),
            inputs: BTreeMap::from([("parts".to_string(), InputRef::Many(parts))]),
            line: None,
            section: None,
            mem_bytes: None,
        });
        Ok(specs)
    }
}

const SRC: &str = r#"
[pipeline]
name = "fan"

[[stage]]
id = "base"
kind = "text"
params = { text = "base" }

[fanout]
copies = 2
also = "base"
"#;

fn registry() -> Registry {
    let mut r = tyr::stages::default_registry();
    r.register_expander(Fanout);
    r
}

#[test]
fn a_registered_section_expands_into_stages() {
    let g = tyr::pipeline::load_str(SRC, Path::new("fan.toml"), &[], None, &registry()).unwrap();
    let ids: Vec<&str> = g.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, vec!["base", "copy-0", "copy-1", "joined"]);
    assert_eq!(g.nodes[3].inputs[0].from, vec![1, 2, 0]);
}

#[test]
fn set_overrides_reach_the_section_before_expansion() {
    let sets = vec!["fanout.copies=3".to_string()];
    let g = tyr::pipeline::load_str(SRC, Path::new("fan.toml"), &sets, None, &registry()).unwrap();
    assert_eq!(g.nodes.len(), 5);
}

#[test]
fn expander_errors_name_the_section_and_its_line() {
    let sets = vec!["fanout.copies=\"many\"".to_string()];
    let e = tyr::pipeline::load_str(SRC, Path::new("fan.toml"), &sets, None, &registry())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("fan.toml:10") && e.contains("[fanout]") && e.contains("copies"),
        "{e}"
    );
}

#[test]
fn an_unregistered_section_is_an_error_listing_the_known_ones() {
    let e = tyr::pipeline::load_str(
        SRC,
        Path::new("fan.toml"),
        &[],
        None,
        &tyr::stages::default_registry(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("fan.toml:10") && e.contains("unknown section") && e.contains("pipeline, stage"),
        "{e}"
    );
}
