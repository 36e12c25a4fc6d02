//! A job's FP8 setting: the one configuration type, from the job config's `precision` section
//! down to the kernels (docs/design.md, "FP8 numerics" and "Job config").
//!
//! ```json
//! "precision": {"mode": "fp8-amax", "family": "graphcore", "gradient_margin": 3,
//!               "layers": ["*", "!h.0.*"], "stats_every": 25}
//! ```
//!
//! Every field has a default (FP8-AMAX with the paper's settings); unknown keys are errors.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::delayed::{AmaxCompute, DEFAULT_AMAX_HISTORY_LEN};
use crate::format::{Fp8Family, Fp8Format, Role, UnknownName};
use crate::scaling::{BiasRule, DEFAULT_GRADIENT_MARGIN, MAX_BIAS};

/// Default `warn_underflow`: a quarter of a tensor's non-zero values lost to zero.
pub const DEFAULT_WARN_UNDERFLOW: f64 = 0.25;
/// Default `warn_saturation`: one value in a hundred clipped to the format's max.
pub const DEFAULT_WARN_SATURATION: f64 = 0.01;

/// How the linear layers compute: `fp32`, `fp8-amax`, `fp8-cscale` or `fp8-delayed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// FP8 off: the linear layers are plain f32 (bit-identical to the inner backend).
    Fp32,
    /// FP8-AMAX: a per-tensor power-of-two scale from the tensor's absolute maximum, every call.
    #[default]
    Fp8Amax,
    /// FP8-CSCALE: one constant scaling bias for every weight, activation and gradient.
    Fp8Cscale,
    /// Delayed scaling (Transformer Engine's recipe): each tensor's power-of-two scale from the
    /// amax history of its earlier casts (`crate::delayed`).
    Fp8Delayed,
    /// No FP8: the linear layers' GEMM operands rounded to bfloat16 (round to nearest even, no
    /// scale), products accumulated in f32, f32 master weights and everything else f32: the
    /// linear layers of PyTorch's `torch.autocast(dtype=torch.bfloat16)`, the baseline FP8
    /// users compare against.
    Bf16,
}

impl Precision {
    /// The spelling of configs and of `--precision`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Fp8Amax => "fp8-amax",
            Self::Fp8Cscale => "fp8-cscale",
            Self::Fp8Delayed => "fp8-delayed",
            Self::Bf16 => "bf16",
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Precision {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fp32" => Ok(Self::Fp32),
            "fp8-amax" => Ok(Self::Fp8Amax),
            "fp8-cscale" => Ok(Self::Fp8Cscale),
            "fp8-delayed" => Ok(Self::Fp8Delayed),
            "bf16" => Ok(Self::Bf16),
            _ => Err(UnknownName {
                what: "precision",
                got: s.to_string(),
                expected: "fp32, fp8-amax, fp8-cscale, fp8-delayed, bf16",
            }),
        }
    }
}

/// How the model's LM head multiplies (`precision.head`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HeadPrecision {
    /// A plain f32 matmul, as in the paper (and as the independent references compute it).
    #[default]
    F32,
    /// Its three GEMMs with bf16 operands and f32 accumulation (the `bf16` precision's cast),
    /// as under PyTorch's bf16 autocast, and as FP8 recipes that keep the head out of FP8 run
    /// it (Transformer Engine and torchao inside bf16 autocast).
    Bf16,
}

impl HeadPrecision {
    /// The spelling of configs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Bf16 => "bf16",
        }
    }
}

/// How a LoRA job keeps its frozen base projection weights (`precision.base_storage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseStorage {
    /// As loaded, f32 (cast to FP8 at every forward).
    #[default]
    F32,
    /// As their FP8 cast, one byte a parameter ([`crate::Fp8Weight`]): the cast every forward
    /// made of them, made once.
    Fp8,
}

impl BaseStorage {
    /// The spelling of configs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Fp8 => "fp8",
        }
    }
}

/// The `precision` section of a job config, and what the decorator works by.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Fp8Policy {
    /// `fp32`, `fp8-amax` (default), `fp8-cscale` or `fp8-delayed`.
    pub mode: Precision,
    /// FP8 formats: `graphcore` (E4M3/E5M2 "fnuz", the paper's) or `ocp` (Transformer Engine's).
    pub family: Fp8Family,
    /// FP8-CSCALE: the constant scaling bias of every tensor (-31 ..= 31).
    pub cscale_bias: i32,
    /// `fp8-delayed`: amaxes kept per tensor (Transformer Engine's default, 1024).
    pub amax_history_len: usize,
    /// `fp8-delayed`: `max` (default) or `most_recent` amax of the history.
    pub amax_compute_algo: AmaxCompute,
    /// FP8-AMAX (and `fp8-delayed`) margin for weights.
    pub weight_margin: i32,
    /// FP8-AMAX (and `fp8-delayed`) margin for activations.
    pub activation_margin: i32,
    /// FP8-AMAX (and `fp8-delayed`) margin for gradients (paper: 3).
    pub gradient_margin: i32,
    /// Which linear layers are FP8, by name pattern (default `["*"]`: every layer the model
    /// offers; for GPT-2 the four projections of every block, never the embeddings or the head).
    pub layers: LayerFilter,
    /// Write `fp8_stats.csv` rows every this many steps (0 = off; statistics are then not collected).
    pub stats_every: u64,
    /// Keep the weight cast in the forward for the backward's dX (one FP8 copy of every FP8
    /// weight held per step) instead of casting the weight again (bit-identical either way).
    pub cache_weights: bool,
    /// Log a warning when a sampled tensor flushes more than this fraction of its non-zero
    /// values to zero (statistics steps only; 1 = never).
    pub warn_underflow: f64,
    /// Log a warning when a sampled tensor saturates more than this fraction of its values
    /// (statistics steps only; 1 = never).
    pub warn_saturation: f64,
    /// The LM head: `f32` (default, the paper's) or `bf16` (in any mode).
    pub head: HeadPrecision,
    /// A LoRA job's frozen FP8 projection weights: `f32` (default) or `fp8` (stored as their
    /// FP8 cast). Read by the trainer; the decorator computes from whichever it is given.
    pub base_storage: BaseStorage,
}

impl Default for Fp8Policy {
    /// FP8-AMAX with the paper's settings.
    fn default() -> Self {
        Self {
            mode: Precision::Fp8Amax,
            family: Fp8Family::Graphcore,
            cscale_bias: 0,
            amax_history_len: DEFAULT_AMAX_HISTORY_LEN,
            amax_compute_algo: AmaxCompute::Max,
            weight_margin: 0,
            activation_margin: 0,
            gradient_margin: DEFAULT_GRADIENT_MARGIN,
            layers: LayerFilter::all(),
            stats_every: 0,
            cache_weights: true,
            warn_underflow: DEFAULT_WARN_UNDERFLOW,
            warn_saturation: DEFAULT_WARN_SATURATION,
            head: HeadPrecision::F32,
            base_storage: BaseStorage::F32,
        }
    }
}

impl Fp8Policy {
    /// FP8 off.
    pub fn off() -> Self {
        Self::with_mode(Precision::Fp32)
    }

    /// FP8-AMAX with the paper's defaults: Graphcore formats, margins 0 / 0 / 3.
    pub fn amax() -> Self {
        Self::default()
    }

    /// FP8-CSCALE with one bias for every tensor.
    pub fn cscale(bias: i32) -> Self {
        Self {
            cscale_bias: bias,
            ..Self::with_mode(Precision::Fp8Cscale)
        }
    }

    /// The defaults of `mode`.
    pub fn with_mode(mode: Precision) -> Self {
        Self {
            mode,
            ..Self::default()
        }
    }

    /// The same policy with another family.
    pub fn with_family(self, family: Fp8Family) -> Self {
        Self { family, ..self }
    }

    /// Whether the linear ops are cast at all (to FP8, or to bf16 under `bf16`): whether the
    /// layer filter's layers get sites.
    pub fn is_on(&self) -> bool {
        self.mode != Precision::Fp32
    }

    /// Whether the linear ops are cast to FP8 (every mode but `fp32` and `bf16`): whether there
    /// are FP8 statistics, scales and amax histories.
    pub fn is_fp8(&self) -> bool {
        self.is_on() && self.mode != Precision::Bf16
    }

    /// Whether step `step` (1-based) samples FP8 statistics.
    pub fn samples_stats_at(&self, step: u64) -> bool {
        self.is_fp8() && self.stats_every > 0 && step.is_multiple_of(self.stats_every)
    }

    /// The format and bias rule for a tensor of `role`; `None` when FP8 is off. Under
    /// `fp8-delayed` the rule is that of a tensor with no history yet (its own amax).
    pub fn rule_for(&self, role: Role) -> Option<(Fp8Format, BiasRule)> {
        let margin = self.margin(role);
        let rule = match self.mode {
            Precision::Fp32 | Precision::Bf16 => return None,
            Precision::Fp8Amax | Precision::Fp8Delayed => BiasRule::Amax { margin },
            Precision::Fp8Cscale => BiasRule::Constant(self.cscale_bias),
        };
        Some((self.family.format_for(role), rule))
    }

    /// The margin of tensors of `role`.
    pub fn margin(&self, role: Role) -> i32 {
        match role {
            Role::Weight => self.weight_margin,
            Role::Activation => self.activation_margin,
            Role::Gradient => self.gradient_margin,
        }
    }

    /// Checks what serde cannot: returns the offending field and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.amax_history_len == 0 {
            return Err(("amax_history_len", "must be at least 1".to_string()));
        }
        for (field, v) in [
            ("warn_underflow", self.warn_underflow),
            ("warn_saturation", self.warn_saturation),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err((field, format!("{v} is not a fraction in 0 ..= 1")));
            }
        }
        if !(-MAX_BIAS..=MAX_BIAS).contains(&self.cscale_bias) {
            return Err((
                "cscale_bias",
                format!(
                    "{} is outside -{MAX_BIAS} ..= {MAX_BIAS} (scales 2^-31 ..= 2^31)",
                    self.cscale_bias
                ),
            ));
        }
        Ok(())
    }
}

/// Glob patterns choosing the FP8 layers by name; serialised as a list of strings.
///
/// `*` matches any run of characters (dots included): `*` is every layer, `h.*.mlp.*` both MLP
/// projections of every GPT-2 block, `h.0.*` every projection of the first. A pattern starting
/// with `!` excludes. A layer is FP8 when some include pattern matches it and no exclude does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct LayerFilter {
    include: Vec<String>,
    exclude: Vec<String>,
}

/// A layer filter pattern that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayerFilterError {
    /// A pattern that names no layer of the model: almost always a typo, which would silently
    /// leave layers in f32.
    #[error("layer filter pattern `{pattern}` matches no FP8 layer of this model ({hint})")]
    NoMatch {
        /// The pattern.
        pattern: String,
        /// What the names look like (from the model).
        hint: String,
    },
    /// An empty pattern (or a lone `!`).
    #[error("empty layer filter pattern (use `*` for every layer)")]
    Empty,
}

impl Default for LayerFilter {
    /// Every layer (the paper's setting).
    fn default() -> Self {
        Self::all()
    }
}

impl LayerFilter {
    /// Every layer.
    pub fn all() -> Self {
        Self {
            include: vec!["*".into()],
            exclude: vec![],
        }
    }

    /// No layer.
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

    /// Whether the layer with this name is FP8.
    pub fn matches(&self, name: &str) -> bool {
        self.include.iter().any(|p| glob(p, name)) && !self.exclude.iter().any(|p| glob(p, name))
    }

    /// Checks the filter against a model's layer names: every pattern must match one of them.
    /// `hint` says what the names look like, for the error.
    pub fn check<S: AsRef<str>>(&self, names: &[S], hint: &str) -> Result<(), LayerFilterError> {
        for pattern in self.include.iter().chain(&self.exclude) {
            if !names.iter().any(|name| glob(pattern, name.as_ref())) {
                return Err(LayerFilterError::NoMatch {
                    pattern: pattern.clone(),
                    hint: hint.to_string(),
                });
            }
        }
        Ok(())
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
    // Two-pointer wildcard match, backtracking to the last star.
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
    fn policy_rules() {
        let p = Fp8Policy::amax();
        assert_eq!(
            p.rule_for(Role::Gradient),
            Some((Fp8Format::E5M2Fnuz, BiasRule::Amax { margin: 3 }))
        );
        assert_eq!(
            p.clone().with_family(Fp8Family::Ocp).rule_for(Role::Weight),
            Some((Fp8Format::E4M3Fn, BiasRule::Amax { margin: 0 }))
        );
        assert_eq!(Fp8Policy::off().rule_for(Role::Weight), None);
        assert_eq!(
            Fp8Policy::cscale(4).rule_for(Role::Activation),
            Some((Fp8Format::E4M3Fnuz, BiasRule::Constant(4)))
        );
        assert!("fp16".parse::<Precision>().is_err());
        assert_eq!("fp8-cscale".parse::<Precision>(), Ok(Precision::Fp8Cscale));
        assert_eq!("bf16".parse::<Precision>(), Ok(Precision::Bf16));
        assert_eq!(Precision::Bf16.to_string(), "bf16");
    }

    #[test]
    fn the_config_section_deserializes_with_defaults_and_rejects_unknown_keys() {
        let p: Fp8Policy = serde_json::from_str(
            r#"{"mode": "fp8-cscale", "cscale_bias": 4,
            "family": "ocp", "layers": ["h.*.mlp.*", "!h.0.*"]}"#,
        )
        .unwrap();
        assert_eq!(
            p.rule_for(Role::Gradient),
            Some((Fp8Format::E5M2, BiasRule::Constant(4)))
        );
        assert!(p.layers.matches("h.1.mlp.c_fc") && !p.layers.matches("h.0.mlp.c_fc"));
        let default: Fp8Policy = serde_json::from_str("{}").unwrap();
        assert_eq!(default, Fp8Policy::amax());
        let err = serde_json::from_str::<Fp8Policy>(r#"{"gradient_marg": 3}"#).unwrap_err();
        assert!(err.to_string().contains("gradient_marg"), "{err}");
        let err = serde_json::from_str::<Fp8Policy>(r#"{"mode": "fp16"}"#).unwrap_err();
        assert!(err.to_string().contains("fp16"), "{err}");
        assert!(Fp8Policy::cscale(32).validate().is_err());
        let text = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<Fp8Policy>(&text).unwrap(), p);
    }

    #[test]
    fn stats_are_sampled_every_n_steps_only_with_fp8_on() {
        let p = Fp8Policy {
            stats_every: 3,
            ..Fp8Policy::amax()
        };
        let sampled: Vec<u64> = (1..=9).filter(|&s| p.samples_stats_at(s)).collect();
        assert_eq!(sampled, [3, 6, 9]);
        let off = Fp8Policy {
            stats_every: 3,
            ..Fp8Policy::off()
        };
        assert!(!(1..=9).any(|s| off.samples_stats_at(s)));
    }

    #[test]
    fn glob_matches_layer_names() {
        assert!(glob("*", "h.0.attn.c_attn"));
        assert!(glob("h.*.mlp.*", "h.11.mlp.c_proj"));
        assert!(!glob("h.*.mlp.*", "h.11.attn.c_proj"));
        assert!(glob("h.*.attn.c_attn", "h.3.attn.c_attn"));
        assert!(!glob("h.1.*", "h.10.mlp.c_fc"));
        assert!(glob("h.1*", "h.10.mlp.c_fc"));
    }

    #[test]
    fn excludes_win_and_patterns_must_match_something() {
        let names = ["h.0.mlp.c_fc", "h.1.mlp.c_fc", "h.1.attn.c_attn"];
        let filter = LayerFilter::parse("h.*.mlp.*,!h.0.*").unwrap();
        let on: Vec<&str> = names.into_iter().filter(|n| filter.matches(n)).collect();
        assert_eq!(on, ["h.1.mlp.c_fc"]);
        assert_eq!(filter.to_string(), "h.*.mlp.*,!h.0.*");
        assert!(filter.check(&names, "").is_ok());
        let typo = LayerFilter::parse("h.*.mlp.c_fcc").unwrap();
        assert!(matches!(
            typo.check(&names, "h.N.mlp.c_fc"),
            Err(LayerFilterError::NoMatch { .. })
        ));
        assert_eq!(
            LayerFilter::parse("*,").unwrap_err(),
            LayerFilterError::Empty
        );
        let none = LayerFilter::none();
        assert!(!names.iter().any(|n| none.matches(n)));
    }
}
