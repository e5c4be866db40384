//! A process-wide pool of f32 buffers keyed by size class. A training step allocates the same
//! shapes every step, so after the first step nearly every `Buffer` comes back from the pool.
//!
//! Lengths are rounded up to a size class (exact below 256 floats in steps of 16; above, four
//! classes per power of two, so at most 25% is wasted). Routed shapes (tokens per expert) change
//! every step; with exact-length keys they would always miss, allocate fresh zero pages (page
//! faults were ~28% of a versatile training step) and fill the pool with sizes never asked again.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::Mutex;

use rayon::prelude::*;

/// Buffers kept per size class; beyond it a returned buffer is freed.
const MAX_PER_CLASS: usize = 64;
/// Total pooled floats (1 GiB); beyond it returned buffers are freed.
const MAX_POOLED_FLOATS: usize = 1 << 28;
/// Below this length classes are multiples of 16 floats.
const SMALL: usize = 256;

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

/// Class step for a length: 16 below [`SMALL`], else a quarter of its highest power of two.
fn class_step(len: usize) -> usize {
    if len < SMALL {
        16
    } else {
        (1usize << (usize::BITS - 1 - len.leading_zeros())) / 4
    }
}

/// Smallest size class ≥ `len` (what a request of `len` floats allocates).
fn class_up(len: usize) -> usize {
    let up = len.next_multiple_of(class_step(len));
    // Rounding up may cross into the next power of two, whose step is coarser; `up` is then that
    // power of two itself, which is a class of both.
    debug_assert_eq!(up % class_step(up), 0);
    up
}

/// Largest size class ≤ `len` (where a returned allocation of `len` floats is filed).
fn class_down(len: usize) -> usize {
    len - len % class_step(len)
}

fn take(len: usize) -> Option<Vec<f32>> {
    let class = class_up(len);
    with_pool(|p| match p.free.get_mut(&class).and_then(Vec::pop) {
        Some(v) => {
            p.pooled_floats -= v.len();
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
    let class = class_down(len);
    with_pool(|p| {
        let list = p.free.entry(class).or_default();
        if list.len() < MAX_PER_CLASS && p.pooled_floats + len <= MAX_POOLED_FLOATS {
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

/// An owned f32 buffer that returns its memory to the pool when dropped. Its allocation may be
/// longer than its length (a size class); only the first `len` floats are visible.
#[derive(Debug, Default)]
pub struct Buffer {
    data: Vec<f32>,
    len: usize,
}

impl Buffer {
    /// A buffer of `len` elements whose contents are unspecified (recycled): overwrite them all.
    pub fn uninit(len: usize) -> Buffer {
        if len == 0 {
            return Buffer::default();
        }
        match take(len) {
            Some(data) => Buffer { data, len },
            None => Buffer { data: vec![0.0; class_up(len)], len },
        }
    }

    /// A zero-filled buffer.
    pub fn zeros(len: usize) -> Buffer {
        let mut b = Buffer::uninit(len);
        b.fill(0.0);
        b
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
        par_copy(&mut b, src);
        b
    }

    /// Adopts a vector (it joins the pool when dropped).
    pub fn from_vec(data: Vec<f32>) -> Buffer {
        let len = data.len();
        Buffer { data, len }
    }

    /// Takes the vector out (it will not return to the pool).
    pub fn into_vec(mut self) -> Vec<f32> {
        let mut v = std::mem::take(&mut self.data);
        v.truncate(self.len);
        v
    }
}

impl Clone for Buffer {
    fn clone(&self) -> Buffer {
        Buffer::copy_of(self)
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
        &self.data[..self.len]
    }
}

impl DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.data[..self.len]
    }
}

/// Floats per task of [`par_copy`] (below this a copy stays on the calling thread).
const COPY_CHUNK: usize = 1 << 15;

/// `dst.copy_from_slice(src)`, split over the thread pool when large (a serial multi-megabyte
/// copy leaves the other threads idle).
pub fn par_copy(dst: &mut [f32], src: &[f32]) {
    assert_eq!(dst.len(), src.len(), "par_copy: lengths differ");
    if src.len() <= COPY_CHUNK {
        dst.copy_from_slice(src);
        return;
    }
    dst.par_chunks_mut(COPY_CHUNK)
        .zip(src.par_chunks(COPY_CHUNK))
        .for_each(|(d, s)| d.copy_from_slice(s));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropped_buffers_are_reused() {
        // A size class no other test uses (3,145,729..=3,670,016), so parallel tests do not
        // steal it.
        let len = 3_300_001;
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

    #[test]
    fn size_classes_bound_the_waste_and_nest() {
        for len in (1..5000).chain([65_536, 65_537, 1 << 20, (1 << 20) + 3, 3_000_001]) {
            let (up, down) = (class_up(len), class_down(len));
            assert!(up >= len && down <= len, "{len}: up {up} down {down}");
            // Classes are fixed points of both roundings.
            assert_eq!(class_up(up), up, "{len}");
            assert_eq!(class_down(up), up, "{len}");
            assert_eq!(
                class_up(down.max(1)),
                down.max(1).next_multiple_of(class_step(down.max(1)))
            );
            if len >= SMALL {
                assert!(up - len <= len / 4, "{len}: class {up} wastes more than 25%");
            } else {
                assert!(up - len < 16);
            }
        }
    }

    #[test]
    fn nearby_lengths_share_a_class_buffer() {
        // Two lengths in one class (an odd class no other test uses): the second reuses the first.
        let (a, b) = (4_200_001, 4_300_777); // class 5,242,880, no other test's

        assert_eq!(class_up(a), class_up(b));
        let first = Buffer::full(a, 1.0);
        let ptr = first.as_ptr();
        drop(first);
        let second = Buffer::full(b, 2.0);
        assert_eq!(second.as_ptr(), ptr);
        assert_eq!(second.len(), b);
        assert!(second.iter().all(|&x| x == 2.0));
        let v = second.into_vec();
        assert_eq!(v.len(), b);
    }

    #[test]
    fn adopted_vectors_of_any_length_are_reused_safely() {
        let len = 9_500_011; // not a class size; filed under 8,388,608, no other test's class
        let adopted = Buffer::from_vec(vec![5.0; len]);
        assert_eq!(adopted.len(), len);
        drop(adopted);
        // Filed under the class below its length, so any request of that class fits in it.
        let want = class_down(len);
        let b = Buffer::zeros(want);
        assert_eq!(b.len(), want);
        assert!(b.iter().all(|&x| x == 0.0));
    }
}
