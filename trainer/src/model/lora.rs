//! LoRA adapters (Hu et al., 2021) on the projections, configured as PEFT's `LoraConfig` and
//! saved as PEFT saves them, so that `peft.PeftModel.from_pretrained(base, folder)` loads what
//! we train and we load what PEFT trains.
//!
//! An adapted projection computes `y = base(x) + (dropout(x) @ A^T @ B^T) * scaling`, with `A`
//! `[r, d_input]` (PEFT's `lora_A.weight`), `B` `[d_output, r]` (`lora_B.weight`) and `scaling`
//! `lora_alpha / r` (`lora_alpha / sqrt(r)` with `use_rslora`), in that order of operations, as
//! PEFT's `lora.Linear.forward`. The base path is the projection as it would be without the
//! adapter (FP8 under the job's policy, or f32); the adapter path is f32. The base is frozen:
//! its parameters take no gradient and get no AdamW moments (the FP8 linear then skips its
//! dW GEMM). Fresh adapters start as PEFT's default (`init_lora_weights=True`): `A` uniform in
//! +-1/sqrt(d_input) (kaiming-uniform with a = sqrt(5)), `B` zero, so training starts from the
//! base model's own outputs.
//!
//! An adapter folder holds `adapter_config.json` and `adapter_model.safetensors` (tensors
//! `base_model.model.{module}.lora_A.weight` / `.lora_B.weight`); `base_model_name_or_path`
//! names the base checkpoint folder (a relative path is looked up from the working directory,
//! then from the adapter folder).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// The job's `lora` section: PEFT's `LoraConfig` fields that shape the adapters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank of the adapters (at least 1).
    pub r: usize,
    /// `scaling = lora_alpha / r` (PEFT's default 8).
    #[serde(default = "default_alpha")]
    pub lora_alpha: f64,
    /// Dropout on the adapter's input while training, in [0, 1) (PEFT's default 0).
    #[serde(default)]
    pub lora_dropout: f64,
    /// The projections to adapt: module names (a projection matches a name equal to its own
    /// module name or to a dot-separated suffix of it, as in PEFT: `q_proj`, `c_attn`,
    /// `layers.0.self_attn.q_proj`), or `"all-linear"` (every projection; the LM head is never
    /// adapted). Default: PEFT's for the family (GPT-2 `["c_attn"]`, Llama `["q_proj",
    /// "v_proj"]`).
    #[serde(default)]
    pub target_modules: Option<TargetModules>,
    /// `scaling = lora_alpha / sqrt(r)` (rank-stabilised LoRA, Kalajdzievski 2023).
    #[serde(default)]
    pub use_rslora: bool,
}

fn default_alpha() -> f64 {
    8.0
}

/// `target_modules`: names, or every projection.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetModules {
    Names(Vec<String>),
    AllLinear,
}

impl Serialize for TargetModules {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Names(names) => names.serialize(s),
            Self::AllLinear => s.serialize_str(ALL_LINEAR),
        }
    }
}

impl<'de> Deserialize<'de> for TargetModules {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        match Value::deserialize(d)? {
            Value::String(s) if s == ALL_LINEAR => Ok(Self::AllLinear),
            Value::String(s) => Err(D::Error::custom(format!(
                "`{s}`: a single string must be \"{ALL_LINEAR}\" (PEFT's regular expressions \
                 are not supported here: give a list of module names)"
            ))),
            Value::Array(items) => items
                .into_iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s),
                    other => Err(D::Error::custom(format!(
                        "holds {other}, expected module names (strings)"
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Self::Names),
            other => Err(D::Error::custom(format!(
                "is {other}, expected a list of module names or \"{ALL_LINEAR}\""
            ))),
        }
    }
}

/// PEFT's name for "every linear layer but the output layer".
pub const ALL_LINEAR: &str = "all-linear";
/// `adapter_config.json`.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";
/// `adapter_model.safetensors`.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The prefix PEFT gives every tensor of a causal LM's adapter.
pub const PEFT_PREFIX: &str = "base_model.model.";

impl LoraConfig {
    /// The factor of the adapter path.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.lora_alpha / (self.r as f64).sqrt()
        } else {
            self.lora_alpha / self.r as f64
        }
    }

    /// The target names, PEFT's default for the family when none are given.
    pub fn targets(&self, family_default: &[&str]) -> TargetModules {
        self.target_modules.clone().unwrap_or_else(|| {
            TargetModules::Names(family_default.iter().map(|s| s.to_string()).collect())
        })
    }

    /// What is wrong with the settings themselves: (field under `lora.`, message).
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.r == 0 {
            return Some(("r", "must be at least 1".into()));
        }
        if !(self.lora_alpha.is_finite() && self.lora_alpha > 0.0) {
            return Some((
                "lora_alpha",
                format!("is {}, expected a positive number", self.lora_alpha),
            ));
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return Some((
                "lora_dropout",
                format!("is {}, expected a probability in [0, 1)", self.lora_dropout),
            ));
        }
        if let Some(TargetModules::Names(names)) = &self.target_modules {
            if names.is_empty() {
                return Some((
                    "target_modules",
                    format!("is empty; name the projections to adapt, or \"{ALL_LINEAR}\""),
                ));
            }
        }
        None
    }
}

impl LoraConfig {
    /// The first setting in which `other` differs from this one, by its key: `r`,
    /// `lora_alpha`, `lora_dropout`, `use_rslora`, or `target_modules` when the two adapt other
    /// projections among `projections` (each with the family's default targets).
    pub fn first_difference(
        &self,
        other: &LoraConfig,
        projections: &[String],
        family_default: &[&str],
    ) -> Option<&'static str> {
        let adapted = |l: &LoraConfig| -> Vec<&String> {
            let targets = l.targets(family_default);
            projections.iter().filter(|n| targets.matches(n)).collect()
        };
        [
            ("r", self.r != other.r),
            ("lora_alpha", self.lora_alpha != other.lora_alpha),
            ("lora_dropout", self.lora_dropout != other.lora_dropout),
            ("use_rslora", self.use_rslora != other.use_rslora),
            ("target_modules", adapted(self) != adapted(other)),
        ]
        .into_iter()
        .find_map(|(key, differs)| differs.then_some(key))
    }
}

impl TargetModules {
    /// Whether the projection `module` (its Hugging Face module name) is adapted.
    pub fn matches(&self, module: &str) -> bool {
        match self {
            Self::AllLinear => true,
            Self::Names(names) => names.iter().any(|n| name_matches(n, module)),
        }
    }

    /// The first name that matches none of `modules`.
    pub fn unmatched<'a>(&'a self, modules: &[String]) -> Option<&'a str> {
        match self {
            Self::AllLinear => None,
            Self::Names(names) => names
                .iter()
                .find(|n| !modules.iter().any(|m| name_matches(n, m)))
                .map(String::as_str),
        }
    }
}

/// PEFT's rule: the module's name is the target or ends with `.target`. Our GPT-2 projection
/// names lack the `transformer.` prefix of its parameter names, so a target may carry it.
fn name_matches(target: &str, module: &str) -> bool {
    let target = target.strip_prefix("transformer.").unwrap_or(target);
    module == target || module.ends_with(&format!(".{target}"))
}

/// Whether a parameter (our name) belongs to an adapter.
pub fn is_adapter_param(name: &str) -> bool {
    name.contains(".lora_a.") || name.contains(".lora_b.")
}

/// PEFT's tensor name of an adapter parameter (ours `{module}.lora_a.weight`).
pub fn peft_name(name: &str) -> String {
    let name = name
        .replace(".lora_a.", ".lora_A.")
        .replace(".lora_b.", ".lora_B.");
    format!("{PEFT_PREFIX}{name}")
}

/// Our name of a PEFT adapter tensor (`None` for a name that is not one).
pub fn our_name(peft: &str) -> Option<String> {
    let name = peft.strip_prefix(PEFT_PREFIX)?;
    let name = name
        .replace(".lora_A.", ".lora_a.")
        .replace(".lora_B.", ".lora_b.");
    is_adapter_param(&name).then_some(name)
}

/// The initial `A` of a fresh adapter: PEFT's kaiming-uniform (a = sqrt(5)), uniform in
/// +-1/sqrt(d_input), drawn from `seed` and the parameter's name alone (the same values on
/// every device and in every module order).
pub fn initial_a(seed: u64, name: &str, r: usize, d_input: usize) -> Vec<f32> {
    let bound = 1.0 / (d_input as f64).sqrt();
    let mut state = seed ^ fnv1a(name.as_bytes());
    (0..r * d_input)
        .map(|_| {
            let bits = splitmix64(&mut state) >> 11; // 53 random bits
            let unit = bits as f64 / (1u64 << 53) as f64; // [0, 1)
            ((2.0 * unit - 1.0) * bound) as f32
        })
        .collect()
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// What an adapter folder's `adapter_config.json` says (the fields that shape the adapter).
#[derive(Clone, Debug, PartialEq)]
pub struct AdapterConfig {
    pub lora: LoraConfig,
    /// `base_model_name_or_path`, as written.
    pub base: Option<String>,
}

/// Whether `dir` is an adapter folder (an `adapter_config.json` and no `config.json`).
pub fn is_adapter_dir(dir: &Path) -> bool {
    dir.join(ADAPTER_CONFIG_FILE).is_file() && !dir.join(crate::checkpoint::CONFIG_FILE).exists()
}

/// Reads `DIR/adapter_config.json`: a LoRA adapter (`peft_type` `LORA`) without the PEFT
/// options we do not implement (errors name the key).
pub fn read_adapter_config(dir: &Path) -> Result<AdapterConfig, (PathBuf, String)> {
    let path = dir.join(ADAPTER_CONFIG_FILE);
    let err = |m: String| (path.clone(), m);
    let text =
        datasets::input::read_text_limited(&path, datasets::input::CONFIG_LIMIT, "adapter config")
            .map_err(|e| err(e.to_string()))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| err(format!("not JSON: {e}")))?;
    let Some(object) = value.as_object() else {
        return Err(err("is not a JSON object".into()));
    };
    let get = |key: &str| object.get(key).filter(|v| !v.is_null());
    match get("peft_type").and_then(Value::as_str) {
        Some("LORA") => {}
        other => {
            return Err(err(format!(
                "`peft_type` is {}, expected \"LORA\" (the only adapter type read here)",
                other.map_or("absent".to_string(), |s| format!("\"{s}\""))
            )))
        }
    }
    // PEFT options that change the computation, which this reader does not implement: each
    // must be absent or at its default.
    let unsupported: [(&str, Value); 13] = [
        ("use_dora", Value::Bool(false)),
        ("lora_bias", Value::Bool(false)),
        ("bias", Value::String("none".into())),
        ("modules_to_save", Value::Null),
        ("rank_pattern", Value::Object(Default::default())),
        ("alpha_pattern", Value::Object(Default::default())),
        ("layers_to_transform", Value::Null),
        ("exclude_modules", Value::Null),
        ("layer_replication", Value::Null),
        ("target_parameters", Value::Null),
        ("trainable_token_indices", Value::Null),
        ("use_qalora", Value::Bool(false)),
        ("use_bdlora", Value::Bool(false)),
    ];
    for (key, default) in unsupported {
        // (`get` reads null as absent.)
        if let Some(v) = get(key) {
            if *v != default && !(v.is_array() && v.as_array().is_some_and(Vec::is_empty)) {
                return Err(err(format!(
                    "`{key}` is {v}: only plain LoRA adapters are read here ({key} = {default})"
                )));
            }
        }
    }
    let number = |key: &str| get(key).and_then(Value::as_f64);
    let r = get("r")
        .and_then(Value::as_u64)
        .filter(|&r| r >= 1)
        .ok_or_else(|| err("`r` must be a positive integer".into()))?;
    let target_modules = match get("target_modules") {
        None => None,
        Some(v) => Some(
            serde_json::from_value::<TargetModules>(v.clone())
                .map_err(|e| err(format!("`target_modules` {e}")))?,
        ),
    };
    let lora = LoraConfig {
        r: r as usize,
        lora_alpha: number("lora_alpha").unwrap_or_else(default_alpha),
        lora_dropout: number("lora_dropout").unwrap_or(0.0),
        target_modules,
        use_rslora: get("use_rslora").and_then(Value::as_bool).unwrap_or(false),
    };
    if let Some((field, message)) = lora.problem() {
        return Err(err(format!("`{field}` {message}")));
    }
    Ok(AdapterConfig {
        lora,
        base: get("base_model_name_or_path")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// The base checkpoint folder an adapter names: `base_model_name_or_path` as a path, from the
/// working directory, else from the adapter folder.
pub fn base_dir(adapter_dir: &Path, config: &AdapterConfig) -> Result<PathBuf, (PathBuf, String)> {
    let path = adapter_dir.join(ADAPTER_CONFIG_FILE);
    let Some(base) = &config.base else {
        return Err((
            path,
            "has no `base_model_name_or_path`: the base checkpoint this adapter was trained on \
             is unknown (merge it with its base where that is known, or set the field to the \
             base's folder)"
                .into(),
        ));
    };
    let given = PathBuf::from(base);
    let candidates = [given.clone(), adapter_dir.join(&given)];
    candidates
        .into_iter()
        .find(|p| p.join(crate::checkpoint::CONFIG_FILE).is_file())
        .ok_or_else(|| {
            (
                path,
                format!(
                    "`base_model_name_or_path` is \"{base}\", which is no checkpoint folder \
                     (config.json) from the working directory or from the adapter folder; \
                     download the base model there, or set the field to its folder"
                ),
            )
        })
}

/// Where a checkpoint folder's tokenizer files are: the folder itself, or for an adapter folder
/// without them (PEFT saves none), its base's.
pub fn tokenizer_dir(dir: &Path) -> PathBuf {
    let has_tokenizer = ["tokenizer.json", "tokenizer_config.json", "vocab.json"]
        .iter()
        .any(|f| dir.join(f).is_file());
    if is_adapter_dir(dir) && !has_tokenizer {
        if let Ok(base) = read_adapter_config(dir).and_then(|c| base_dir(dir, &c)) {
            return base;
        }
    }
    dir.to_path_buf()
}

/// `adapter_config.json` for an adapter trained here: PEFT's keys (`peft_type`, `task_type`,
/// the LoRA settings, `base_model_name_or_path`, `fan_in_fan_out` for GPT-2's Conv1D layers).
pub fn adapter_config_json(
    config: &LoraConfig,
    targets: &TargetModules,
    base: Option<&str>,
    fan_in_fan_out: bool,
) -> Value {
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": config.r,
        "lora_alpha": config.lora_alpha,
        "lora_dropout": config.lora_dropout,
        "target_modules": targets,
        "use_rslora": config.use_rslora,
        "fan_in_fan_out": fan_in_fan_out,
        "bias": "none",
        "use_dora": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "modules_to_save": null,
        "revision": null,
        "library_name": "fp8-trainer",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_match_as_peft_matches_them() {
        let t = TargetModules::Names(vec!["c_proj".into(), "layers.1.self_attn.q_proj".into()]);
        assert!(t.matches("h.0.attn.c_proj"));
        assert!(t.matches("h.0.mlp.c_proj"));
        assert!(!t.matches("h.0.attn.c_attn"));
        assert!(t.matches("model.layers.1.self_attn.q_proj"));
        assert!(!t.matches("model.layers.11.self_attn.q_proj"));
        assert!(!t.matches("model.layers.0.self_attn.q_proj"));
        let gpt2 = TargetModules::Names(vec!["transformer.h.1.mlp.c_fc".into()]);
        assert!(gpt2.matches("h.1.mlp.c_fc"));
        assert_eq!(
            t.unmatched(&["h.0.attn.c_proj".into()]),
            Some("layers.1.self_attn.q_proj")
        );
    }

    #[test]
    fn names_map_to_peft_and_back() {
        let ours = "model.layers.3.mlp.down_proj.lora_a.weight";
        let peft = peft_name(ours);
        assert_eq!(
            peft,
            "base_model.model.model.layers.3.mlp.down_proj.lora_A.weight"
        );
        assert_eq!(our_name(&peft).as_deref(), Some(ours));
        assert_eq!(our_name("base_model.model.model.norm.weight"), None);
        assert_eq!(our_name("model.layers.3.mlp.down_proj.lora_A.weight"), None);
    }

    #[test]
    fn initial_a_is_bounded_seeded_and_spread() {
        let a = initial_a(7, "h.0.attn.c_attn.lora_a.weight", 4, 64);
        let bound = 1.0 / 8.0;
        assert!(a.iter().all(|v| v.abs() <= bound));
        let mean_abs = a.iter().map(|v| f64::from(v.abs())).sum::<f64>() / a.len() as f64;
        // Uniform in +-b has mean |x| = b/2.
        assert!((mean_abs - bound as f64 / 2.0).abs() < 0.02, "{mean_abs}");
        assert_eq!(a, initial_a(7, "h.0.attn.c_attn.lora_a.weight", 4, 64));
        assert_ne!(a, initial_a(8, "h.0.attn.c_attn.lora_a.weight", 4, 64));
        assert_ne!(a, initial_a(7, "h.1.attn.c_attn.lora_a.weight", 4, 64));
    }

    #[test]
    fn scaling_is_alpha_over_r_or_its_root() {
        let mut c = LoraConfig {
            r: 16,
            lora_alpha: 32.0,
            lora_dropout: 0.0,
            target_modules: None,
            use_rslora: false,
        };
        assert_eq!(c.scaling(), 2.0);
        c.use_rslora = true;
        assert_eq!(c.scaling(), 8.0);
    }
}
