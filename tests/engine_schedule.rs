//! Property test: random DAGs (random edges, random declaration order) are scheduled in
//! dependency order, each stage exactly once, with several stages running concurrently; a
//! second run of the same DAG runs nothing.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use tyr::engine::{
    self, Graph, Header, InputRef, InputSlot, OpenMode, Outputs, Quiet, Registry, Resources, Stage,
    StageContext, StageSpec, Store,
};

/// (stage name, true = started / false = finished), in the order they happened.
static EVENTS: Mutex<Vec<(String, bool)>> = Mutex::new(Vec::new());

struct Probe(ProbeParams);

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbeParams {
    name: String,
}

impl Stage for Probe {
    const KIND: &'static str = "probe";
    const VERSION: u32 = 1;
    type Params = ProbeParams;
    fn new(p: ProbeParams) -> tyr::Result<Self> {
        Ok(Self(p))
    }
    fn inputs(&self) -> Vec<InputSlot> {
        vec![InputSlot::many("deps")]
    }
    fn resources(&self) -> Resources {
        Resources {
            cpu: 1,
            gpu: 0,
            mem_bytes: 0,
        }
    }
    fn run(&self, ctx: &mut StageContext<'_>) -> tyr::Result<Outputs> {
        EVENTS.lock().unwrap().push((self.0.name.clone(), true));
        let mut seen = Vec::new();
        for d in ctx.inputs("deps")? {
            seen.push(d.record::<String>("name")?);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
        EVENTS.lock().unwrap().push((self.0.name.clone(), false));
        let mut o = Outputs::new();
        o.record("name", &self.0.name)?;
        o.record("seen", &seen)?;
        Ok(o)
    }
}

/// `deps[i]`: the stages node i reads (all < i), and a declaration order.
fn dag() -> impl Strategy<Value = (Vec<Vec<usize>>, Vec<usize>)> {
    (1usize..10)
        .prop_flat_map(|n| {
            let edges = proptest::collection::vec(proptest::collection::vec(any::<bool>(), n), n);
            let order = Just((0..n).collect::<Vec<_>>()).prop_shuffle();
            (edges, order)
        })
        .prop_map(|(bits, order)| {
            let deps = bits
                .iter()
                .enumerate()
                .map(|(i, row)| (0..i).filter(|&j| row[j]).collect())
                .collect();
            (deps, order)
        })
}

fn build(deps: &[Vec<usize>], order: &[usize], workdir: &Path) -> Graph {
    let mut reg = Registry::new();
    reg.register::<Probe>();
    let specs = order
        .iter()
        .map(|&i| StageSpec {
            id: format!("s{i}"),
            kind: "probe".into(),
            params: toml::Table::from_iter([(
                "name".to_string(),
                toml::Value::String(format!("s{i}")),
            )]),
            inputs: BTreeMap::from([(
                "deps".to_string(),
                InputRef::Many(deps[i].iter().map(|d| format!("s{d}")).collect()),
            )]),
            line: None,
            section: None,
            mem_bytes: None,
        })
        .collect();
    let header = Header {
        name: "prop".into(),
        seed: 1,
        workdir: workdir.to_path_buf(),
        dtype: "f32".into(),
        device: "cpu".into(),
        cpu_tokens: 3,
        gpu_tokens: 0,
        mem_budget_bytes: u64::MAX,
        executor: Default::default(),
    };
    Graph::build(header, specs, &reg, Path::new("<generated>")).expect("valid DAG")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_dags_run_each_stage_once_after_its_inputs((deps, order) in dag()) {
        let dir = tempfile::tempdir().unwrap();
        let g = build(&deps, &order, dir.path());
        EVENTS.lock().unwrap().clear();
        let store = Arc::new(Store::open(dir.path(), OpenMode::Exclusive).unwrap());
        let r = engine::run(&g, store.clone(), Arc::new(Quiet)).unwrap();
        prop_assert_eq!(r.ran().len(), deps.len());
        let events = EVENTS.lock().unwrap().clone();
        let pos = |name: &str, start: bool| events.iter().position(|(n, s)| n == name && *s == start);
        for (i, ds) in deps.iter().enumerate() {
            let me = format!("s{i}");
            prop_assert_eq!(events.iter().filter(|(n, s)| *n == me && *s).count(), 1, "{} ran more than once", me);
            let start = pos(&me, true).unwrap();
            for d in ds {
                let end = pos(&format!("s{d}"), false).unwrap();
                prop_assert!(end < start, "s{} started before its input s{} finished: {:?}", i, d, events);
            }
        }
        drop(store);
        EVENTS.lock().unwrap().clear();
        let store = Arc::new(Store::open(dir.path(), OpenMode::Exclusive).unwrap());
        let again = engine::run(&g, store, Arc::new(Quiet)).unwrap();
        prop_assert!(again.ran().is_empty());
        prop_assert!(EVENTS.lock().unwrap().is_empty());
    }
}
