//! The vocabulary that `prune`, `search`, `supernet` and `export` share: the two prunable module
//! types of a decoder layer. Defined once here so every layer (and `Error`) names them alike.

use serde::{Deserialize, Serialize};

/// The two prunable module types of a decoder layer (ALGORITHM.md §1). The search never moves
/// budget between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModuleKind {
    /// q/k/v/o_proj; units are query heads, statistics and refit on `o_proj`.
    Attn,
    /// gate/up/down_proj; units are intermediate channels, statistics and refit on `down_proj`.
    Ffn,
}

impl ModuleKind {
    pub const ALL: [ModuleKind; 2] = [ModuleKind::Attn, ModuleKind::Ffn];

    /// `attn` / `ffn`: how pipelines, records and reports spell it.
    pub fn name(self) -> &'static str {
        match self {
            ModuleKind::Attn => "attn",
            ModuleKind::Ffn => "ffn",
        }
    }
}

impl std::fmt::Display for ModuleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One layer's choice: units removed from its attention and from its FFN, written `[attn, ffn]`
/// in records and params. (The search's `Configuration` holds the same per module, attention of
/// layer l at module 2l and its FFN at 2l + 1; `supernet::rounds` converts between the two.)
pub type LayerLevels = [usize; 2];
