//! The constraints of a model and a recipe: every check names the key that breaks it.

use super::{BlockKind, Config, ConfigError, TrainConfig};

/// Upper bounds that keep every derived size far from overflow (not model-quality limits).
const MAX_WIDTH: usize = 1 << 16;
const MAX_VOCAB: usize = 1 << 20;
const MAX_COUNT: usize = 1 << 10;
const MAX_SEQ: usize = 1 << 20;

/// The error for `section.key = value`, which breaks a constraint for `reason`.
fn broken(section: &str, key: &str, value: String, reason: &str) -> Result<(), ConfigError> {
    Err(ConfigError::Constraint {
        key: format!("{section}.{key}"),
        value,
        reason: reason.to_string(),
    })
}

impl Config {
    /// Checks every constraint; the error names the first key that breaks one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |key: &str, value: String, reason: &str| broken("model", key, value, reason);
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
}

impl TrainConfig {
    /// Checks every constraint; the error names the first key that breaks one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |key: &str, value: String, reason: &str| broken("train", key, value, reason);
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
}
