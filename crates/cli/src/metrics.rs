//! `DIR/metrics.jsonl`: one JSON object per logged training step.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use vffn_model::DepthAgreement;

use crate::ckpt_io::write_atomic;

/// The metrics file name inside a run directory.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// One logged step. Floats are written as the shortest decimal that reads back to the same f32,
/// so two runs' losses can be compared bit for bit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    /// Optimizer steps completed (1-based).
    pub step: u64,
    /// Total loss: cross-entropy + balance term.
    pub loss: f32,
    /// Mean cross-entropy (nats) of the training batch.
    pub ce: f32,
    /// Load-balancing loss (before its coefficient).
    pub balance: f32,
    /// Validation cross-entropy when evaluated at this step.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub val_loss: Option<f32>,
    pub lr: f32,
    pub temperature: f32,
    pub tokens_per_s: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Per layer (models with a depth router): share of this step's tokens whose training
    /// pick (Gumbel) equals the noise-free argmax that inference uses, in [0, 1].
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub depth_agree: Option<Vec<f64>>,
    /// Per layer: mean over this step's tokens of the top-1 − top-2 depth-logit margin (≥ 0).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub depth_margin: Option<Vec<f64>>,
}

/// The `depth_agree` and `depth_margin` columns of a step from its per-layer agreement counts
/// (None, None when no layer has a depth router).
pub fn depth_router_columns(layers: &[DepthAgreement]) -> (Option<Vec<f64>>, Option<Vec<f64>>) {
    let routed: Vec<&DepthAgreement> = layers.iter().filter(|a| a.tokens > 0).collect();
    if routed.is_empty() {
        return (None, None);
    }
    let agree = routed.iter().filter_map(|a| a.agree_fraction()).collect();
    let margin = routed.iter().filter_map(|a| a.mean_margin()).collect();
    (Some(agree), Some(margin))
}

/// Appends rows to `DIR/metrics.jsonl`, one flushed line each.
pub struct MetricsLog {
    path: PathBuf,
    out: BufWriter<File>,
}

impl MetricsLog {
    /// A fresh log (an existing file is replaced, atomically).
    pub fn create(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join(METRICS_FILE);
        write_atomic(&path, b"")?;
        Self::append_to(path)
    }

    /// Continues a log at checkpoint step `step`: rows logged after it (by a run that went on
    /// past its last checkpoint) are dropped, so the file reads as one uninterrupted run. The
    /// kept rows are written to a new file that replaces the old one atomically; a row that
    /// does not parse is an error naming its line (the file is left as it was), except a last
    /// line cut short by a crash (no final newline), which is dropped with a note. A missing
    /// file starts empty; an unreadable one is an error.
    pub fn resume(run_dir: &Path, step: u64) -> Result<Self> {
        let path = run_dir.join(METRICS_FILE);
        let text = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(err) => {
                return Err(err).with_context(|| format!("cannot read `{}`", path.display()))
            }
        };
        let kept = rows_up_to(&text, step).with_context(|| {
            format!("`{}` (fix or remove the line to resume; it was not changed)", path.display())
        })?;
        if kept.torn_tail {
            errln!(
                "note: dropped an incomplete last line of {} (cut short by a crash)",
                path.display()
            );
        }
        write_atomic(&path, &kept.text)?;
        Self::append_to(path)
    }

    fn append_to(path: PathBuf) -> Result<Self> {
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open `{}`", path.display()))?;
        Ok(MetricsLog { path, out: BufWriter::new(file) })
    }

    /// Writes one row as a line and flushes it.
    pub fn write(&mut self, row: &MetricsRow) -> Result<()> {
        let line = serde_json::to_string(row).context("metrics row")?;
        writeln!(self.out, "{line}")
            .and_then(|()| self.out.flush())
            .with_context(|| format!("cannot write `{}`", self.path.display()))
    }
}

/// What [`MetricsLog::resume`] keeps of a metrics file.
#[derive(Debug, PartialEq)]
struct Kept {
    /// The lines to keep (each ending in a newline): the rows of steps ≤ the checkpoint's.
    text: Vec<u8>,
    /// Whether an unterminated, unparseable last line was dropped.
    torn_tail: bool,
}

/// The rows of steps ≤ `step` of a metrics file, in order. Rows are written in increasing
/// step order, so everything from the first later row on is dropped.
fn rows_up_to(text: &[u8], step: u64) -> Result<Kept> {
    let mut kept = Vec::with_capacity(text.len());
    for (index, line) in text.split_inclusive(|&b| b == b'\n').enumerate() {
        let terminated = line.ends_with(b"\n");
        let row = std::str::from_utf8(line)
            .map_err(anyhow::Error::from)
            .and_then(|l| serde_json::from_str::<MetricsRow>(l.trim_end()).map_err(Into::into));
        match row {
            Ok(row) if row.step <= step => {
                kept.extend_from_slice(line);
                if !terminated {
                    kept.push(b'\n');
                }
            }
            Ok(_) => break,
            Err(_) if !terminated => return Ok(Kept { text: kept, torn_tail: true }),
            Err(err) => bail!("line {} is not a metrics row: {err}", index + 1),
        }
    }
    Ok(Kept { text: kept, torn_tail: false })
}

/// Reads a metrics file: a row that does not parse is an error naming its line (a last line
/// cut short by a crash is left out).
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRow>> {
    let bytes = fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    let kept = rows_up_to(&bytes, u64::MAX).with_context(|| format!("`{}`", path.display()))?;
    kept.text
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_slice(line).context("metrics row"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(step: u64, loss: f32) -> MetricsRow {
        MetricsRow {
            step,
            loss,
            ce: loss,
            balance: 0.0,
            val_loss: step.is_multiple_of(2).then_some(loss + 0.5),
            lr: 1e-3,
            temperature: 5.0,
            tokens_per_s: 1000.0,
            grad_norm: 0.3,
            depth_agree: None,
            depth_margin: None,
        }
    }

    #[test]
    fn a_bad_row_is_an_error_a_torn_last_line_is_dropped_and_lines_stay_whole() {
        let line = |step| format!("{}\n", serde_json::to_string(&row(step, 1.5)).unwrap());
        let (one, two, three) = (line(1), line(2), line(3));
        let text = format!("{one}{two}{three}");
        let kept = rows_up_to(text.as_bytes(), 2).unwrap();
        assert_eq!(kept, Kept { text: format!("{one}{two}").into_bytes(), torn_tail: false });
        let err = rows_up_to(format!("{one}not json\n{two}").as_bytes(), 9).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        let torn = rows_up_to(format!("{one}{{\"step\":2,\"lo").as_bytes(), 9).unwrap();
        assert_eq!(torn, Kept { text: one.clone().into_bytes(), torn_tail: true });
        // A whole row whose newline was lost gets it back, so the next append starts a line.
        let unterminated = rows_up_to(one.trim_end().as_bytes(), 9).unwrap();
        assert_eq!(unterminated.text, one.into_bytes());
    }

    #[test]
    fn depth_router_columns_are_per_routed_layer_and_absent_without_one() {
        assert_eq!(depth_router_columns(&[DepthAgreement::default(); 3]), (None, None));
        let layers = [
            DepthAgreement { tokens: 4, agree: 3, margin_sum: 2.0 },
            DepthAgreement { tokens: 4, agree: 0, margin_sum: 0.0 },
        ];
        let (agree, margin) = depth_router_columns(&layers);
        assert_eq!(agree, Some(vec![0.75, 0.0]));
        assert_eq!(margin, Some(vec![0.5, 0.0]));
        let mut with = row(1, 2.0);
        (with.depth_agree, with.depth_margin) = (agree, margin);
        let line = serde_json::to_string(&with).unwrap();
        assert!(line.contains("\"depth_agree\":[0.75,0.0]"), "{line}");
        assert_eq!(serde_json::from_str::<MetricsRow>(&line).unwrap(), with);
        assert!(!serde_json::to_string(&row(1, 2.0)).unwrap().contains("depth_"));
    }

    #[test]
    fn resume_drops_rows_after_the_checkpoint_and_floats_round_trip() {
        let dir = std::env::temp_dir().join(format!("vffn-metrics-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let mut log = MetricsLog::create(&dir).unwrap();
        let losses = [5.545_177_5f32, 1.0 / 3.0, 2.718_281_7, 0.1 + 0.2];
        for (i, &loss) in losses.iter().enumerate() {
            log.write(&row(i as u64 + 1, loss)).unwrap();
        }
        drop(log);
        let mut log = MetricsLog::resume(&dir, 2).unwrap();
        log.write(&row(3, 9.0)).unwrap();
        drop(log);
        let rows = read_metrics(&dir.join(METRICS_FILE)).unwrap();
        assert_eq!(rows.iter().map(|r| r.step).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(rows[0].loss.to_bits(), losses[0].to_bits());
        assert_eq!(rows[1].loss.to_bits(), losses[1].to_bits());
        assert_eq!(rows[1].val_loss, Some(losses[1] + 0.5));
        assert_eq!(rows[2].loss, 9.0);
        fs::remove_dir_all(&dir).unwrap();
    }
}
