//! Incremental decoding with a KV cache: one token per step, logits of the next byte. Each layer
//! caches the RoPE-rotated keys and the values of every past position, so a step costs one
//! token's projections plus attention over the cache; results equal the full inference forward.

use vffn_autograd::{Tape, Tensor};
use vffn_kernels::attention::attention_decode;

use crate::blocks::attention_with;
use crate::fused::ComposedReason;
use crate::model::{Model, ModelError};

impl Model {
    /// Incremental decoding with a KV cache of up to `max_len` tokens.
    pub fn decoder(&self, max_len: usize) -> Decoder<'_> {
        Decoder::new(self, max_len)
    }
}

/// A KV-cache decoder over a [`Model`] (see [`Model::decoder`]).
pub struct Decoder<'a> {
    model: &'a Model,
    max_len: usize,
    /// Tokens fed so far (the position of the next one).
    len: usize,
    /// Per layer: rotated keys [max_len, d] and values [max_len, d].
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    /// Per layer: the loop count the last token chose (None without a depth router).
    depths: Vec<Option<u8>>,
}

impl<'a> Decoder<'a> {
    fn new(model: &'a Model, max_len: usize) -> Decoder<'a> {
        let size = max_len * model.config.d_model;
        let layers = model.config.n_layers;
        Decoder {
            model,
            max_len,
            len: 0,
            keys: (0..layers).map(|_| vec![0.0; size]).collect(),
            values: (0..layers).map(|_| vec![0.0; size]).collect(),
            depths: vec![None; layers],
        }
    }

    /// Tokens fed so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Capacity in tokens.
    pub fn max_len(&self) -> usize {
        self.max_len
    }

    /// Per layer: the loop count 1..D the last pushed token chose, as the full forward routes
    /// it (None for layers without a depth router, or before the first push).
    pub fn depths(&self) -> &[Option<u8>] {
        &self.depths
    }

    /// Forgets every cached token.
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Feeds one token; returns the logits [V] of the next one.
    pub fn push(&mut self, token: u32) -> Result<Vec<f32>, ModelError> {
        let model = self.model;
        let cfg = &model.config;
        if token as usize >= cfg.vocab_size {
            return Err(ModelError::TokenOutOfRange {
                token,
                position: self.len,
                vocab_size: cfg.vocab_size,
            });
        }
        if self.len >= self.max_len {
            return Err(ModelError::DecoderFull { max_len: self.max_len });
        }
        let (d, pos) = (cfg.d_model, self.len);
        let mut tape = Tape::no_grad();
        let mut x = model.embed(&mut tape, &[token]); // [1, d]
        for layer in 0..cfg.n_layers {
            // Not packed: one token's products read each weight once, in place (bf16 or f32).
            let w = model.load_layer_composed(&mut tape, layer, ComposedReason::Decoding);
            let (keys, values) = (&mut self.keys[layer], &mut self.values[layer]);
            let a = attention_with(&mut tape, cfg, &w, &x, &[pos], |_, qkv| {
                let qkv = qkv.data();
                keys[pos * d..(pos + 1) * d].copy_from_slice(&qkv[d..2 * d]);
                values[pos * d..(pos + 1) * d].copy_from_slice(&qkv[2 * d..3 * d]);
                let mut attended = vec![0.0f32; d];
                attention_decode(
                    cfg.n_heads,
                    cfg.head_dim(),
                    &qkv[..d],
                    keys,
                    values,
                    pos + 1,
                    &mut attended,
                );
                Tensor::from_vec(&[1, d], attended).expect("[1, d]")
            });
            let x_attn = tape.add(&x, &a);
            let (out, depth) = model.infer_ffn_part(&mut tape, &w, &x_attn);
            self.depths[layer] = depth.first().copied();
            x = out;
        }
        self.len += 1;
        Ok(model.head(&mut tape, &x).to_vec())
    }
}
