//! The routers' load-balancing loss (the auxiliary loss on the width path's router and the moe
//! baseline's, in the Switch-Transformer form): L_bal = E·Σ_e f_e·P_e per routed layer, where f_e is the share of the
//! N·k top-k slots given to expert e (no gradient) and P_e the mean over tokens of the softmax
//! over all E router logits; the training objective is mean CE + `balance_loss_coef`·Σ_layers L_bal.
//!
//! A training batch may run as several groups of sequences ([`crate::model::TRAIN_GROUPS`]):
//! f_e must then be of the whole batch, known only once every group has routed its tokens. So
//! the term is built in two halves: [`balance_term`] (P_e on the tape and the slot counts) during
//! each group's forward, then [`whole_batch_shares`] over the groups and [`objective`] on each.

use vffn_autograd::{Tape, Tensor};

/// One router's balance loss before the shares f_e are known.
pub(crate) struct BalanceTerm {
    /// P_e of this group's tokens. [E] on the tape
    pub mean_probs: Tensor,
    /// Top-k slots this group gave to each expert. [E]
    pub counts: Vec<f64>,
}

/// P_e (softmax over all E logits, averaged over tokens) and the slot counts behind f_e.
// logits [N, E], experts [N·k] -> P_e [E] on the tape and the slot counts
pub(crate) fn balance_term(tape: &mut Tape, logits: &Tensor, experts: &[u32]) -> BalanceTerm {
    let mut counts = vec![0.0f64; logits.cols()];
    experts.iter().for_each(|&e| counts[e as usize] += 1.0);
    let probs = tape.softmax(logits);
    let mean_probs = tape.mean_rows(&probs); // [E]
    BalanceTerm { mean_probs, counts }
}

impl BalanceTerm {
    /// E·f_e from slot counts (of the whole batch), folded into one constant vector.
    pub(crate) fn shares(counts: &[f64]) -> Vec<f32> {
        let n_experts = counts.len() as f64;
        let slots = counts.iter().sum::<f64>().max(1.0);
        counts.iter().map(|&c| (n_experts * c / slots) as f32).collect()
    }

    /// L_bal = Σ_e shares_e·P_e on the tape.
    pub(crate) fn loss(&self, tape: &mut Tape, shares: &[f32]) -> Tensor {
        let share = Tensor::from_vec(&[shares.len()], shares.to_vec()).expect("E elements");
        let weighted = tape.mul(&self.mean_probs, &share);
        tape.sum(&weighted)
    }
}

/// E·f_e of the whole batch per routed layer: the slot counts of every group's term of that
/// layer summed in group order. `groups[g][l]` is group g's term of routed layer l.
pub(crate) fn whole_batch_shares(groups: &[&[BalanceTerm]]) -> Vec<Vec<f32>> {
    let Some(first) = groups.first() else { return Vec::new() };
    (0..first.len())
        .map(|l| {
            let mut counts = first[l].counts.clone();
            for group in &groups[1..] {
                counts.iter_mut().zip(&group[l].counts).for_each(|(c, x)| *c += x);
            }
            BalanceTerm::shares(&counts)
        })
        .collect()
}

/// The training objective: loss = ce + coef·Σ_layers L_bal (layers in order); returns it and
/// Σ_layers L_bal (before the coefficient; 0 without a router).
pub(crate) fn objective(
    tape: &mut Tape,
    ce: &Tensor,
    terms: &[BalanceTerm],
    shares: &[Vec<f32>],
    coef: f32,
) -> (Tensor, f32) {
    let mut total: Option<Tensor> = None;
    for (term, share) in terms.iter().zip(shares) {
        let b = term.loss(tape, share);
        total = Some(match total {
            Some(sum) => tape.add(&sum, &b),
            None => b,
        });
    }
    match total {
        Some(total) => {
            let weighted = tape.scale(&total, coef);
            (tape.add(ce, &weighted), total.item())
        }
        None => (ce.clone(), 0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loss as the formula reads, in f64 without a tape: E·Σ_e f_e·P_e.
    fn reference(logits: &[f32], n_experts: usize, experts: &[u32]) -> f64 {
        let rows = logits.len() / n_experts;
        let mut p = vec![0.0f64; n_experts];
        for row in logits.chunks_exact(n_experts) {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
            let z: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            for (pe, &v) in p.iter_mut().zip(row) {
                *pe += (v as f64 - max).exp() / z / rows as f64;
            }
        }
        let mut f = vec![0.0f64; n_experts];
        experts.iter().for_each(|&e| f[e as usize] += 1.0 / experts.len() as f64);
        n_experts as f64 * f.iter().zip(&p).map(|(f, p)| f * p).sum::<f64>()
    }

    fn logits() -> (Vec<f32>, Vec<u32>) {
        // 4 tokens, E = 3, top-2 slots (distinct experts per token).
        let logits = vec![0.3, -1.2, 2.0, 1.5, 0.1, -0.4, -0.7, 0.9, 0.2, 0.0, 0.0, 1.0];
        let experts = vec![2, 0, 0, 1, 1, 2, 2, 0];
        (logits, experts)
    }

    #[test]
    fn the_term_and_its_shares_give_the_formula() {
        let (values, experts) = logits();
        let mut tape = Tape::new();
        let logits = Tensor::from_vec(&[4, 3], values.clone()).unwrap();
        let term = balance_term(&mut tape, &logits, &experts);
        let loss = term.loss(&mut tape, &BalanceTerm::shares(&term.counts)).item() as f64;
        let want = reference(&values, 3, &experts);
        assert!((loss - want).abs() < 1e-6, "{loss} vs {want}");
    }

    #[test]
    fn shares_of_two_groups_equal_the_shares_of_the_whole_batch() {
        let (values, experts) = logits();
        let mut tape = Tape::new();
        let whole = Tensor::from_vec(&[4, 3], values.clone()).unwrap();
        let whole = [balance_term(&mut tape, &whole, &experts)];
        let first = Tensor::from_vec(&[1, 3], values[..3].to_vec()).unwrap();
        let rest = Tensor::from_vec(&[3, 3], values[3..].to_vec()).unwrap();
        let first = [balance_term(&mut tape, &first, &experts[..2])];
        let rest = [balance_term(&mut tape, &rest, &experts[2..])];
        let split = whole_batch_shares(&[&first, &rest]);
        assert_eq!(split, whole_batch_shares(&[&whole]));
        assert_eq!(split, vec![BalanceTerm::shares(&[3.0, 2.0, 3.0])]);
    }

    #[test]
    fn the_objective_adds_the_coefficient_times_the_sum_over_layers() {
        let (values, experts) = logits();
        let mut tape = Tape::new();
        let logits = Tensor::from_vec(&[4, 3], values.clone()).unwrap();
        let terms = [
            balance_term(&mut tape, &logits, &experts),
            balance_term(&mut tape, &logits, &experts),
        ];
        let shares = whole_batch_shares(&[&terms]);
        let ce = Tensor::scalar(2.5);
        let (loss, sum) = objective(&mut tape, &ce, &terms, &shares, 0.1);
        let one = reference(&values, 3, &experts);
        assert!((sum as f64 - 2.0 * one).abs() < 1e-5, "{sum} vs {}", 2.0 * one);
        assert!((loss.item() as f64 - (2.5 + 0.2 * one)).abs() < 1e-5);
        let (alone, none) = objective(&mut tape, &ce, &[], &[], 0.1);
        assert_eq!((alone.item(), none), (2.5, 0.0));
    }
}
