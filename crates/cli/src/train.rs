//! `vffn train`: the training loop with progress bar, metrics, validation, atomic checkpoints,
//! bit-exact resume, Ctrl-C and NaN handling.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use vffn_autograd::{AdamW, AdamWState, Rng};
use vffn_model::{
    adamw_config, save_model, save_optimizer, validation_batches, AdamMomentsRef, Batcher, Config,
    ConfigError, Model, RunConfig, Split, TrainConfig, TrainState, Training, MODEL_FILE,
    OPTIMIZER_FILE, STATE_FILE, TRAIN_STATE_FORMAT,
};

use crate::ckpt_io;
use crate::common::{check_memory, in_pool, load_dataset, read_input_file, BUILTIN_SOURCE};
use crate::eval::evaluate_until;
use crate::generate;
use crate::lock::lock_run_dir;
use crate::metrics::{depth_router_columns, MetricsLog, MetricsRow};
use crate::signals::{self, Signals, Stop};

/// Steps of the default run (`vffn train` with no flags: tiny preset, built-in corpus), chosen
/// so that it finishes in about five minutes on 2 cores.
pub const DEFAULT_QUICK_STEPS: u64 = 300;
/// Validation cadence and size of the quick run (the recipe's 200 × 20 batches would cost as
/// much time as a quarter of the training).
const QUICK_EVAL_EVERY: u64 = 100;
const QUICK_EVAL_BATCHES: u64 = 4;
/// Bytes sampled at the end of a run.
const SAMPLE_PROMPT_BYTES: usize = 64;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Model preset (default tiny).
    #[arg(long, value_parser = ["tiny", "small"], conflicts_with = "config")]
    pub preset: Option<String>,
    /// TOML file: `preset = ..`, `[model]` and `[train]` overrides.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Feed-forward block of every layer (overrides the preset / config).
    #[arg(long, value_parser = ["dense", "kloop", "moe", "versatile"])]
    pub block: Option<String>,
    /// Train on this file's bytes (first 90% train, last 10% validation); default: the
    /// built-in synthetic corpus.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Optimizer steps (default: the recipe's 2000, or 300 for the no-flag quick run).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Seed of initialization, data order and Gumbel noise.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Run directory: checkpoint in DIR/ckpt, metrics in DIR/metrics.jsonl.
    #[arg(long, default_value = "runs/default")]
    pub out: PathBuf,
    /// Continue the checkpoint in --out bit-exactly.
    #[arg(long, conflicts_with = "init_from")]
    pub resume: bool,
    /// Start from the weights of another checkpoint (continued pre-training; the block kind
    /// may differ: missing routers are freshly initialized).
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Also checkpoint every N steps (default: at every evaluation and at the end).
    #[arg(long)]
    pub save_every: Option<u64>,
    /// Stop (with a checkpoint) once this many steps are done, as an interruption would.
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// Refuse models whose estimated training memory exceeds this (default: available RAM).
    #[arg(long)]
    pub max_memory_mb: Option<u64>,
    /// Start a fresh run even if --out already holds a checkpoint (it is replaced).
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Bytes of sample text printed at the end (0 = none).
    #[arg(long, default_value_t = 200)]
    pub sample_bytes: usize,
}

pub fn run(args: TrainArgs) -> Result<()> {
    in_pool(args.threads, || run_in_pool(args))
}

/// The run configuration of `--config FILE` or else `--preset NAME` (default tiny), with
/// `--block` applied: what `vffn train` and `vffn bench` start from.
pub(crate) fn flag_config(
    config: Option<&Path>,
    preset: Option<&str>,
    block: Option<&str>,
) -> Result<RunConfig> {
    let mut run = match config {
        Some(path) => {
            let bytes = read_input_file(path, "config file")?;
            let text = String::from_utf8(bytes)
                .with_context(|| format!("config file `{}` is not UTF-8", path.display()))?;
            RunConfig::from_toml(&text)
                .map_err(one_line_config_error)
                .with_context(|| format!("config file `{}`", path.display()))?
        }
        None => RunConfig {
            model: Config::preset(preset.unwrap_or("tiny"))?,
            train: TrainConfig::default(),
        },
    };
    if let Some(block) = block {
        run.set("model.block", block)?;
    }
    Ok(run)
}

/// The run configuration from the flags (before any checkpoint is consulted).
fn requested_config(args: &TrainArgs) -> Result<RunConfig> {
    let mut run =
        flag_config(args.config.as_deref(), args.preset.as_deref(), args.block.as_deref())?;
    if let Some(seed) = args.seed {
        run.train.seed = seed;
    }
    match args.steps {
        Some(steps) => run.set("train.steps", &steps.to_string())?,
        None if args.config.is_none()
            && args.data.is_none()
            && args.preset.as_deref().unwrap_or("tiny") == "tiny" =>
        {
            run.train.steps = DEFAULT_QUICK_STEPS;
            run.train.eval_every = QUICK_EVAL_EVERY;
            run.train.eval_batches = QUICK_EVAL_BATCHES;
        }
        None => {}
    }
    Ok(run)
}

/// TOML syntax errors come as a multi-line excerpt with a caret: keep the position line and
/// the reason ("TOML parse error at line 1, column 7: unclosed table, expected `]`").
fn one_line_config_error(err: ConfigError) -> ConfigError {
    match err {
        ConfigError::Syntax { format, message } => {
            let lines: Vec<&str> =
                message.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
            let message = match (lines.first(), lines.last()) {
                (Some(first), Some(last)) if lines.len() > 1 => format!("{first}: {last}"),
                _ => message.trim().to_string(),
            };
            ConfigError::Syntax { format, message }
        }
        other => other,
    }
}

/// Everything the loop mutates, restorable from a checkpoint.
struct Trainer {
    /// The model, optimizer, RNGs and step count (the step itself: `Training::step`).
    training: Training,
    tokens_seen: u64,
    data_source: String,
    /// The validation split of the data.
    valid: Split,
}

fn config_difference(a: &Config, b: &Config) -> String {
    let (a, b) =
        (serde_json::to_value(a).unwrap_or_default(), serde_json::to_value(b).unwrap_or_default());
    if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
        for (key, value) in a {
            if b.get(key) != Some(value) {
                let other = b.get(key).map(ToString::to_string).unwrap_or_default();
                return format!("{key} = {other} in the checkpoint, {value} asked");
            }
        }
    }
    "the configs differ".to_string()
}

/// The explicit `[train]` entries of a config file, as `train.<key>` and TOML value text.
fn config_file_train_entries(path: &Path) -> Result<Vec<(String, String)>> {
    let bytes = read_input_file(path, "config file")?;
    let text = String::from_utf8(bytes)
        .with_context(|| format!("config file `{}` is not UTF-8", path.display()))?;
    let table: toml::Table =
        text.parse().with_context(|| format!("config file `{}`", path.display()))?;
    Ok(match table.get("train") {
        Some(toml::Value::Table(train)) => {
            train.iter().map(|(key, value)| (format!("train.{key}"), value.to_string())).collect()
        }
        _ => Vec::new(),
    })
}

/// The configuration of a resumed run: the checkpoint's, with the `[train]` values the flags
/// and the config file give (each change printed as a note). An architecture that differs
/// from the checkpoint's, or another seed, is refused naming the key.
fn resume_config(args: &TrainArgs, model: &Config, train: &TrainConfig) -> Result<RunConfig> {
    let checkpoint = RunConfig { model: model.clone(), train: train.clone() };
    // The architecture asked: the file's or the preset's (with --block laid over it), or the
    // checkpoint's own with --block laid over it.
    let mut asked = match (&args.config, &args.preset) {
        (Some(_), _) | (_, Some(_)) => requested_config(args)?,
        (None, None) => checkpoint.clone(),
    };
    if let Some(block) = &args.block {
        asked.set("model.block", block)?;
    }
    if asked.model != *model {
        bail!(
            "another architecture is asked ({}); drop --config/--preset/--block or change them \
             to match",
            config_difference(&asked.model, model)
        );
    }
    let mut run = checkpoint;
    if let Some(path) = &args.config {
        for (key, value) in config_file_train_entries(path)? {
            run.set(&key, &value).with_context(|| format!("config file `{}`", path.display()))?;
        }
    }
    if let Some(steps) = args.steps {
        run.set("train.steps", &steps.to_string())?;
    }
    if let Some(seed) = args.seed {
        run.train.seed = seed;
    }
    if run.train.seed != train.seed {
        bail!(
            "`train.seed` = {} asked but the checkpoint's seed is {} (a resumed run keeps its \
             seed)",
            run.train.seed,
            train.seed
        );
    }
    run.validate()?;
    let (old, new) = (
        serde_json::to_value(train).unwrap_or_default(),
        serde_json::to_value(&run.train).unwrap_or_default(),
    );
    if let (Some(old), Some(new)) = (old.as_object(), new.as_object()) {
        for (key, value) in new {
            if old.get(key) != Some(value) {
                let before = old.get(key).map(ToString::to_string).unwrap_or_default();
                errln!("note: train.{key} = {value} (the checkpoint had {before})");
            }
        }
    }
    Ok(run)
}

fn resume_trainer(args: &TrainArgs) -> Result<Trainer> {
    let ckpt = ckpt_io::read_training(&args.out).with_context(|| {
        format!("cannot resume from `{}` (train without --resume to start)", args.out.display())
    })?;
    let run = resume_config(args, &ckpt.model.config, &ckpt.state.train)
        .with_context(|| format!("cannot resume `{}`", ckpt.dir.display()))?;
    let source = match &args.data {
        None => BUILTIN_SOURCE.to_string(),
        Some(path) => {
            std::fs::canonicalize(path).unwrap_or_else(|_| path.clone()).display().to_string()
        }
    };
    if source != ckpt.state.data_source {
        bail!(
            "checkpoint `{}` was trained on `{}`, not `{source}` (pass the same --data)",
            ckpt.dir.display(),
            ckpt.state.data_source
        );
    }
    check_memory(&run.model, args.max_memory_mb)?;
    let (dataset, data_source) = load_dataset(args.data.as_deref(), run.model.seq_len)?;
    let model = Model::from_checkpoint(&ckpt.model)
        .with_context(|| format!("checkpoint `{}`", ckpt.dir.display()))?;
    let specs = run.model.param_specs();
    ckpt.optimizer.check(&specs).with_context(|| format!("checkpoint `{}`", ckpt.dir.display()))?;
    let mut moments = ckpt.optimizer.moments;
    // (Finite values and second moments ≥ 0 were checked when the file was read.)
    let mut state = AdamWState { step: ckpt.optimizer.step, names: vec![], m: vec![], v: vec![] };
    for (_, param) in model.params.iter() {
        let found = moments.remove(param.name()).with_context(|| {
            format!(
                "checkpoint `{}`: no optimizer state for `{}`",
                ckpt.dir.display(),
                param.name()
            )
        })?;
        state.names.push(param.name().to_string());
        state.m.push(found.m);
        state.v.push(found.v);
    }
    let optimizer = AdamW::from_state(adamw_config(&run.train), state, &model.params)
        .with_context(|| format!("checkpoint `{}`", ckpt.dir.display()))?;
    let batcher = Batcher::from_rng_state(
        dataset.train,
        run.model.seq_len,
        run.model.batch_size,
        ckpt.state.data_rng,
    )?;
    let noise_rng = Rng::from_state(ckpt.state.model_rng);
    let step = ckpt.state.step;
    Ok(Trainer {
        training: Training { run, model, optimizer, batcher, noise_rng, step },
        tokens_seen: ckpt.state.tokens_seen,
        data_source,
        valid: dataset.val,
    })
}

fn fresh_trainer(args: &TrainArgs) -> Result<Trainer> {
    if ckpt_io::has_checkpoint(&args.out)? && !args.overwrite {
        bail!(
            "`{}` already holds a checkpoint: pass --resume to continue it, --overwrite to start \
             over, or another --out",
            args.out.display()
        );
    }
    let run = requested_config(args)?;
    check_memory(&run.model, args.max_memory_mb)?;
    let (dataset, data_source) = load_dataset(args.data.as_deref(), run.model.seq_len)?;
    let seed = run.train.seed;
    let model = match &args.init_from {
        None => Model::new(run.model.clone(), seed)?,
        Some(path) => {
            let (dir, ckpt) = ckpt_io::read_model(path)?;
            let (model, plan) = Model::init_from(run.model.clone(), seed, &ckpt)
                .with_context(|| format!("cannot initialize from `{}`", dir.display()))?;
            errln!(
                "initialized from {}: {} tensors copied, {} freshly initialized, {} ignored",
                dir.display(),
                plan.copied.len(),
                plan.initialized.len(),
                plan.ignored.len()
            );
            model
        }
    };
    Ok(Trainer {
        training: Training::start(run, model, dataset.train)?,
        tokens_seen: 0,
        data_source,
        valid: dataset.val,
    })
}

impl Trainer {
    /// Writes DIR/ckpt atomically: model, optimizer moments and `state.json`.
    fn save(&self, run_dir: &Path) -> Result<PathBuf> {
        let extra = BTreeMap::from([
            ("step".to_string(), self.training.step.to_string()),
            ("data_source".to_string(), self.data_source.clone()),
        ]);
        let temperature = self.training.run.temperature_at(self.training.step);
        let model_bytes = save_model(
            &self.training.run.model,
            temperature,
            &extra,
            &self.training.model.tensor_refs(),
        )?;
        let adam = self.training.optimizer.state();
        let moments: Vec<AdamMomentsRef<'_>> = self
            .training
            .model
            .params
            .iter()
            .enumerate()
            .map(|(i, (_, p))| AdamMomentsRef {
                name: p.name(),
                shape: p.shape(),
                m: &adam.m[i],
                v: &adam.v[i],
            })
            .collect();
        let optimizer_bytes = save_optimizer(adam.step, &moments)?;
        let state = TrainState {
            format: TRAIN_STATE_FORMAT,
            step: self.training.step,
            model_rng: self.training.noise_rng.state(),
            data_rng: self.training.batcher.rng_state(),
            tokens_seen: self.tokens_seen,
            data_source: self.data_source.clone(),
            train: self.training.run.train.clone(),
        };
        let state_json = state.to_json();
        ckpt_io::write_checkpoint(
            run_dir,
            &[
                (MODEL_FILE, &model_bytes),
                (OPTIMIZER_FILE, &optimizer_bytes),
                (STATE_FILE, state_json.as_bytes()),
            ],
        )
    }

    /// The loss of the current weights on the first validation batch, which must be finite
    /// before they are saved: finite weights can still be too large to compute with.
    fn check_loss(&self) -> Result<()> {
        let (seq_len, batch_size) =
            (self.training.run.model.seq_len, self.training.run.model.batch_size);
        let mut batches = validation_batches(&self.valid, seq_len, batch_size)?;
        if let Some(batch) = batches.next() {
            let loss = self.training.model.eval_loss(&batch).context("validation forward")?;
            if !loss.is_finite() {
                bail!(
                    "the validation loss of the weights after step {} is {loss}: training stopped",
                    self.training.step
                );
            }
        }
        Ok(())
    }

    /// One optimizer step; returns the metrics row (without val_loss / tokens_per_s).
    fn step_once(&mut self) -> Result<MetricsRow> {
        let report = self.training.step()?;
        self.tokens_seen = self.tokens_seen.saturating_add(report.tokens as u64);
        let (depth_agree, depth_margin) = depth_router_columns(&report.depth_agreement);
        Ok(MetricsRow {
            step: report.step,
            loss: report.loss,
            ce: report.ce,
            balance: report.balance,
            val_loss: None,
            lr: report.lr,
            temperature: report.temperature,
            tokens_per_s: 0.0,
            grad_norm: report.grad_norm,
            depth_agree,
            depth_margin,
        })
    }
}

fn progress_bar(total: u64, position: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{bar:24.cyan/blue} {pos}/{len} {msg} [{elapsed}<{eta}]")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(position);
    bar
}

/// Creates (if needed) and locks the run directory, then builds the trainer; a directory this
/// call created is removed again if that fails.
fn open_run(args: &TrainArgs) -> Result<(crate::lock::RunLock, Trainer)> {
    let run_dir = &args.out;
    ckpt_io::check_run_dir(run_dir)?;
    let created = !ckpt_io::exists(run_dir)?;
    std::fs::create_dir_all(run_dir)
        .with_context(|| format!("cannot create the run directory `{}`", run_dir.display()))?;
    let lock = lock_run_dir(run_dir)?;
    let trainer = if args.resume { resume_trainer(args) } else { fresh_trainer(args) };
    match trainer {
        Ok(trainer) => Ok((lock, trainer)),
        Err(err) => {
            if created {
                drop(lock);
                let _ = std::fs::remove_file(run_dir.join(crate::lock::LOCK_FILE));
                let _ = std::fs::remove_dir(run_dir);
            }
            Err(err)
        }
    }
}

fn run_in_pool(args: TrainArgs) -> Result<()> {
    let (_lock, mut trainer) = open_run(&args)?;
    let run_dir = args.out.clone();
    let mut metrics = if args.resume {
        MetricsLog::resume(&run_dir, trainer.training.step)?
    } else {
        MetricsLog::create(&run_dir)?
    };
    ckpt_io::write_atomic(&run_dir.join("config.toml"), trainer.training.run.to_toml().as_bytes())?;
    let signals = Signals::install()?;
    let stop_requested = || signals.received().is_some();

    let total = trainer.training.run.train.steps;
    let train = trainer.training.run.train.clone();
    let valid = trainer.valid.clone();
    let eval_batches = (train.eval_batches > 0).then_some(train.eval_batches as usize);
    errln!(
        "training {:?} model ({} parameters) on {} for {} steps (from step {}), batch {}×{}, \
         into {}",
        trainer.training.run.model.block,
        trainer.training.run.model.num_params(),
        trainer.data_source,
        total,
        trainer.training.step,
        trainer.training.run.model.batch_size,
        trainer.training.run.model.seq_len,
        run_dir.display()
    );
    let bar = progress_bar(total, trainer.training.step);
    // Throughput counts training time only (evaluations and checkpoints excluded).
    let (mut last_val, mut window_tokens, mut window_time) = (None::<f32>, 0u64, Duration::ZERO);
    let tokens_per_step =
        (trainer.training.run.model.batch_size * trainer.training.run.model.seq_len) as u64;
    let started = Instant::now();
    let start_step = trainer.training.step;
    let mut last_saved = args.resume.then_some(start_step);
    let stopped = |err: anyhow::Error, last_saved: Option<u64>| {
        bar.abandon();
        let kept = match last_saved {
            Some(step) => format!(
                "; the last good checkpoint (step {step}) stays in {}",
                run_dir.join(ckpt_io::CKPT_DIR).display()
            ),
            None => "; no checkpoint was written yet".to_string(),
        };
        anyhow::anyhow!("{err:#}{kept}")
    };
    if let Some(limit) = args.stop_after.filter(|&limit| trainer.training.step >= limit) {
        // Nothing to run: a fresh run still leaves its step-0 checkpoint to resume.
        if last_saved.is_none() {
            trainer.save(&run_dir)?;
        }
        bar.abandon();
        errln!(
            "stopped (--stop-after {limit}) at step {}/{total} before any step; checkpoint in {}",
            trainer.training.step,
            run_dir.join(ckpt_io::CKPT_DIR).display()
        );
        return Ok(());
    }
    while trainer.training.step < total {
        let step_started = Instant::now();
        let mut row = match trainer.step_once() {
            Ok(row) => row,
            Err(err) => return Err(stopped(err, last_saved)),
        };
        window_tokens += tokens_per_step;
        window_time += step_started.elapsed();
        let done = trainer.training.step;
        let last = done == total;
        let evaluate_now = done.is_multiple_of(train.eval_every) || last;
        // An evaluation stops early on a signal (the step is then saved without it).
        let evaluated = if evaluate_now {
            evaluate_until(&trainer.training.model, &valid, eval_batches, &stop_requested)?
        } else {
            None
        };
        if let Some(result) = evaluated {
            if !result.loss.is_finite() {
                let err = anyhow::anyhow!(
                    "the validation loss after step {done} is {}: training stopped",
                    result.loss
                );
                return Err(stopped(err, last_saved));
            }
            last_val = Some(result.loss as f32);
            row.val_loss = last_val;
            bar.suspend(|| {
                errln!("step {done}: train loss {:.4}, val loss {:.4}", row.loss, result.loss)
            });
        }
        let tokens_per_s =
            window_tokens as f64 / window_time.max(Duration::from_micros(1)).as_secs_f64();
        bar.set_position(done);
        bar.set_message(format!(
            "loss {:.3} val {} {:.0} tok/s lr {:.2e} T {:.2}",
            row.loss,
            last_val.map_or("-".to_string(), |v| format!("{v:.3}")),
            tokens_per_s,
            row.lr,
            row.temperature
        ));
        if done.is_multiple_of(train.log_every) || last || evaluate_now {
            row.tokens_per_s = tokens_per_s;
            metrics.write(&row)?;
            window_tokens = 0;
            window_time = Duration::ZERO;
        }
        let stop_now = args.stop_after.is_some_and(|s| done >= s);
        let stop_signal = signals.received();
        let save_now = last
            || evaluate_now
            || stop_now
            || stop_signal.is_some()
            || args.save_every.is_some_and(|every| every > 0 && done.is_multiple_of(every));
        if save_now {
            // An evaluation just proved the weights compute a finite loss; otherwise check.
            if evaluated.is_none() {
                trainer.check_loss().map_err(|err| stopped(err, last_saved))?;
            }
            let dir = trainer.save(&run_dir)?;
            last_saved = Some(done);
            if stop_now || stop_signal.is_some() {
                bar.abandon();
                let why = match stop_signal {
                    Some(Stop::Interrupt) => "interrupted",
                    Some(Stop::Terminate) => "terminated (SIGTERM)",
                    None => "stopped (--stop-after)",
                };
                errln!(
                    "{why} at step {done}/{total}; checkpoint saved to {}; continue with --resume",
                    dir.display()
                );
                if let Some(stop) = stop_signal {
                    signals::finish_after(stop);
                }
                return Ok(());
            }
        }
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let steps_run = trainer.training.step - start_step;
    errln!(
        "done: {steps_run} steps in {seconds:.1} s ({:.2} steps/s); final val loss {}; \
         checkpoint in {}",
        steps_run as f64 / seconds.max(1e-9),
        last_val.map_or("-".to_string(), |v| format!("{v:.4}")),
        run_dir.join(ckpt_io::CKPT_DIR).display()
    );
    if args.sample_bytes > 0 {
        let seed = trainer.training.run.train.seed;
        let sampled =
            print_sample(&trainer.training.model, &valid.bytes, args.sample_bytes, seed, &signals);
        if let Some(stop) = signals.received() {
            errln!("\nsample interrupted; the checkpoint was saved before it");
            signals::finish_after(stop);
            return Ok(());
        }
        sampled?;
    }
    Ok(())
}

/// Stdout for the sample: a write fails once a signal came, which ends the sampling.
struct StopOnSignal<'a, W> {
    out: W,
    signals: &'a Signals,
}

impl<W: std::io::Write> std::io::Write for StopOnSignal<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.signals.received().is_some() {
            return Err(std::io::Error::other("stopped by a signal"));
        }
        self.out.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Prints a sample continuation of the start of the validation split.
fn print_sample(
    model: &Model,
    val: &[u8],
    max_new: usize,
    seed: u64,
    signals: &Signals,
) -> Result<()> {
    use std::io::Write;
    let prompt = &val[..val.len().min(SAMPLE_PROMPT_BYTES)];
    let mut stdout = StopOnSignal { out: std::io::stdout().lock(), signals };
    writeln!(stdout, "--- sample (prompt: first {} validation bytes) ---", prompt.len())?;
    stdout.write_all(prompt)?;
    generate::stream(model, prompt, max_new, 0.8, 0, seed, &mut stdout)?;
    writeln!(stdout, "\n---")?;
    Ok(())
}
