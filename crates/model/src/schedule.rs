//! The two schedules of a training run, side by side: the depth router's Gumbel-softmax
//! temperature τ and the learning rate. Both are functions of the 0-based step and the planned
//! number of steps only, so a resumed run follows them exactly.

/// The Gumbel-softmax temperature τ of the depth router's loop-count choice (the paper's
/// training recipe: exponential decay to a floor reached at 96% of the steps, the default
/// `temperature_floor_frac`): τ(s) = start·(end/start)^(s / (floor_frac·total_steps)) until step
/// floor_frac·total_steps, `end` from then on. A run with floor_frac·total_steps < 1 sits at
/// `end` throughout.
pub fn temperature(start: f32, end: f32, step: u64, total_steps: u64, floor_frac: f32) -> f32 {
    let floor_step = floor_frac as f64 * total_steps as f64;
    if !floor_step.is_finite() || floor_step < 1.0 || step as f64 >= floor_step {
        return end;
    }
    let (start, end_f64) = (start as f64, end as f64);
    // A constant ratio per step.
    (start * (end_f64 / start).powf(step as f64 / floor_step)) as f32
}

/// The learning rate at `step` (0-based) of a `steps`-step run: linear warm-up
/// peak·(step+1)/warmup_steps, then a cosine from `peak` to `min_lr_ratio·peak`, reached exactly
/// at the last step `steps − 1` and kept after it. The only cosine schedule of the workspace.
pub fn learning_rate(
    peak: f32,
    warmup_steps: u64,
    min_lr_ratio: f32,
    steps: u64,
    step: u64,
) -> f32 {
    let lr = peak as f64;
    if step < warmup_steps {
        return (lr * (step + 1) as f64 / warmup_steps as f64) as f32;
    }
    let min_lr = lr * min_lr_ratio as f64;
    let last = steps.saturating_sub(1);
    let progress = if last <= warmup_steps {
        1.0
    } else {
        ((step - warmup_steps) as f64 / (last - warmup_steps) as f64).min(1.0)
    };
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    (min_lr + (lr - min_lr) * cosine) as f32
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, RunConfig, TrainConfig};

    #[test]
    fn temperature_decays_exponentially_to_the_floor() {
        let config = Config::default();
        let total = 1000;
        assert_eq!(config.temperature_at(0, total, 0.96), 5.0);
        let at_floor = config.temperature_at(960, total, 0.96);
        assert_eq!(at_floor, 0.1);
        assert_eq!(config.temperature_at(999, total, 0.96), 0.1);
        // Constant ratio per step: T(s+1)/T(s) = (0.1/5)^(1/960).
        let ratio = (0.1f64 / 5.0).powf(1.0 / 960.0);
        for step in [0, 100, 480, 958] {
            let now = config.temperature_at(step, total, 0.96) as f64;
            let next = config.temperature_at(step + 1, total, 0.96) as f64;
            assert!((next / now - ratio).abs() < 1e-5, "step {step}");
        }
        let mid = config.temperature_at(480, total, 0.96) as f64;
        assert!((mid - (5.0f64 * 0.1).sqrt()).abs() < 1e-4, "geometric mean halfway: {mid}");
        assert_eq!(config.temperature_at(0, 0, 0.96), 0.1);
        let run = RunConfig::default();
        assert_eq!(run.temperature_at(1920), 0.1);
        assert!(run.temperature_at(1919) > 0.1);
    }

    #[test]
    fn learning_rate_warmup_then_cosine() {
        let train = TrainConfig { steps: 1100, warmup_steps: 100, ..TrainConfig::default() };
        assert!((train.lr_at(0) - 1e-5).abs() < 1e-9);
        assert!((train.lr_at(99) - 1e-3).abs() < 1e-9);
        assert!((train.lr_at(100) - 1e-3).abs() < 1e-9);
        assert!((train.lr_at(1099) - 1e-4).abs() < 1e-9, "min lr at last step");
        let midpoint = train.lr_at(100 + 999 / 2) as f64;
        assert!((midpoint - 0.55e-3).abs() < 2e-6, "{midpoint}");
        let mut previous = f32::INFINITY;
        for step in 100..1100 {
            let lr = train.lr_at(step);
            assert!(lr <= previous);
            previous = lr;
        }
        let short = TrainConfig { steps: 50, warmup_steps: 100, ..TrainConfig::default() };
        assert!(short.lr_at(49) < short.lr);
        assert_eq!(short.lr_at(200), short.lr * short.min_lr_ratio);
    }
}
