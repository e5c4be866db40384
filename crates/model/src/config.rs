//! Model and training configuration: presets, TOML parsing with key-naming errors, validation,
//! schedules (temperature, learning rate) and the list of every parameter tensor.
//!
//! # The TOML file (`vffn train --config F.toml`)
//!
//! ```toml
//! preset = "tiny"        # optional base: "tiny" (the default) or "small"
//!
//! [model]                # overrides of the preset; every key optional
//! block = "versatile"    # dense | kloop | moe | versatile
//! d_model = 192
//!
//! [train]                # optional; overrides of the default recipe
//! steps = 4000
//! lr = 3e-4
//! ```
//!
//! The preset is applied first and the `[model]` keys override it; `[train]` keys override
//! [`TrainConfig::default`]. Unknown keys anywhere are errors naming the key, as are values of
//! the wrong type or out of range (`model.d_model: ...`).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use thiserror::Error;

mod validate;

/// Errors from parsing or validating a configuration. Every variant names the offending key.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ConfigError {
    /// The text is not valid TOML (or JSON for [`Config::from_json`]).
    #[error("config is not valid {format}: {message}")]
    Syntax { format: &'static str, message: String },
    /// A key that no configuration field has.
    #[error("unknown key `{key}` ({hint})")]
    UnknownKey { key: String, hint: String },
    /// A value of the wrong type for its key (e.g. a string for `model.d_model`).
    #[error("`{key}`: {message}")]
    InvalidValue { key: String, message: String },
    /// A value of the right type that breaks a constraint (e.g. `d_model % n_heads != 0`).
    #[error("`{key}` = {value}: {reason}")]
    Constraint { key: String, value: String, reason: String },
    /// `preset = "..."` names no preset.
    #[error("`preset`: unknown preset `{0}` (expected `tiny` or `small`)")]
    UnknownPreset(String),
}

/// Which feed-forward block every layer uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockKind {
    /// One SwiGLU FFN per layer.
    Dense,
    /// The same FFN applied `max_depth` times (residual loop), no routing.
    Kloop,
    /// A shared FFN plus `n_experts` routed experts of width `hidden / n_experts`, top-k.
    Moe,
    /// VersatileFFN: width path (virtual sub-experts of the shared FFN) + depth path (loops).
    Versatile,
}

/// Which VersatileFFN pathways are active (the paper's ablation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Paths {
    Both,
    Width,
    Depth,
}

/// The Gumbel noise of the depth router's training pick (issue 19: an opt-in remedy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DepthNoise {
    /// The paper's hard Gumbel-softmax: the pick is argmax(logits + g), g ~ Gumbel(0, 1),
    /// whatever the temperature τ.
    Unit,
    /// Noise scaled by the temperature: argmax(logits + τ·g), i.e. a draw from
    /// softmax(logits/τ) (soft sample softmax(logits/τ + g) for the straight-through gradient),
    /// so the pick sharpens toward the noise-free argmax as τ decays.
    Scaled,
}

/// How the two VersatileFFN pathways are combined (the paper's ablation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fusion {
    /// Difficulty-aware gate derived from the chosen loop count.
    Gated,
    /// Plain average of the two pathways.
    Average,
}

impl Fusion {
    /// The paper's difficulty-aware fusion weight of the width path (the fusion formula of
    /// VersatileFFN): λ = (D − ℓ)/D = 1 − ℓ/D for a token that loops ℓ of at most D times, so that
    /// out = (1 − λ)·out_d + λ·out_w; `Average` is λ = 1/2. `loops` may be a mean ℓ (λ is linear
    /// in ℓ). In f32 for the forward passes, in f64 for statistics, with the same arithmetic.
    pub fn lambda<F>(self, loops: F, max_depth: F) -> F
    where
        F: From<f32> + std::ops::Sub<Output = F> + std::ops::Div<Output = F>,
    {
        match self {
            Fusion::Gated => F::from(1.0) - loops / max_depth,
            Fusion::Average => F::from(0.5),
        }
    }
}

/// The model architecture (and the batch shape it is trained with).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Token vocabulary; 256 for the byte-level models.
    pub vocab_size: usize,
    pub d_model: usize,
    pub n_heads: usize,
    pub n_layers: usize,
    /// SwiGLU value width h: `ff_proj` has 2h rows (value | gate), `ff_out` has h columns.
    pub hidden: usize,
    pub block: BlockKind,
    /// Number of (virtual or real) experts E.
    pub n_experts: usize,
    /// Experts chosen per token.
    pub top_k: usize,
    /// Maximum loop count D of the depth path; the fixed loop count of `kloop`.
    pub max_depth: usize,
    pub paths: Paths,
    pub fusion: Fusion,
    /// Width-only versatile (`paths = "width"`): keep the whole FFN active beside the routed
    /// virtual experts, out = x + FFN(z) + Σ_k g_k·FFN_k(z) — the paper's "one shared expert"
    /// read as the MoE baseline's shared FFN; it adds no parameters (the virtual experts are
    /// slices of that same FFN). Unset = on for `paths = "width"`, off otherwise; `true` is
    /// valid only with `block = "versatile"` and `paths = "width"`. Checkpoints written before
    /// the key existed read as `false` ([`Config::from_json`]); unset is `null` in JSON and
    /// absent in TOML.
    pub shared_expert: Option<bool>,
    /// Noise of the depth router's training pick; `unit` is the paper's method.
    pub depth_noise: DepthNoise,
    pub rope_theta: f32,
    pub norm_eps: f32,
    /// Standard deviation of the truncated-normal weight init.
    pub init_std: f32,
    /// Gumbel-softmax temperature of the depth predictor at step 0 ...
    pub temperature_start: f32,
    /// ... decayed exponentially to this floor.
    pub temperature_end: f32,
    /// Weight of the load-balancing loss of the expert router.
    pub balance_loss_coef: f32,
    /// Training context length T.
    pub seq_len: usize,
    /// Sequences per training batch B.
    pub batch_size: usize,
}

/// The keys of `[model]`, in declaration order (a test checks this against serde).
pub const MODEL_KEYS: &[&str] = &[
    "vocab_size",
    "d_model",
    "n_heads",
    "n_layers",
    "hidden",
    "block",
    "n_experts",
    "top_k",
    "max_depth",
    "paths",
    "fusion",
    "shared_expert",
    "depth_noise",
    "rope_theta",
    "norm_eps",
    "init_std",
    "temperature_start",
    "temperature_end",
    "balance_loss_coef",
    "seq_len",
    "batch_size",
];

impl Default for Config {
    /// The `tiny` preset with VersatileFFN blocks and the paper's hyper-parameters.
    fn default() -> Self {
        Config {
            vocab_size: 256,
            d_model: 128,
            n_heads: 4,
            n_layers: 4,
            hidden: 512,
            block: BlockKind::Versatile,
            n_experts: 8,
            top_k: 2,
            max_depth: 4,
            paths: Paths::Both,
            fusion: Fusion::Gated,
            shared_expert: None,
            depth_noise: DepthNoise::Unit,
            rope_theta: 10000.0,
            norm_eps: 1e-6,
            init_std: 0.02,
            temperature_start: 5.0,
            temperature_end: 0.1,
            balance_loss_coef: 1e-5,
            seq_len: 128,
            batch_size: 16,
        }
    }
}

/// Whether a parameter is a weight matrix (decayed) or a norm gain (not decayed, init 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamKind {
    Matrix,
    Norm,
}

/// One parameter tensor of the model: its checkpoint name, row-major shape and kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: ParamKind,
}

impl ParamSpec {
    fn matrix(name: String, rows: usize, cols: usize) -> Self {
        ParamSpec { name, shape: vec![rows, cols], kind: ParamKind::Matrix }
    }

    fn norm(name: String, len: usize) -> Self {
        ParamSpec { name, shape: vec![len], kind: ParamKind::Norm }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// AdamW weight decay applies to matrices only, never to norm gains.
    pub fn decays(&self) -> bool {
        self.kind == ParamKind::Matrix
    }
}

impl Config {
    /// `tiny`: d 128, 4 layers, 4 heads, h 512, seq 128, batch 16 (VersatileFFN blocks).
    pub fn tiny() -> Self {
        Config::default()
    }

    /// `small`: d 256, 6 layers, 8 heads, h 1024, seq 256, batch 16 (VersatileFFN blocks).
    pub fn small() -> Self {
        Config {
            d_model: 256,
            n_layers: 6,
            n_heads: 8,
            hidden: 1024,
            seq_len: 256,
            batch_size: 16,
            ..Config::default()
        }
    }

    /// A preset by name (`tiny` or `small`).
    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        match name {
            "tiny" => Ok(Config::tiny()),
            "small" => Ok(Config::small()),
            other => Err(ConfigError::UnknownPreset(other.to_string())),
        }
    }

    /// Per-head width d_model / n_heads.
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// Width s = hidden / n_experts of one (virtual or real) expert.
    pub fn expert_width(&self) -> usize {
        self.hidden / self.n_experts
    }

    /// Whether the width path keeps the whole FFN beside its routed virtual experts: the
    /// `shared_expert` key, unset meaning on for width-only versatile blocks.
    pub fn has_shared_expert(&self) -> bool {
        let width_only = self.block == BlockKind::Versatile && self.paths == Paths::Width;
        width_only && self.shared_expert.unwrap_or(true)
    }

    /// The Gumbel-softmax temperature at `step` (0-based) of a `total_steps` run
    /// ([`crate::schedule::temperature`] from `temperature_start` to `temperature_end`).
    pub fn temperature_at(&self, step: u64, total_steps: u64, floor_frac: f32) -> f32 {
        let (start, end) = (self.temperature_start, self.temperature_end);
        crate::schedule::temperature(start, end, step, total_steps, floor_frac)
    }

    /// Every parameter tensor of the model, in a stable order, with its checkpoint name.
    ///
    /// Versatile blocks keep both routers whatever `paths` is, so ablation checkpoints share
    /// one layout. MoE blocks keep the shared FFN (`ff_proj`/`ff_out`) and add `n_experts`
    /// routed experts of width s = h/E: together one more FFN's worth of weights.
    pub fn param_specs(&self) -> Vec<ParamSpec> {
        let (d, h, v) = (self.d_model, self.hidden, self.vocab_size);
        let mut specs = vec![ParamSpec::matrix("transformer.wte.weight".into(), v, d)];
        for layer in 0..self.n_layers {
            let p = format!("transformer.blocks.{layer}");
            specs.push(ParamSpec::norm(format!("{p}.attn_norm.weight"), d));
            specs.push(ParamSpec::matrix(format!("{p}.att_proj.weight"), 3 * d, d));
            specs.push(ParamSpec::matrix(format!("{p}.attn_out.weight"), d, d));
            specs.push(ParamSpec::norm(format!("{p}.ff_norm.weight"), d));
            specs.push(ParamSpec::matrix(format!("{p}.ff_proj.weight"), 2 * h, d));
            specs.push(ParamSpec::matrix(format!("{p}.ff_out.weight"), d, h));
            match self.block {
                BlockKind::Dense | BlockKind::Kloop => {}
                BlockKind::Versatile => {
                    let (e, depth) = (self.n_experts, self.max_depth);
                    specs.push(ParamSpec::matrix(format!("{p}.expert_gate.weight"), e, d));
                    specs.push(ParamSpec::matrix(format!("{p}.depth_predictor.weight"), depth, d));
                }
                BlockKind::Moe => {
                    let (e, s) = (self.n_experts, self.expert_width());
                    specs.push(ParamSpec::matrix(format!("{p}.expert_gate.weight"), e, d));
                    for expert in 0..e {
                        let q = format!("{p}.experts.{expert}");
                        specs.push(ParamSpec::matrix(format!("{q}.ff_proj.weight"), 2 * s, d));
                        specs.push(ParamSpec::matrix(format!("{q}.ff_out.weight"), d, s));
                    }
                }
            }
        }
        specs.push(ParamSpec::norm("transformer.ln_f.weight".into(), d));
        specs.push(ParamSpec::matrix("transformer.ff_out.weight".into(), v, d));
        specs
    }

    /// Total number of parameters (sum of [`Config::param_specs`] sizes).
    pub fn num_params(&self) -> usize {
        self.param_specs().iter().map(ParamSpec::numel).sum()
    }

    /// Parses a `[model]`-style TOML table (no section header) over the defaults.
    pub fn from_toml_table_str(text: &str) -> Result<Self, ConfigError> {
        let table = parse_toml(text)?;
        let mut config = Config::default();
        config.apply_table(&table, "model")?;
        Ok(config)
    }

    /// Parses the JSON form stored in checkpoints (all keys required to be known) and validates.
    /// A width-only checkpoint without `shared_expert` predates the key and had no shared
    /// expert: it reads as `false`, not as the width-only default.
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let syntax =
            |e: serde_json::Error| ConfigError::Syntax { format: "JSON", message: e.to_string() };
        let value: serde_json::Value = serde_json::from_str(text).map_err(syntax)?;
        let predates_shared_expert = value.get("shared_expert").is_none();
        let mut config: Config = serde_json::from_value(value).map_err(syntax)?;
        if predates_shared_expert && config.has_shared_expert() {
            config.shared_expert = Some(false);
        }
        config.validate()?;
        Ok(config)
    }

    /// The JSON form stored in checkpoints.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("Config serializes to JSON")
    }

    /// Overrides the keys in `table` (already known to be a `[section]` table), then validates.
    fn apply_table(&mut self, table: &toml::Table, section: &str) -> Result<(), ConfigError> {
        *self = apply_keys(self, table, section, MODEL_KEYS)?;
        self.validate()
    }
}

/// The training recipe (issue 6): AdamW with warmup + cosine decay, clipping, eval cadence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Peak learning rate.
    pub lr: f32,
    /// Linear warmup from lr/warmup_steps to lr over this many steps.
    pub warmup_steps: u64,
    /// Cosine decay ends at `min_lr_ratio · lr` on the last step.
    pub min_lr_ratio: f32,
    /// AdamW decoupled weight decay (matrices only, not norm gains).
    pub weight_decay: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// Global gradient-norm clip; 0 disables clipping.
    pub grad_clip: f32,
    /// Planned optimizer steps (the schedules are laid out over this many).
    pub steps: u64,
    /// Evaluate on the validation split every this many steps (and at the last step).
    pub eval_every: u64,
    /// Validation batches per evaluation, taken in order from the start; 0 = the whole split.
    pub eval_batches: u64,
    /// Log a training metrics row every this many steps.
    pub log_every: u64,
    /// Seed of parameter init, data order and Gumbel noise.
    pub seed: u64,
    /// Fraction of `steps` at which the temperature reaches its floor (paper: 0.96).
    pub temperature_floor_frac: f32,
}

/// The keys of `[train]`, in declaration order.
pub const TRAIN_KEYS: &[&str] = &[
    "lr",
    "warmup_steps",
    "min_lr_ratio",
    "weight_decay",
    "beta1",
    "beta2",
    "eps",
    "grad_clip",
    "steps",
    "eval_every",
    "eval_batches",
    "log_every",
    "seed",
    "temperature_floor_frac",
];

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            lr: 1e-3,
            warmup_steps: 100,
            min_lr_ratio: 0.1,
            weight_decay: 0.1,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            grad_clip: 1.0,
            steps: 2000,
            eval_every: 200,
            eval_batches: 20,
            log_every: 10,
            seed: 1337,
            temperature_floor_frac: 0.96,
        }
    }
}

impl TrainConfig {
    /// Learning rate at `step` (0-based) of this recipe ([`crate::schedule::learning_rate`]).
    pub fn lr_at(&self, step: u64) -> f32 {
        crate::schedule::learning_rate(
            self.lr,
            self.warmup_steps,
            self.min_lr_ratio,
            self.steps,
            step,
        )
    }
}

/// A whole run's configuration: the model and the recipe (the TOML file's two tables).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub model: Config,
    pub train: TrainConfig,
}

impl RunConfig {
    /// Parses a config file: optional top-level `preset`, a `[model]` table, an optional
    /// `[train]` table. Missing keys keep the preset's / recipe's defaults.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let table = parse_toml(text)?;
        for key in table.keys() {
            if !["preset", "model", "train"].contains(&key.as_str()) {
                return Err(ConfigError::UnknownKey {
                    key: key.clone(),
                    hint: "expected `preset`, `[model]` or `[train]`".into(),
                });
            }
        }
        let mut model = match table.get("preset") {
            None => Config::default(),
            Some(toml::Value::String(name)) => Config::preset(name)?,
            Some(other) => {
                return Err(ConfigError::InvalidValue {
                    key: "preset".into(),
                    message: format!("expected a string, found {}", other.type_str()),
                })
            }
        };
        let mut train = TrainConfig::default();
        for (section, keys) in [("model", MODEL_KEYS), ("train", TRAIN_KEYS)] {
            let sub = match table.get(section) {
                None => continue,
                Some(toml::Value::Table(sub)) => sub,
                Some(other) => {
                    return Err(ConfigError::InvalidValue {
                        key: section.into(),
                        message: format!("expected a table, found {}", other.type_str()),
                    })
                }
            };
            if section == "model" {
                model = apply_keys(&model, sub, section, keys)?;
            } else {
                train = apply_keys(&train, sub, section, keys)?;
            }
        }
        let run = RunConfig { model, train };
        run.validate()?;
        Ok(run)
    }

    /// The TOML form (`[model]` and `[train]` with every key), parseable by [`Self::from_toml`].
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("RunConfig serializes to TOML")
    }

    /// Validates both tables.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.model.validate()?;
        self.train.validate()
    }

    /// Sets one key from a command-line override such as `model.block=moe`, `train.lr=3e-4` or
    /// bare `steps=500` (a bare key is looked up in `[model]` then `[train]`). The value is read
    /// as a TOML value, or as a string if it is not one (so `block=moe` works unquoted).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let (section, field) = match key.split_once('.') {
            Some((section, field)) => (section, field),
            None if MODEL_KEYS.contains(&key) => ("model", key),
            None if TRAIN_KEYS.contains(&key) => ("train", key),
            None => ("model", key),
        };
        let parsed: toml::Value =
            value.parse().unwrap_or_else(|_| toml::Value::String(value.to_string()));
        let mut one = toml::Table::new();
        one.insert(field.to_string(), parsed);
        match section {
            "model" => self.model = apply_keys(&self.model, &one, "model", MODEL_KEYS)?,
            "train" => self.train = apply_keys(&self.train, &one, "train", TRAIN_KEYS)?,
            _ => {
                return Err(ConfigError::UnknownKey {
                    key: key.to_string(),
                    hint: "expected `model.<key>`, `train.<key>` or a bare key".into(),
                })
            }
        }
        self.validate()
    }

    /// The temperature schedule of this run at `step`.
    pub fn temperature_at(&self, step: u64) -> f32 {
        self.model.temperature_at(step, self.train.steps, self.train.temperature_floor_frac)
    }
}

fn parse_toml(text: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Syntax { format: "TOML", message: e.to_string() })
}

/// Overrides `base` with the keys of `table`; each key is checked on its own first so that an
/// error names it (serde's own message on a merged table would not always say which key).
fn apply_keys<T>(
    base: &T,
    table: &toml::Table,
    section: &str,
    known: &[&str],
) -> Result<T, ConfigError>
where
    T: Serialize + for<'de> Deserialize<'de> + Default,
{
    let mut merged = toml::Table::try_from(base).expect("config serializes to a TOML table");
    for (key, value) in table {
        if !known.contains(&key.as_str()) {
            return Err(ConfigError::UnknownKey {
                key: format!("{section}.{key}"),
                hint: suggestion_list(key, known),
            });
        }
        let mut one = toml::Table::new();
        one.insert(key.clone(), value.clone());
        if let Err(err) = one.try_into::<T>() {
            return Err(ConfigError::InvalidValue {
                key: format!("{section}.{key}"),
                message: err.message().trim().to_string(),
            });
        }
        merged.insert(key.clone(), value.clone());
    }
    merged.try_into::<T>().map_err(|err| ConfigError::InvalidValue {
        key: section.to_string(),
        message: err.message().trim().to_string(),
    })
}

/// "did you mean `x`?" first when a known key is close, then the full list.
fn suggestion_list(key: &str, known: &[&str]) -> String {
    let closest = known
        .iter()
        .map(|k| (edit_distance(key, k), *k))
        .min()
        .filter(|(distance, _)| *distance <= 2.max(key.len() / 3));
    let all: BTreeSet<&str> = known.iter().copied().collect();
    let list = all.into_iter().collect::<Vec<_>>().join(", ");
    match closest {
        Some((_, k)) => format!("did you mean `{k}`? known keys: {list}"),
        None => format!("known keys: {list}"),
    }
}

/// Levenshtein distance over bytes (keys are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, &ca) in a.iter().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != cb);
            current[j + 1] = substitute.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests;
