//! AdamW with decoupled weight decay and global gradient-norm clipping. The learning rate is
//! an argument of every step; its schedule is the model's (`vffn_model::schedule`).

use rayon::prelude::*;

use crate::param::ParamStore;
use crate::{Error, Result};

/// Elements per parallel task: fixed, so results never depend on the thread count.
const CHUNK: usize = 16 * 1024;

/// AdamW hyper-parameters (the learning rate is passed to each step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }
    }
}

/// AdamW state as plain data, in parameter order, for checkpoints.
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWState {
    /// Number of steps taken (bias correction uses it).
    pub step: u64,
    /// Parameter names, checked on restore.
    pub names: Vec<String>,
    /// First moments, one vector per parameter.
    pub m: Vec<Vec<f32>>,
    /// Second moments, one vector per parameter.
    pub v: Vec<Vec<f32>>,
}

/// The AdamW optimizer (Loshchilov & Hutter): p ← p·(1 − lr·wd) − lr·m̂/(√v̂ + ε).
#[derive(Clone, Debug)]
pub struct AdamW {
    cfg: AdamWConfig,
    state: AdamWState,
}

impl AdamW {
    /// Fresh state (zero moments) for every parameter of `store`.
    pub fn new(cfg: AdamWConfig, store: &ParamStore) -> AdamW {
        let names = store.iter().map(|(_, p)| p.name().to_string()).collect();
        let m: Vec<Vec<f32>> = store.iter().map(|(_, p)| vec![0.0; p.numel()]).collect();
        AdamW { cfg, state: AdamWState { step: 0, names, v: m.clone(), m } }
    }

    /// Restores a saved state; names and sizes must match `store`.
    pub fn from_state(cfg: AdamWConfig, state: AdamWState, store: &ParamStore) -> Result<AdamW> {
        if state.names.len() != store.len()
            || state.m.len() != store.len()
            || state.v.len() != store.len()
        {
            return Err(Error::ParamState {
                name: String::new(),
                what: format!(
                    "optimizer state has {} names / {} m / {} v, store has {} parameters",
                    state.names.len(),
                    state.m.len(),
                    state.v.len(),
                    store.len()
                ),
            });
        }
        for (i, (_, p)) in store.iter().enumerate() {
            if state.names[i] != p.name() {
                return Err(Error::ParamState {
                    name: p.name().to_string(),
                    what: format!("optimizer state has {:?} at this position", state.names[i]),
                });
            }
            if state.m[i].len() != p.numel() || state.v[i].len() != p.numel() {
                return Err(Error::ParamState {
                    name: p.name().to_string(),
                    what: format!(
                        "moments have {}/{} elements, parameter has {}",
                        state.m[i].len(),
                        state.v[i].len(),
                        p.numel()
                    ),
                });
            }
        }
        Ok(AdamW { cfg, state })
    }

    pub fn config(&self) -> AdamWConfig {
        self.cfg
    }
    pub fn state(&self) -> &AdamWState {
        &self.state
    }
    pub fn into_state(self) -> AdamWState {
        self.state
    }
    pub fn step_count(&self) -> u64 {
        self.state.step
    }

    /// One update with learning rate `lr` from the gradients in `store`. Parameters without a
    /// gradient are left alone (their moments too). Decay is skipped for `no_decay` parameters.
    pub fn step(&mut self, store: &mut ParamStore, lr: f32) -> Result<()> {
        if store.len() != self.state.m.len() {
            return Err(Error::ParamState {
                name: String::new(),
                what: format!(
                    "optimizer built for {} parameters, store has {}",
                    self.state.m.len(),
                    store.len()
                ),
            });
        }
        self.state.step += 1;
        let t = self.state.step as i32;
        let AdamWConfig { beta1, beta2, eps, weight_decay } = self.cfg;
        let bc1 = 1.0 - (beta1 as f64).powi(t);
        let bc2 = 1.0 - (beta2 as f64).powi(t);
        let step_size = (lr as f64 / bc1) as f32;
        let inv_sqrt_bc2 = (1.0 / bc2.sqrt()) as f32;
        for (i, (_, p)) in store.iter_mut().enumerate() {
            let decay = if p.no_decay() { 1.0 } else { 1.0 - lr * weight_decay };
            let (data, grad) = p.data_and_grad();
            let Some(grad) = grad else { continue };
            let (m, v) = (&mut self.state.m[i], &mut self.state.v[i]);
            data.par_chunks_mut(CHUNK)
                .zip(grad.par_chunks(CHUNK))
                .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
                .for_each(|((p, g), (m, v))| {
                    for j in 0..p.len() {
                        let gj = g[j];
                        m[j] = beta1 * m[j] + (1.0 - beta1) * gj;
                        v[j] = beta2 * v[j] + (1.0 - beta2) * gj * gj;
                        let denom = v[j].sqrt() * inv_sqrt_bc2 + eps;
                        p[j] = p[j] * decay - step_size * m[j] / denom;
                    }
                });
        }
        Ok(())
    }
}

/// Global L2 norm of all gradients (f64, summed in parameter order over fixed chunks).
pub fn grad_norm(store: &ParamStore) -> f32 {
    let mut total = 0.0f64;
    for (_, p) in store.iter() {
        if let Some(g) = p.grad() {
            let partials: Vec<f64> = g
                .par_chunks(CHUNK)
                .map(|c| c.iter().map(|&x| x as f64 * x as f64).sum::<f64>())
                .collect();
            total += partials.iter().sum::<f64>();
        }
    }
    total.sqrt() as f32
}

/// Scales all gradients so their global L2 norm is at most `max_norm`; returns the norm before
/// clipping.
pub fn clip_grad_norm(store: &mut ParamStore, max_norm: f32) -> f32 {
    let norm = grad_norm(store);
    if norm.is_finite() && norm > max_norm {
        store.scale_grads(max_norm / (norm + 1e-6));
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::needless_range_loop)]
    fn adamw_matches_reference_and_state_round_trips() {
        let mut store = ParamStore::new();
        let w = store.add("w", &[3], vec![1.0, -2.0, 0.5], false).unwrap();
        let n = store.add("norm", &[2], vec![1.0, 1.0], true).unwrap();
        let cfg = AdamWConfig::default();
        let mut opt = AdamW::new(cfg, &store);
        // Reference in f64 for two steps.
        let (mut p, mut m, mut v) = ([1.0f64, -2.0, 0.5], [0.0f64; 3], [0.0f64; 3]);
        let grads = [[0.1f32, -0.2, 0.3], [0.05, 0.4, -0.1]];
        let lr = 0.01f32;
        for (s, g) in grads.iter().enumerate() {
            store.zero_grad();
            store.get_mut(w).set_grad(Some(crate::Buffer::from_vec(g.to_vec())));
            store.get_mut(n).set_grad(Some(crate::Buffer::from_vec(vec![1.0, -1.0])));
            opt.step(&mut store, lr).unwrap();
            let t = (s + 1) as i32;
            for j in 0..3 {
                let gj = g[j] as f64;
                m[j] = 0.9 * m[j] + 0.1 * gj;
                v[j] = 0.95 * v[j] + 0.05 * gj * gj;
                let mh = m[j] / (1.0 - 0.9f64.powi(t));
                let vh = v[j] / (1.0 - 0.95f64.powi(t));
                p[j] = p[j] * (1.0 - 0.01 * 0.1) - 0.01 * mh / (vh.sqrt() + 1e-8);
            }
        }
        for j in 0..3 {
            assert!((store.get(w).data()[j] as f64 - p[j]).abs() < 1e-6, "{j}");
        }
        // Norm weights: no decay, so two sign-steady steps move them by exactly ~2·lr.
        let nd = store.get(n).data();
        assert!((nd[0] - (1.0 - 2.0 * lr)).abs() < 1e-5 && (nd[1] - (1.0 + 2.0 * lr)).abs() < 1e-5);

        // Save, restore into a fresh optimizer, take the same step on both: bitwise equal.
        let state = opt.state().clone();
        let mut store2 = ParamStore::new();
        for (_, p) in store.iter() {
            store2.add(p.name(), p.shape(), p.data().to_vec(), p.no_decay()).unwrap();
        }
        let mut opt2 = AdamW::from_state(cfg, state, &store2).unwrap();
        for s in [&mut store, &mut store2] {
            s.zero_grad();
            s.get_mut(w).set_grad(Some(crate::Buffer::from_vec(vec![0.3, 0.3, -0.3])));
        }
        opt.step(&mut store, lr).unwrap();
        opt2.step(&mut store2, lr).unwrap();
        assert_eq!(store.get(w).data(), store2.get(w).data());
        assert_eq!(opt.state(), opt2.state());
        // A mismatched store is a typed error.
        let mut other = ParamStore::new();
        other.add("x", &[3], vec![0.0; 3], false).unwrap();
        other.add("norm", &[2], vec![0.0; 2], true).unwrap();
        assert!(AdamW::from_state(cfg, opt.into_state(), &other).is_err());
    }

    #[test]
    fn clipping_scales_to_max_norm() {
        let mut store = ParamStore::new();
        let a = store.add("a", &[2], vec![0.0; 2], false).unwrap();
        let b = store.add("b", &[1], vec![0.0], false).unwrap();
        store.get_mut(a).set_grad(Some(crate::Buffer::from_vec(vec![3.0, 0.0])));
        store.get_mut(b).set_grad(Some(crate::Buffer::from_vec(vec![4.0])));
        let norm = clip_grad_norm(&mut store, 1.0);
        assert!((norm - 5.0).abs() < 1e-6);
        assert!((grad_norm(&store) - 1.0).abs() < 1e-5);
        assert!((store.get(a).grad().unwrap()[0] - 0.6).abs() < 1e-5);
        let norm = clip_grad_norm(&mut store, 10.0);
        assert!((norm - 1.0).abs() < 1e-5);
        assert!((grad_norm(&store) - 1.0).abs() < 1e-5);
    }
}
