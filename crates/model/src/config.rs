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
    /// The paper's difficulty-aware fusion weight of the width path (section "Adaptive
    /// Fusion"): λ = (D − ℓ)/D = 1 − ℓ/D for a token that loops ℓ of at most D times, so that
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

/// Upper bounds that keep every derived size far from overflow (not model-quality limits).
const MAX_WIDTH: usize = 1 << 16;
const MAX_VOCAB: usize = 1 << 20;
const MAX_COUNT: usize = 1 << 10;
const MAX_SEQ: usize = 1 << 20;

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

    /// Checks every constraint; the error names the first key that breaks one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |key: &str, value: String, reason: &str| {
            Err(ConfigError::Constraint {
                key: format!("model.{key}"),
                value,
                reason: reason.to_string(),
            })
        };
        let sizes = [
            ("vocab_size", self.vocab_size, MAX_VOCAB),
            ("d_model", self.d_model, MAX_WIDTH),
            ("n_heads", self.n_heads, MAX_WIDTH),
            ("n_layers", self.n_layers, MAX_COUNT),
            ("hidden", self.hidden, MAX_WIDTH * 4),
            ("n_experts", self.n_experts, MAX_COUNT),
            ("top_k", self.top_k, MAX_COUNT),
            ("max_depth", self.max_depth, 64),
            ("seq_len", self.seq_len, MAX_SEQ),
            ("batch_size", self.batch_size, MAX_WIDTH),
        ];
        for (key, value, max) in sizes {
            if value == 0 {
                return fail(key, value.to_string(), "must be at least 1");
            }
            if value > max {
                return fail(key, value.to_string(), &format!("must be at most {max}"));
            }
        }
        if !self.d_model.is_multiple_of(self.n_heads) {
            return fail(
                "n_heads",
                self.n_heads.to_string(),
                &format!("must divide d_model = {}", self.d_model),
            );
        }
        if !self.head_dim().is_multiple_of(2) {
            return fail(
                "n_heads",
                self.n_heads.to_string(),
                &format!("head_dim = d_model / n_heads = {} must be even (RoPE)", self.head_dim()),
            );
        }
        if self.top_k > self.n_experts {
            return fail(
                "top_k",
                self.top_k.to_string(),
                &format!("must be at most n_experts = {}", self.n_experts),
            );
        }
        let routed = matches!(self.block, BlockKind::Moe | BlockKind::Versatile);
        if routed && !self.hidden.is_multiple_of(self.n_experts) {
            return fail(
                "hidden",
                self.hidden.to_string(),
                &format!("must be a multiple of n_experts = {} for moe/versatile", self.n_experts),
            );
        }
        let positive = [
            ("rope_theta", self.rope_theta),
            ("norm_eps", self.norm_eps),
            ("init_std", self.init_std),
            ("temperature_start", self.temperature_start),
            ("temperature_end", self.temperature_end),
        ];
        for (key, value) in positive {
            if !(value.is_finite() && value > 0.0) {
                return fail(key, value.to_string(), "must be finite and positive");
            }
        }
        if self.temperature_end > self.temperature_start {
            return fail(
                "temperature_end",
                self.temperature_end.to_string(),
                &format!("must be at most temperature_start = {}", self.temperature_start),
            );
        }
        if self.shared_expert == Some(true) && !self.has_shared_expert() {
            return fail(
                "shared_expert",
                "true".to_string(),
                "needs block = \"versatile\" and paths = \"width\"",
            );
        }
        if !(self.balance_loss_coef.is_finite() && self.balance_loss_coef >= 0.0) {
            return fail(
                "balance_loss_coef",
                self.balance_loss_coef.to_string(),
                "must be finite and non-negative",
            );
        }
        Ok(())
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
    /// Checks every constraint; the error names the first key that breaks one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |key: &str, value: String, reason: &str| {
            Err(ConfigError::Constraint {
                key: format!("train.{key}"),
                value,
                reason: reason.to_string(),
            })
        };
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return fail("lr", self.lr.to_string(), "must be finite and positive");
        }
        let unit_closed = [
            ("min_lr_ratio", self.min_lr_ratio),
            ("temperature_floor_frac", self.temperature_floor_frac),
        ];
        for (key, value) in unit_closed {
            if !(0.0..=1.0).contains(&value) {
                return fail(key, value.to_string(), "must be in [0, 1]");
            }
        }
        for (key, value) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&value) {
                return fail(key, value.to_string(), "must be in [0, 1)");
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return fail("eps", self.eps.to_string(), "must be finite and positive");
        }
        for (key, value) in [("weight_decay", self.weight_decay), ("grad_clip", self.grad_clip)] {
            if !(value.is_finite() && value >= 0.0) {
                return fail(key, value.to_string(), "must be finite and non-negative");
            }
        }
        let counts =
            [("steps", self.steps), ("eval_every", self.eval_every), ("log_every", self.log_every)];
        for (key, value) in counts {
            if value == 0 {
                return fail(key, value.to_string(), "must be at least 1");
            }
        }
        Ok(())
    }

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
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn presets_match_the_issue_and_validate() {
        let tiny = Config::tiny();
        assert_eq!(
            (tiny.d_model, tiny.n_layers, tiny.n_heads, tiny.hidden, tiny.seq_len),
            (128, 4, 4, 512, 128)
        );
        assert_eq!((tiny.batch_size, tiny.vocab_size, tiny.n_experts, tiny.top_k), (16, 256, 8, 2));
        let small = Config::small();
        assert_eq!(
            (small.d_model, small.n_layers, small.n_heads, small.hidden, small.seq_len),
            (256, 6, 8, 1024, 256)
        );
        tiny.validate().unwrap();
        small.validate().unwrap();
        TrainConfig::default().validate().unwrap();
        assert!(matches!(Config::preset("huge"), Err(ConfigError::UnknownPreset(_))));
    }

    #[test]
    fn key_lists_match_serde_fields() {
        // JSON, not TOML: TOML leaves out the unset `shared_expert`.
        let model = serde_json::to_value(Config::default()).unwrap();
        let mut keys: Vec<&str> = model.as_object().unwrap().keys().map(String::as_str).collect();
        let mut expected = MODEL_KEYS.to_vec();
        keys.sort_unstable();
        expected.sort_unstable();
        assert_eq!(keys, expected);
        let train = toml::Table::try_from(TrainConfig::default()).unwrap();
        let mut keys: Vec<&str> = train.keys().map(String::as_str).collect();
        let mut expected = TRAIN_KEYS.to_vec();
        keys.sort_unstable();
        expected.sort_unstable();
        assert_eq!(keys, expected);
    }

    #[test]
    fn toml_file_with_preset_and_overrides() {
        let text = r#"
            preset = "small"
            [model]
            block = "moe"
            d_model = 192
            n_heads = 6
            rope_theta = 500000
            [train]
            steps = 40
            lr = 3e-4
        "#;
        let run = RunConfig::from_toml(text).unwrap();
        assert_eq!(run.model.block, BlockKind::Moe);
        assert_eq!(run.model.d_model, 192);
        assert_eq!(run.model.n_layers, 6, "small preset kept where not overridden");
        assert_eq!(run.model.rope_theta, 500000.0);
        assert_eq!(run.train.steps, 40);
        assert_eq!(run.train.lr, 3e-4);
        assert_eq!(run.train.beta2, 0.95);
        // An empty file is the defaults.
        assert_eq!(RunConfig::from_toml("").unwrap(), RunConfig::default());
    }

    #[test]
    fn toml_round_trip() {
        let mut run = RunConfig::default();
        run.model.block = BlockKind::Kloop;
        run.model.paths = Paths::Depth;
        run.model.fusion = Fusion::Average;
        run.train.seed = u64::MAX >> 2;
        run.train.lr = 7.5e-4;
        let text = run.to_toml();
        assert_eq!(RunConfig::from_toml(&text).unwrap(), run, "{text}");
        let json = run.model.to_json();
        assert_eq!(Config::from_json(&json).unwrap(), run.model);
    }

    #[test]
    fn shared_expert_defaults_on_for_width_only_and_is_validated() {
        let width = RunConfig::from_toml("[model]\npaths = \"width\"\n").unwrap().model;
        assert_eq!(width.shared_expert, None);
        assert!(width.has_shared_expert(), "unset: on for width-only");
        assert!(!Config::tiny().has_shared_expert(), "unset: off for both paths");
        let off = "[model]\npaths = \"width\"\nshared_expert = false\n";
        assert!(!RunConfig::from_toml(off).unwrap().model.has_shared_expert());
        // Set before paths on the command line, the unset default follows paths.
        let mut run = RunConfig::default();
        run.set("paths", "width").unwrap();
        assert!(run.model.has_shared_expert());
        for text in [
            "[model]\nshared_expert = true\n",
            "[model]\nblock = \"moe\"\nshared_expert = true\n",
            "[model]\npaths = \"depth\"\nshared_expert = true\n",
        ] {
            match RunConfig::from_toml(text) {
                Err(ConfigError::Constraint { key, .. }) => assert_eq!(key, "model.shared_expert"),
                other => panic!("{text}: {other:?}"),
            }
        }
        // Checkpoint JSON: unset round-trips as null; a width-only checkpoint from before the
        // key reads as no shared expert, any other keeps the unset default.
        assert_eq!(Config::from_json(&width.to_json()).unwrap(), width);
        let legacy = |c: &Config| c.to_json().replace(",\"shared_expert\":null", "");
        assert!(!width.to_json().contains("shared_expert\":true"));
        let old_width = Config::from_json(&legacy(&width)).unwrap();
        assert_eq!(old_width.shared_expert, Some(false));
        assert!(!old_width.has_shared_expert());
        let old_both = Config::from_json(&legacy(&Config::tiny())).unwrap();
        assert_eq!(old_both, Config::tiny());
        assert_ne!(legacy(&width), width.to_json(), "the key was removed");
        // The TOML written into a run directory reads back to the same config.
        let run = RunConfig { model: width.clone(), ..RunConfig::default() };
        assert_eq!(RunConfig::from_toml(&run.to_toml()).unwrap(), run);
    }

    #[test]
    fn depth_noise_is_unit_by_default_and_scaled_on_request() {
        assert_eq!(Config::tiny().depth_noise, DepthNoise::Unit);
        let text = "[model]\ndepth_noise = \"scaled\"\n";
        assert_eq!(RunConfig::from_toml(text).unwrap().model.depth_noise, DepthNoise::Scaled);
        match RunConfig::from_toml("[model]\ndepth_noise = \"loud\"\n") {
            Err(ConfigError::InvalidValue { key, .. }) => assert_eq!(key, "model.depth_noise"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = RunConfig::from_toml("[model]\nd_modle = 64\n").unwrap_err();
        let message = err.to_string();
        assert!(message.contains("model.d_modle"), "{message}");
        assert!(message.contains("did you mean `d_model`"), "{message}");
        let err = RunConfig::from_toml("[train]\nlearning_rate = 1.0\n").unwrap_err();
        assert!(
            matches!(&err, ConfigError::UnknownKey { key, .. } if key == "train.learning_rate")
        );
        let err = RunConfig::from_toml("[optim]\nlr = 1.0\n").unwrap_err();
        assert!(matches!(&err, ConfigError::UnknownKey { key, .. } if key == "optim"));
        let err = Config::from_json(&Config::default().to_json().replace("\"seq_len\"", "\"sl\""));
        assert!(err.unwrap_err().to_string().contains("sl"));
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            ("[model]\nd_model = -4", "model.d_model"),
            ("[model]\nd_model = \"big\"", "model.d_model"),
            ("[model]\nblock = \"mlp\"", "model.block"),
            ("[model]\nrope_theta = \"x\"", "model.rope_theta"),
            ("[train]\nsteps = 1.5", "train.steps"),
            ("preset = 3", "preset"),
            ("model = 3", "model"),
        ];
        for (text, key) in cases {
            match RunConfig::from_toml(text) {
                Err(ConfigError::InvalidValue { key: named, .. }) => assert_eq!(named, key),
                other => panic!("{text}: {other:?}"),
            }
        }
        let constraints = [
            ("[model]\nn_heads = 3", "model.n_heads"),
            ("[model]\nd_model = 96\nn_heads = 32", "model.n_heads"), // head_dim 3 is odd
            ("[model]\nhidden = 500", "model.hidden"),
            ("[model]\ntop_k = 9", "model.top_k"),
            ("[model]\nmax_depth = 0", "model.max_depth"),
            ("[model]\nnorm_eps = nan", "model.norm_eps"),
            ("[model]\nrope_theta = -1.0", "model.rope_theta"),
            ("[model]\ninit_std = inf", "model.init_std"),
            ("[model]\ntemperature_end = 6.0", "model.temperature_end"),
            ("[model]\nbalance_loss_coef = -1e-5", "model.balance_loss_coef"),
            ("[model]\nd_model = 1000000000", "model.d_model"),
            ("[train]\nbeta2 = 1.0", "train.beta2"),
            ("[train]\neps = 0.0", "train.eps"),
            ("[train]\nsteps = 0", "train.steps"),
            ("[train]\ntemperature_floor_frac = 1.5", "train.temperature_floor_frac"),
        ];
        for (text, key) in constraints {
            match RunConfig::from_toml(text) {
                Err(ConfigError::Constraint { key: named, .. }) => assert_eq!(named, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        // hidden need not divide by n_experts when there are no experts.
        RunConfig::from_toml("[model]\nblock = \"dense\"\nhidden = 500").unwrap();
    }

    #[test]
    fn command_line_overrides() {
        let mut run = RunConfig::default();
        run.set("block", "moe").unwrap();
        run.set("train.lr", "3e-4").unwrap();
        run.set("steps", "77").unwrap();
        run.set("model.fusion", "\"average\"").unwrap();
        assert_eq!(run.model.block, BlockKind::Moe);
        assert_eq!(run.model.fusion, Fusion::Average);
        assert_eq!((run.train.lr, run.train.steps), (3e-4, 77));
        assert!(run.set("model.d_model", "100").is_err(), "100 % 4 heads ok but head_dim 25 odd");
        assert!(matches!(run.set("depth", "3"), Err(ConfigError::UnknownKey { .. })));
        assert!(matches!(run.set("x.lr", "3"), Err(ConfigError::UnknownKey { .. })));
    }

    #[test]
    fn lambda_falls_from_width_to_depth_as_the_loop_count_grows() {
        assert_eq!(Fusion::Gated.lambda(4.0f32, 4.0), 0.0);
        assert_eq!(Fusion::Gated.lambda(1.0f32, 4.0), 0.75);
        assert_eq!(Fusion::Gated.lambda(2.5f64, 4.0), 0.375);
        assert_eq!(Fusion::Average.lambda(4.0f32, 4.0), 0.5);
        assert_eq!(Fusion::Average.lambda(1.0f64, 4.0), 0.5);
    }

    #[test]
    fn parameter_counts_by_block_kind() {
        // Tiny: V 256, d 128, h 512, L 4, E 8, D 4.
        let dense = Config { block: BlockKind::Dense, ..Config::tiny() };
        let (v, d, h, l, e, depth) = (256, 128, 512, 4, 8, 4);
        // Per layer: 2 norms (2d) + att_proj 3d² + attn_out d² + ff_proj 2hd + ff_out hd.
        let per_layer = 2 * d + 4 * d * d + 3 * h * d;
        let dense_count = v * d + l * per_layer + d + v * d;
        assert_eq!(dense.num_params(), dense_count);
        assert_eq!(dense_count, 1_115_264);
        let kloop = Config { block: BlockKind::Kloop, ..Config::tiny() };
        assert_eq!(kloop.num_params(), dense_count);
        let versatile = Config::tiny();
        assert_eq!(versatile.num_params(), dense_count + l * (e + depth) * d);
        // MoE: + E experts of s = h/E (2sd + sd each = 3hd in all) + the E×d gate, per layer.
        let moe = Config { block: BlockKind::Moe, ..Config::tiny() };
        assert_eq!(moe.num_params(), dense_count + l * (3 * h * d + e * d));
        let paths_width = Config { paths: Paths::Width, ..Config::tiny() };
        assert_eq!(paths_width.param_specs(), versatile.param_specs());
    }

    #[test]
    fn param_names_are_exact_and_unique() {
        let moe = Config { block: BlockKind::Moe, n_layers: 2, ..Config::tiny() };
        let specs = moe.param_specs();
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names[0], "transformer.wte.weight");
        assert_eq!(names[names.len() - 2], "transformer.ln_f.weight");
        assert_eq!(names[names.len() - 1], "transformer.ff_out.weight");
        let unique: BTreeSet<&str> = names.iter().copied().collect();
        assert_eq!(unique.len(), names.len());
        let find = |name: &str| specs.iter().find(|s| s.name == name).unwrap();
        assert_eq!(find("transformer.blocks.1.att_proj.weight").shape, vec![384, 128]);
        assert_eq!(find("transformer.blocks.1.ff_proj.weight").shape, vec![1024, 128]);
        assert_eq!(find("transformer.blocks.1.ff_out.weight").shape, vec![128, 512]);
        assert_eq!(find("transformer.blocks.0.expert_gate.weight").shape, vec![8, 128]);
        assert_eq!(find("transformer.blocks.0.experts.7.ff_proj.weight").shape, vec![128, 128]);
        assert_eq!(find("transformer.blocks.0.experts.7.ff_out.weight").shape, vec![128, 64]);
        assert_eq!(find("transformer.blocks.1.attn_norm.weight").kind, ParamKind::Norm);
        assert!(!find("transformer.ln_f.weight").decays());
        assert!(find("transformer.wte.weight").decays());
        let versatile = Config::tiny().param_specs();
        let predictor = versatile
            .iter()
            .find(|s| s.name == "transformer.blocks.3.depth_predictor.weight")
            .unwrap();
        assert_eq!(predictor.shape, vec![4, 128]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Arbitrary text never panics the parser.
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = RunConfig::from_toml(&text);
            let _ = Config::from_toml_table_str(&text);
        }

        /// Well-formed files with arbitrary keys and values: never a panic, and every accepted
        /// config validates; every refusal of a known key names it.
        #[test]
        fn arbitrary_keys_and_values_never_panic(
            section in prop::sample::select(vec!["model", "train", "other"]),
            key in prop::sample::select(
                MODEL_KEYS.iter().chain(TRAIN_KEYS).copied().chain(["x", "d"]).collect::<Vec<_>>()
            ),
            value in prop_oneof![
                any::<i64>().prop_map(|v| v.to_string()),
                (0i64..5000).prop_map(|v| v.to_string()),
                any::<f64>().prop_map(|v| format!("{v:?}")),
                Just("nan".to_string()),
                Just("-inf".to_string()),
                "[a-z]{0,8}".prop_map(|s| format!("\"{s}\"")),
                Just("\"moe\"".to_string()),
                Just("[1, 2]".to_string()),
                Just("{ a = 1 }".to_string()),
                Just("true".to_string()),
            ],
        ) {
            let text = format!("[{section}]\n{key} = {value}\n");
            match RunConfig::from_toml(&text) {
                Ok(run) => prop_assert!(run.validate().is_ok()),
                Err(ConfigError::Syntax { .. }) => {}
                Err(ConfigError::UnknownKey { key: named, .. }) => {
                    prop_assert!(named.contains(key) || named == section)
                }
                Err(ConfigError::InvalidValue { key: named, .. })
                | Err(ConfigError::Constraint { key: named, .. }) => {
                    prop_assert!(named.starts_with(section));
                }
                Err(other) => prop_assert!(false, "unexpected {other:?}"),
            }
        }
    }
}
