//! The execution strategy of a training step: the batch as [`TRAIN_GROUPS`] groups of whole
//! sequences, each group's forward and backward one parallel task on its own tape, the balance
//! shares f_e of the whole batch between the two phases (docs/architecture.md, "Training steps
//! by sequence groups"). The architecture itself is in `model.rs`.

use rayon::prelude::*;
use vffn_autograd::{Gradients, Rng, Tape, Tensor};

use super::{Model, ModelError};
use crate::balance::{self, whole_batch_shares, BalanceTerm};
use crate::data::Batch;
use crate::versatile::DepthAgreement;

/// Groups of whole sequences a training batch is split into ([`Model::train_step_grads`] as used
/// by `vffn train` and `vffn bench train`): each group's forward and backward runs as one
/// parallel task on its own tape, so the ops of a step run on half the rows each instead of
/// splitting every op over the threads (measured 1.11× dense, 1.08× versatile at two threads,
/// no change at one). A constant, not the thread count: the same seed gives the same run on any
/// number of threads.
pub const TRAIN_GROUPS: usize = 2;

/// Gradients of one training step (see [`Model::train_step_grads`]).
pub struct StepGrads {
    /// One per group of sequences, in group order.
    pub grads: Vec<Gradients>,
    /// mean CE + balance_loss_coef · Σ_layers balance over the whole batch.
    pub loss: f32,
    /// Mean cross-entropy (nats).
    pub ce: f32,
    /// Σ over routed layers of the balance loss (before the coefficient).
    pub balance: f32,
    /// Per layer, over the whole batch: the depth router's training picks against its argmax
    /// (zero for layers without a depth router).
    pub depth_agreement: Vec<DepthAgreement>,
}

/// One group's forward, waiting for the batch-level balance shares.
struct GroupPart {
    tape: Tape,
    ce: Tensor,
    terms: Vec<BalanceTerm>,
    agreement: Vec<DepthAgreement>,
    weight: f32,
}

impl Model {
    /// One training step's gradients, the batch run as `groups` groups of whole sequences in
    /// parallel (each on its own tape; clamped to 1..=batch size). The objective is the one of
    /// [`Model::train_forward`] on the whole batch — mean CE over all tokens plus the balance loss
    /// with f_e and P_e of the whole batch — so groups change only the float summation order and,
    /// when `noise` is given, the Gumbel draws (group g draws from the g-th fork of `noise`).
    /// Gradients come back per group, in group order: [`vffn_autograd::ParamStore::accumulate_grads`]
    /// them in that order for a result that does not depend on the thread count.
    pub fn train_step_grads(
        &self,
        batch: &Batch,
        temperature: f32,
        noise: Option<&mut Rng>,
        groups: usize,
    ) -> Result<StepGrads, ModelError> {
        self.check_train_inputs(batch, temperature)?;
        let (b, t) = (batch.batch_size, batch.seq_len);
        let groups = groups.clamp(1, b.max(1));
        if groups == 1 {
            let mut tape = Tape::new();
            let out = self.train_forward(&mut tape, batch, temperature, noise)?;
            let loss = out.loss.item();
            let grads = tape.backward(&out.loss)?;
            return Ok(StepGrads {
                grads: vec![grads],
                loss,
                ce: out.ce,
                balance: out.balance,
                depth_agreement: out.depth_agreement,
            });
        }
        // Group g holds rows [g·b/G, (g+1)·b/G): sizes differ by at most one.
        let bounds: Vec<usize> = (0..=groups).map(|g| g * b / groups).collect();
        let mut rngs: Vec<Option<Rng>> = match noise {
            Some(rng) => (0..groups).map(|_| Some(rng.fork())).collect(),
            None => (0..groups).map(|_| None).collect(),
        };
        let parts: Vec<GroupPart> = rngs
            .par_iter_mut()
            .enumerate()
            .map(|(g, rng)| {
                let (r0, r1) = (bounds[g], bounds[g + 1]);
                let sub = Batch {
                    batch_size: r1 - r0,
                    seq_len: t,
                    inputs: batch.inputs[r0 * t..r1 * t].to_vec(),
                    targets: batch.targets[r0 * t..r1 * t].to_vec(),
                    target_difficulty: None,
                };
                let mut tape = Tape::new();
                let (ce, _, trunk) = self.train_part(&mut tape, &sub, temperature, rng.as_mut());
                let weight = (r1 - r0) as f32 / b as f32;
                GroupPart { tape, ce, terms: trunk.balance, agreement: trunk.agreement, weight }
            })
            .collect();
        let mut depth_agreement = vec![DepthAgreement::default(); self.layers.len()];
        for part in &parts {
            depth_agreement.iter_mut().zip(&part.agreement).for_each(|(a, p)| a.merge(p));
        }
        // f_e of the whole batch, per routed layer.
        let group_terms: Vec<&[BalanceTerm]> = parts.iter().map(|p| &p.terms[..]).collect();
        let shares = whole_batch_shares(&group_terms);
        let coef = self.config.balance_loss_coef;
        let results: Vec<Result<(Gradients, f32, f32, f32), ModelError>> = parts
            .into_par_iter()
            .map(|mut part| {
                let (loss, balance) =
                    balance::objective(&mut part.tape, &part.ce, &part.terms, &shares, coef);
                let values = (loss.item(), part.ce.item(), balance);
                // Group losses are means over the group's tokens: weighted by its token share.
                let grads = part.tape.backward_with_grad(&loss, &[part.weight])?;
                Ok((grads, part.weight * values.0, part.weight * values.1, part.weight * values.2))
            })
            .collect();
        let mut out = StepGrads {
            grads: Vec::with_capacity(groups),
            loss: 0.0,
            ce: 0.0,
            balance: 0.0,
            depth_agreement,
        };
        for r in results {
            let (grads, loss, ce, balance) = r?;
            out.grads.push(grads);
            out.loss += loss;
            out.ce += ce;
            out.balance += balance;
        }
        Ok(out)
    }
}
