//! A process-wide pool of f32 buffers keyed by exact length. A training step allocates the same
//! sizes every step, so after the first step nearly every `Buffer` comes back from the pool.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

/// Buffers kept per length; beyond it a returned buffer is freed.
const MAX_PER_LEN: usize = 64;
/// Total pooled floats (1 GiB); beyond it returned buffers are freed.
const MAX_POOLED_FLOATS: usize = 1 << 28;

struct Pool {
    free: HashMap<usize, Vec<Vec<f32>>>,
    pooled_floats: usize,
    hits: u64,
    misses: u64,
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);

fn with_pool<R>(f: impl FnOnce(&mut Pool) -> R) -> R {
    // A panic while holding the lock leaves the pool consistent (plain pushes/pops), so recover.
    let mut guard = POOL.lock().unwrap_or_else(|e| e.into_inner());
    let pool = guard.get_or_insert_with(|| Pool {
        free: HashMap::new(),
        pooled_floats: 0,
        hits: 0,
        misses: 0,
    });
    f(pool)
}

fn take(len: usize) -> Option<Vec<f32>> {
    if len == 0 {
        return Some(Vec::new());
    }
    with_pool(|p| match p.free.get_mut(&len).and_then(Vec::pop) {
        Some(v) => {
            p.pooled_floats -= len;
            p.hits += 1;
            Some(v)
        }
        None => {
            p.misses += 1;
            None
        }
    })
}

fn give_back(v: Vec<f32>) {
    let len = v.len();
    if len == 0 {
        return;
    }
    with_pool(|p| {
        let list = p.free.entry(len).or_default();
        if list.len() < MAX_PER_LEN && p.pooled_floats + len <= MAX_POOLED_FLOATS {
            p.pooled_floats += len;
            list.push(v);
        }
    });
}

/// Pool counters: (hits, misses, floats currently pooled).
pub fn stats() -> (u64, u64, usize) {
    with_pool(|p| (p.hits, p.misses, p.pooled_floats))
}

/// Frees every pooled buffer (e.g. between phases with different shapes).
pub fn clear() {
    with_pool(|p| {
        p.free.clear();
        p.pooled_floats = 0;
    });
}

/// An owned f32 buffer that returns its memory to the pool when dropped.
#[derive(Debug, Default)]
pub struct Buffer {
    data: Vec<f32>,
}

impl Buffer {
    /// A buffer of `len` elements whose contents are unspecified (recycled): overwrite them all.
    pub fn uninit(len: usize) -> Buffer {
        match take(len) {
            Some(data) => Buffer { data },
            None => Buffer { data: vec![0.0; len] },
        }
    }

    /// A zero-filled buffer.
    pub fn zeros(len: usize) -> Buffer {
        match take(len) {
            Some(mut data) => {
                data.fill(0.0);
                Buffer { data }
            }
            None => Buffer { data: vec![0.0; len] },
        }
    }

    /// A buffer filled with `value`.
    pub fn full(len: usize, value: f32) -> Buffer {
        let mut b = Buffer::uninit(len);
        b.fill(value);
        b
    }

    /// A pooled copy of `src`.
    pub fn copy_of(src: &[f32]) -> Buffer {
        let mut b = Buffer::uninit(src.len());
        b.copy_from_slice(src);
        b
    }

    /// Adopts a vector (it joins the pool when dropped).
    pub fn from_vec(data: Vec<f32>) -> Buffer {
        Buffer { data }
    }

    /// Takes the vector out (it will not return to the pool).
    pub fn into_vec(mut self) -> Vec<f32> {
        std::mem::take(&mut self.data)
    }
}

impl Clone for Buffer {
    fn clone(&self) -> Buffer {
        Buffer::copy_of(&self.data)
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.data));
    }
}

impl Deref for Buffer {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.data
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_buffers_are_reused() {
        // An odd length no other test uses, so parallel tests do not steal it.
        let len = 12_347;
        let b = Buffer::full(len, 3.0);
        let ptr = b.as_ptr();
        drop(b);
        let c = Buffer::uninit(len);
        assert_eq!(c.as_ptr(), ptr);
        let z = {
            drop(c);
            Buffer::zeros(len)
        };
        assert!(z.iter().all(|&x| x == 0.0));
    }
}
