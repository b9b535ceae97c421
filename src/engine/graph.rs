//! The validated DAG of one pipeline: every stage instantiated from the registry, every input
//! bound to an existing stage with the right arity, no cycles, nodes in a deterministic
//! topological order. Built once; the planner and the executor only read it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use petgraph::graph::{DiGraph, NodeIndex};

use crate::engine::registry::{Registry, StageSpec};
use crate::engine::stage::{DynStage, Resources};
use crate::{Error, Result};

/// The `[pipeline]` header after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub name: String,
    pub seed: u64,
    /// Work directory holding the store.
    pub workdir: PathBuf,
    /// Tensor dtype class in the key (`f32`, `bf16`, …).
    pub dtype: String,
    /// Device class in the key (`cpu`, `cuda`, …).
    pub device: String,
    /// Heavy CPU tokens; default: the number of cores.
    pub cpu_tokens: u32,
    pub gpu_tokens: u32,
    /// Memory budget for concurrently running stages, in bytes.
    pub mem_budget_bytes: u64,
    /// Where stage attempts run (`[pipeline.executor]`, `tyr run --executor`). Not in any key:
    /// both executors give the same bits.
    pub executor: crate::engine::slurm::ExecutorSettings,
}

/// One input slot bound to upstream nodes (indices into `Graph::nodes`).
#[derive(Debug, Clone)]
pub struct Binding {
    pub slot: String,
    pub from: Vec<usize>,
}

/// One stage of the DAG.
#[derive(Clone)]
pub struct Node {
    pub id: String,
    pub kind: String,
    pub params_json: String,
    /// The params table as written (after overrides): what a worker process rebuilds the
    /// stage from (`engine::worker`).
    pub params: toml::Table,
    pub stage: Arc<dyn DynStage>,
    /// In the stage's declared slot order.
    pub inputs: Vec<Binding>,
    pub resources: Resources,
    /// Folders under the pipeline's `out/<name>/` that this stage's published outputs are
    /// copied into: `[""]` (the folder itself) for a plain pipeline; in a sweep, the folder of
    /// every swept value the stage belongs to (`sweep/<key>=<value>`, see `pipeline::sweep`).
    pub out_dirs: Vec<String>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("params", &self.params_json)
            .field("inputs", &self.inputs)
            .field("resources", &self.resources)
            .field("out_dirs", &self.out_dirs)
            .finish()
    }
}

impl Node {
    /// Indices of every upstream node, deduplicated.
    pub fn deps(&self) -> Vec<usize> {
        let s: BTreeSet<usize> = self
            .inputs
            .iter()
            .flat_map(|b| b.from.iter().copied())
            .collect();
        s.into_iter().collect()
    }
}

/// A validated pipeline: header and nodes in topological order (ties in file order).
#[derive(Debug)]
pub struct Graph {
    pub header: Header,
    pub nodes: Vec<Node>,
    /// `consumers[i]`: nodes that read node `i`.
    pub consumers: Vec<Vec<usize>>,
}

fn err(file: &Path, spec: &StageSpec, field: &str, message: String) -> Error {
    let field = match &spec.section {
        Some(s) => format!("[{s}] → stage `{}`.{field}", spec.id),
        None => format!("stage `{}`.{field}", spec.id),
    };
    Error::Pipeline {
        file: file.to_path_buf(),
        line: spec.line,
        field,
        message,
    }
}

impl Graph {
    /// Validates `specs` against `registry`. `file` is only used in error messages.
    pub fn build(
        header: Header,
        specs: Vec<StageSpec>,
        registry: &Registry,
        file: &Path,
    ) -> Result<Graph> {
        let mut pos: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, s) in specs.iter().enumerate() {
            if s.id.is_empty() {
                return Err(err(file, s, "id", "must not be empty".into()));
            }
            if let Some(prev) = pos.insert(&s.id, i) {
                let line = specs[prev]
                    .line
                    .map_or(String::new(), |l| format!(" (first at line {l})"));
                return Err(err(file, s, "id", format!("duplicate stage id{line}")));
            }
        }
        let all_ids = || pos.keys().copied().collect::<Vec<_>>().join(", ");
        let mut built = Vec::with_capacity(specs.len());
        for s in &specs {
            let b = registry
                .instantiate(&s.kind, &s.params)
                .map_err(|e| match e {
                    Error::EngineUnknownKind { .. } => err(file, s, "kind", e.to_string()),
                    other => err(file, s, "params", other.to_string()),
                })?;
            let declared = b.stage.inputs();
            for slot in s.inputs.keys() {
                if !declared.iter().any(|d| &d.name == slot) {
                    let names: Vec<&str> = declared.iter().map(|d| d.name.as_str()).collect();
                    return Err(err(
                        file,
                        s,
                        &format!("inputs.{slot}"),
                        format!(
                            "kind `{}` has no input slot `{slot}` (its slots: {})",
                            s.kind,
                            if names.is_empty() {
                                "none".to_string()
                            } else {
                                names.join(", ")
                            }
                        ),
                    ));
                }
            }
            let mut inputs = Vec::new();
            for d in &declared {
                let field = format!("inputs.{}", d.name);
                let Some(r) = s.inputs.get(&d.name) else {
                    return Err(err(
                        file,
                        s,
                        &field,
                        format!("missing; kind `{}` needs it", s.kind),
                    ));
                };
                let ids = r.ids();
                if !d.many && ids.len() != 1 {
                    return Err(err(file, s, &field, "takes exactly one stage id".into()));
                }
                let mut from = Vec::new();
                for id in ids {
                    let Some(&j) = pos.get(id) else {
                        return Err(err(
                            file,
                            s,
                            &field,
                            format!("no stage `{id}` (stages: {})", all_ids()),
                        ));
                    };
                    from.push(j);
                }
                inputs.push(Binding {
                    slot: d.name.clone(),
                    from,
                });
            }
            let mut resources = b.stage.resources();
            resources.mem_bytes = resources.mem_bytes.max(s.mem_bytes.unwrap_or(0));
            // A stage that runs the model (it keys on the forward's version) holds one GPU
            // while it runs when the pipeline's device is one: the local executor runs at most
            // `gpu_tokens` of them at once, and a Slurm job asks for `--gres=gpu:1`.
            if header.device.starts_with("cuda")
                && b.stage.code_versions().iter().any(|(n, _)| *n == "forward")
            {
                resources.gpu = resources.gpu.max(1);
            }
            built.push(Node {
                id: s.id.clone(),
                kind: s.kind.clone(),
                params_json: b.params_json,
                params: s.params.clone(),
                stage: b.stage,
                inputs,
                resources,
                out_dirs: vec![String::new()],
            });
        }
        let order = topo_order(&built).map_err(|cycle| {
            let path: Vec<&str> = cycle.iter().map(|&i| built[i].id.as_str()).collect();
            err(
                file,
                &specs[cycle[0]],
                "inputs",
                format!("cycle: {}", path.join(" → ")),
            )
        })?;
        // Renumber nodes into topological order.
        let mut new_index = vec![0; built.len()];
        for (new, &old) in order.iter().enumerate() {
            new_index[old] = new;
        }
        let mut slots: Vec<Option<Node>> = built.into_iter().map(Some).collect();
        let mut nodes: Vec<Node> = order.iter().filter_map(|&old| slots[old].take()).collect();
        for n in &mut nodes {
            for b in &mut n.inputs {
                for f in &mut b.from {
                    *f = new_index[*f];
                }
            }
        }
        Ok(Graph::from_ordered(header, nodes))
    }

    /// A graph of `nodes` already in topological order: every input of node `i` is a node
    /// before it (what `build` and `pipeline::sweep` produce).
    pub fn from_ordered(header: Header, nodes: Vec<Node>) -> Graph {
        let mut consumers = vec![Vec::new(); nodes.len()];
        for (i, n) in nodes.iter().enumerate() {
            for d in n.deps() {
                debug_assert!(d < i, "node {i} reads node {d}, which comes after it");
                consumers[d].push(i);
            }
        }
        Graph {
            header,
            nodes,
            consumers,
        }
    }

    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// The DAG as petgraph, node weights are stage ids.
    pub fn petgraph(&self) -> DiGraph<String, String> {
        let mut g = DiGraph::new();
        let idx: Vec<NodeIndex> = self
            .nodes
            .iter()
            .map(|n| g.add_node(n.id.clone()))
            .collect();
        for (i, n) in self.nodes.iter().enumerate() {
            for b in &n.inputs {
                for &f in &b.from {
                    g.add_edge(idx[f], idx[i], b.slot.clone());
                }
            }
        }
        g
    }

    /// Graphviz text.
    pub fn to_dot(&self) -> String {
        let mut s = format!(
            "digraph \"{}\" {{\n  rankdir=LR;\n",
            escape(&self.header.name)
        );
        for n in &self.nodes {
            s += &format!(
                "  \"{}\" [label=\"{}\\n{}\"];\n",
                escape(&n.id),
                escape(&n.id),
                escape(&n.kind)
            );
        }
        for n in &self.nodes {
            for b in &n.inputs {
                for &f in &b.from {
                    s += &format!(
                        "  \"{}\" -> \"{}\" [label=\"{}\"];\n",
                        escape(&self.nodes[f].id),
                        escape(&n.id),
                        escape(&b.slot)
                    );
                }
            }
        }
        s + "}\n"
    }

    /// Mermaid flowchart text.
    pub fn to_mermaid(&self) -> String {
        let mut s = String::from("flowchart LR\n");
        for (i, n) in self.nodes.iter().enumerate() {
            s += &format!("  n{i}[\"{}<br/>{}\"]\n", n.id.replace('"', "'"), n.kind);
        }
        for (i, n) in self.nodes.iter().enumerate() {
            for b in &n.inputs {
                for &f in &b.from {
                    s += &format!("  n{f} -->|{}| n{i}\n", b.slot);
                }
            }
        }
        s
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Kahn's algorithm taking the lowest file position among ready nodes, so the order is
/// deterministic. On a cycle, returns its nodes in path order, first node repeated at the end.
pub fn topo_order(nodes: &[Node]) -> std::result::Result<Vec<usize>, Vec<usize>> {
    let deps: Vec<Vec<usize>> = nodes.iter().map(Node::deps).collect();
    topo_order_of(&deps)
}

/// `topo_order` on plain dependency lists (`deps[i]`: what node `i` reads).
pub fn topo_order_of(deps: &[Vec<usize>]) -> std::result::Result<Vec<usize>, Vec<usize>> {
    let n = deps.len();
    let mut indegree: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut out_edges = vec![Vec::new(); n];
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds {
            out_edges[d].push(i);
        }
    }
    let mut ready: BTreeSet<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &j in &out_edges[i] {
            indegree[j] -= 1;
            if indegree[j] == 0 {
                ready.insert(j);
            }
        }
    }
    if order.len() == n {
        return Ok(order);
    }
    Err(find_cycle(deps, &indegree))
}

/// A cycle among the nodes Kahn's algorithm could not order (those with indegree left).
fn find_cycle(deps: &[Vec<usize>], indegree: &[usize]) -> Vec<usize> {
    // Walk dependency edges from a stuck node; every stuck node has a stuck dependency, so the
    // walk must revisit a node, and the part from its first visit is a cycle.
    let Some(start) = (0..deps.len()).find(|&i| indegree[i] > 0) else {
        return vec![];
    };
    let mut seen: BTreeMap<usize, usize> = BTreeMap::new();
    let mut path = vec![start];
    let mut cur = start;
    loop {
        seen.insert(cur, path.len() - 1);
        let Some(&next) = deps[cur].iter().find(|&&d| indegree[d] > 0) else {
            return path;
        };
        if let Some(&at) = seen.get(&next) {
            // path[at..] walks consumer → dependency; reverse it to read in data-flow order.
            let mut cycle: Vec<usize> = path[at..].to_vec();
            cycle.reverse();
            cycle.push(cycle[0]);
            return cycle;
        }
        path.push(next);
        cur = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycle_is_reported_with_its_full_path() {
        // 0 ← 2, 1 ← 0, 2 ← 1 : the cycle 0 → 1 → 2 → 0 in data-flow order.
        let deps = vec![vec![2], vec![0], vec![1], vec![]];
        let cycle = topo_order_of(&deps).unwrap_err();
        assert_eq!(cycle.len(), 4);
        assert_eq!(cycle.first(), cycle.last());
        for w in cycle.windows(2) {
            assert!(deps[w[1]].contains(&w[0]), "{:?} is not a path", cycle);
        }
    }

    #[test]
    fn ties_are_broken_by_file_order() {
        let deps = vec![vec![], vec![], vec![0, 1], vec![]];
        assert_eq!(topo_order_of(&deps).unwrap(), vec![0, 1, 2, 3]);
    }
}
