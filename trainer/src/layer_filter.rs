//! Which projection layers compute in FP8.
//!
//! Only the four projections of each block (`h.N.attn.c_attn`, `h.N.attn.c_proj`, `h.N.mlp.c_fc`,
//! `h.N.mlp.c_proj`) can be FP8; embeddings, layer norms, attention's batched matmuls and the
//! tied LM head always stay f32, as in the FP8-AMAX paper (DESIGN.md "The decorator"). A layer
//! the filter excludes computes `matmul + add` itself, so the `Fp8<B>` backend never sees it.
//!
//! Patterns are globs over those Hugging Face module names, where `*` matches any run of
//! characters (dots included): `*` is every projection, `h.*.mlp.*` both MLP projections,
//! `h.0.*` every projection of the first block. A pattern starting with `!` excludes. A layer is
//! FP8 when some include pattern matches it and no exclude pattern does.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A pattern that names no projection of the model: almost always a typo, which would silently
/// leave layers in f32.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LayerFilterError {
    #[error(
        "layer filter pattern `{pattern}` matches no projection layer (names look like \
         h.0.attn.c_attn, h.0.attn.c_proj, h.0.mlp.c_fc, h.0.mlp.c_proj; this model has {n_layer} blocks)"
    )]
    NoMatch { pattern: String, n_layer: usize },
    #[error("empty layer filter pattern (use `*` for every projection)")]
    Empty,
}

/// The four projections of a block, in forward order, by their name inside the block.
pub const PROJECTIONS: [&str; 4] = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"];

/// Glob patterns choosing the FP8 projection layers; serialised as a list of strings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct LayerFilter {
    include: Vec<String>,
    exclude: Vec<String>,
}

/// The resolved flags of one block: which of its projections call the backend's `linear`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BlockFp8 {
    /// `h.N.attn.c_attn`
    pub attn_c_attn: bool,
    /// `h.N.attn.c_proj`
    pub attn_c_proj: bool,
    /// `h.N.mlp.c_fc`
    pub mlp_c_fc: bool,
    /// `h.N.mlp.c_proj`
    pub mlp_c_proj: bool,
}

impl Default for LayerFilter {
    /// Every projection of every block (the paper's setting).
    fn default() -> Self {
        Self::all()
    }
}

impl LayerFilter {
    /// Every projection of every block.
    pub fn all() -> Self {
        Self {
            include: vec!["*".into()],
            exclude: vec![],
        }
    }

    /// No layer in FP8 (every projection computes `matmul + add`).
    pub fn none() -> Self {
        Self {
            include: vec![],
            exclude: vec![],
        }
    }

    /// Builds a filter from patterns (`!` prefix excludes).
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Self, LayerFilterError> {
        let mut filter = Self::none();
        for pattern in patterns {
            let pattern = pattern.as_ref().trim();
            if pattern.is_empty() || pattern == "!" {
                return Err(LayerFilterError::Empty);
            }
            match pattern.strip_prefix('!') {
                Some(excluded) => filter.exclude.push(excluded.to_string()),
                None => filter.include.push(pattern.to_string()),
            }
        }
        Ok(filter)
    }

    /// Parses a comma-separated list, as given on a command line: `h.*.mlp.*,!h.0.*`.
    pub fn parse(list: &str) -> Result<Self, LayerFilterError> {
        if list.trim().is_empty() {
            return Ok(Self::none());
        }
        Self::new(&list.split(',').collect::<Vec<_>>())
    }

    /// Whether the projection with this HF name (`h.3.mlp.c_fc`) is FP8.
    pub fn matches(&self, name: &str) -> bool {
        self.include.iter().any(|p| glob(p, name)) && !self.exclude.iter().any(|p| glob(p, name))
    }

    /// Resolves the filter for a model with `n_layer` blocks; every pattern must match some layer.
    pub fn resolve(&self, n_layer: usize) -> Result<Vec<BlockFp8>, LayerFilterError> {
        let names: Vec<String> = (0..n_layer)
            .flat_map(|i| PROJECTIONS.iter().map(move |p| format!("h.{i}.{p}")))
            .collect();
        for pattern in self.include.iter().chain(&self.exclude) {
            if !names.iter().any(|name| glob(pattern, name)) {
                return Err(LayerFilterError::NoMatch {
                    pattern: pattern.clone(),
                    n_layer,
                });
            }
        }
        Ok((0..n_layer)
            .map(|i| {
                let on = |p: &str| self.matches(&format!("h.{i}.{p}"));
                BlockFp8 {
                    attn_c_attn: on(PROJECTIONS[0]),
                    attn_c_proj: on(PROJECTIONS[1]),
                    mlp_c_fc: on(PROJECTIONS[2]),
                    mlp_c_proj: on(PROJECTIONS[3]),
                }
            })
            .collect())
    }

    /// The patterns, excludes with their `!`.
    pub fn patterns(&self) -> Vec<String> {
        self.include
            .iter()
            .cloned()
            .chain(self.exclude.iter().map(|p| format!("!{p}")))
            .collect()
    }
}

impl fmt::Display for LayerFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.patterns().join(","))
    }
}

impl TryFrom<Vec<String>> for LayerFilter {
    type Error = LayerFilterError;
    fn try_from(patterns: Vec<String>) -> Result<Self, Self::Error> {
        Self::new(&patterns)
    }
}

impl From<LayerFilter> for Vec<String> {
    fn from(filter: LayerFilter) -> Self {
        filter.patterns()
    }
}

/// Glob match where `*` matches any (possibly empty) run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // Classic two-pointer wildcard match with backtracking to the last star.
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_hf_names() {
        assert!(glob("*", "h.0.attn.c_attn"));
        assert!(glob("h.*.mlp.*", "h.11.mlp.c_proj"));
        assert!(!glob("h.*.mlp.*", "h.11.attn.c_proj"));
        assert!(glob("h.*.attn.c_attn", "h.3.attn.c_attn"));
        assert!(!glob("h.1.*", "h.10.mlp.c_fc"));
        assert!(glob("h.1*", "h.10.mlp.c_fc"));
    }

    #[test]
    fn default_is_every_projection() {
        let flags = LayerFilter::default().resolve(3).unwrap();
        assert_eq!(flags.len(), 3);
        assert!(flags
            .iter()
            .all(|b| b.attn_c_attn && b.attn_c_proj && b.mlp_c_fc && b.mlp_c_proj));
    }

    #[test]
    fn excludes_win_over_includes() {
        let filter = LayerFilter::parse("h.*.mlp.*,!h.0.*").unwrap();
        let flags = filter.resolve(2).unwrap();
        assert_eq!(flags[0], BlockFp8::default());
        assert_eq!(
            flags[1],
            BlockFp8 {
                mlp_c_fc: true,
                mlp_c_proj: true,
                ..BlockFp8::default()
            }
        );
        assert_eq!(filter.to_string(), "h.*.mlp.*,!h.0.*");
    }

    #[test]
    fn pattern_matching_nothing_is_an_error() {
        let err = LayerFilter::parse("h.*.mlp.c_fcc")
            .unwrap()
            .resolve(2)
            .unwrap_err();
        assert!(matches!(err, LayerFilterError::NoMatch { .. }));
        assert!(LayerFilter::parse("h.5.*").unwrap().resolve(2).is_err());
        assert_eq!(
            LayerFilter::parse("*,").unwrap_err(),
            LayerFilterError::Empty
        );
    }

    #[test]
    fn serde_is_a_list_of_patterns() {
        let filter: LayerFilter =
            serde_json::from_str(r#"["h.*.attn.*", "!h.1.attn.c_proj"]"#).unwrap();
        assert!(filter.matches("h.0.attn.c_proj") && !filter.matches("h.1.attn.c_proj"));
        assert_eq!(
            serde_json::to_string(&filter).unwrap(),
            r#"["h.*.attn.*","!h.1.attn.c_proj"]"#
        );
    }
}
