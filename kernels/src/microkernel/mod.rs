//! Register-blocked micro-kernels: one `MR × NR` tile of `C = alpha·A·B + beta·C`.
//!
//! B is always packed in 16-wide panels (NR = 16, shared by every kernel); each kernel has its own
//! MR and reads one or two panels per call (`KernelKind::nr`: 16, or 32 for AVX-512, whose second
//! panel sits `b_next` floats after the first). A is read by broadcasts from any strides (packed
//! panels or the caller's matrix), B by vector loads of 16 contiguous values per k and panel (a
//! packed panel, or a row-major matrix read in place).
//!
//! The kernel is chosen once per process by CPU feature detection; `VFFN_KERNEL=portable|avx2|avx512`
//! forces one (an unavailable forced kernel is reported as a [`KernelError`], never executed).

use std::fmt;
use std::sync::OnceLock;

/// Runs `$step!(a, b)` for every depth p < k of tile `$t` (a, b: its A and B addresses at p),
/// `$n` depths per iteration (the steps at offsets `$o` = 0, 1, .., n − 1) and then one at a
/// time, A stepping by `$cs_a` and B by the tile's `rs_b` per depth: the depth loop of every
/// x86 tile (used inside their `unsafe` bodies).
#[cfg(target_arch = "x86_64")]
macro_rules! depth_loop {
    ($n:literal: $($o:literal)+; $t:ident, $cs_a:expr, $step:ident) => {{
        let (mut a, mut b, rs_b, cs_a) = ($t.a, $t.b, $t.rs_b, $cs_a);
        let mut left = $t.k;
        while left >= $n {
            $( $step!(a.add($o * cs_a), b.add($o * rs_b)); )+
            a = a.add($n * cs_a);
            b = b.add($n * rs_b);
            left -= $n;
        }
        while left > 0 {
            $step!(a, b);
            a = a.add(cs_a);
            b = b.add(rs_b);
            left -= 1;
        }
    }};
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;
pub(crate) mod portable;

/// Width of a packed B panel, common to every kernel (a kernel's tile spans one or two panels).
pub const NR: usize = 16;
/// Widest tile of any kernel (two panels).
pub(crate) const NR_MAX: usize = 2 * NR;
/// Largest MR of any kernel (sizes the stack tiles used for edges).
pub(crate) const MR_MAX: usize = 14;

/// Which micro-kernel family runs the products.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelKind {
    /// `wide::f32x8`, any CPU (2 × 16 tile).
    Portable,
    /// AVX2 + FMA intrinsics (6 × 16 tile, 12 ymm accumulators).
    Avx2,
    /// AVX-512F intrinsics (14 × 32 tile over two B panels, 28 zmm accumulators).
    Avx512,
}

impl KernelKind {
    /// Every kernel, fastest last.
    pub const ALL: [KernelKind; 3] = [KernelKind::Portable, KernelKind::Avx2, KernelKind::Avx512];

    /// Rows of C per micro-kernel call.
    pub const fn mr(self) -> usize {
        match self {
            KernelKind::Portable => portable::MR,
            KernelKind::Avx2 => 6,
            KernelKind::Avx512 => MR_MAX,
        }
    }

    /// Columns of C per full micro-kernel call (one or two 16-wide B panels).
    pub const fn nr(self) -> usize {
        match self {
            KernelKind::Portable | KernelKind::Avx2 => NR,
            KernelKind::Avx512 => NR_MAX,
        }
    }

    /// Name as accepted by `VFFN_KERNEL`.
    pub const fn name(self) -> &'static str {
        match self {
            KernelKind::Portable => "portable",
            KernelKind::Avx2 => "avx2",
            KernelKind::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run the kernel.
    pub fn is_available(self) -> bool {
        match self {
            KernelKind::Portable => true,
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            // The AVX-512 family also runs the AVX2 + FMA code of the row kernels.
            #[cfg(target_arch = "x86_64")]
            KernelKind::Avx512 => {
                std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The fastest kernel this CPU supports.
    pub fn detect() -> KernelKind {
        *KernelKind::ALL.iter().rev().find(|k| k.is_available()).unwrap_or(&KernelKind::Portable)
    }

    /// `Ok(self)` if the CPU can run it, else the typed error.
    pub fn check(self) -> Result<KernelKind, KernelError> {
        if self.is_available() {
            Ok(self)
        } else {
            Err(KernelError::Unavailable(self))
        }
    }
}

impl fmt::Display for KernelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a kernel cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelError {
    /// The kernel needs CPU features this machine lacks.
    Unavailable(KernelKind),
    /// `VFFN_KERNEL` holds a name that is not a kernel.
    UnknownName(String),
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelError::Unavailable(k) => write!(
                f,
                "micro-kernel `{k}` is not supported by this CPU (detected best: `{}`)",
                KernelKind::detect()
            ),
            KernelError::UnknownName(s) => {
                write!(f, "VFFN_KERNEL=`{s}` is not one of portable, avx2, avx512")
            }
        }
    }
}

impl std::error::Error for KernelError {}

/// Parses a `VFFN_KERNEL` value (case-insensitive) and checks the CPU supports it.
pub fn kernel_from_name(name: &str) -> Result<KernelKind, KernelError> {
    let kind = match name.trim().to_ascii_lowercase().as_str() {
        "portable" => KernelKind::Portable,
        "avx2" => KernelKind::Avx2,
        "avx512" | "avx512f" => KernelKind::Avx512,
        _ => return Err(KernelError::UnknownName(name.to_string())),
    };
    kind.check()
}

/// The kernel `gemm` uses: `VFFN_KERNEL` if set (read once per process), else the best detected.
pub fn selected_kernel() -> Result<KernelKind, KernelError> {
    static SELECTED: OnceLock<Result<KernelKind, KernelError>> = OnceLock::new();
    SELECTED
        .get_or_init(|| match std::env::var("VFFN_KERNEL") {
            Ok(name) if !name.trim().is_empty() => kernel_from_name(&name),
            _ => Ok(KernelKind::detect()),
        })
        .clone()
}

/// The one ISA decision every kernel honours (GEMM, GEMV, packing, attention, row kernels, FFN):
/// the selected family ([`selected_kernel`]: `VFFN_KERNEL`, else the best this CPU runs). When
/// `VFFN_KERNEL` names a family this CPU lacks, the GEMM entry points report or panic with that
/// error and the other kernels run portable code.
pub fn isa() -> KernelKind {
    static ISA: OnceLock<KernelKind> = OnceLock::new();
    *ISA.get_or_init(|| selected_kernel().unwrap_or(KernelKind::Portable))
}

/// Whether kernels may run AVX2 + FMA code: the AVX2 and AVX-512 families (both checked available
/// by [`selected_kernel`]).
pub(crate) fn avx2_allowed() -> bool {
    isa() != KernelKind::Portable
}

/// One micro-kernel call. Element (i, p) of A is at `a + i·rs_a + p·cs_a`, element (p, j) of B at
/// `b + p·rs_b + j` for j < 16 and `b + b_next + p·rs_b + (j − 16)` for 16 ≤ j < 32 (16 readable
/// values per p and panel), element (i, j) of C at `c + i·rs_c + j·cs_c`. Only the `mr × nr`
/// top-left part of C is read and written (`mr ≤ MR`, `nr ≤ kind.nr()`; `b_next` is read only
/// when nr > 16).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tile {
    pub k: usize,
    pub alpha: f32,
    pub beta: f32,
    pub a: *const f32,
    pub rs_a: usize,
    pub cs_a: usize,
    pub b: *const f32,
    pub rs_b: usize,
    pub b_next: usize,
    pub c: *mut f32,
    pub rs_c: usize,
    pub cs_c: usize,
    pub mr: usize,
    pub nr: usize,
}

impl Tile {
    /// Whether the epilogue reads C: not when beta is 0, so that C's old values (NaN, or memory
    /// never written) never reach the result.
    #[inline(always)]
    pub(crate) fn reads_c(&self) -> bool {
        self.beta != 0.0
    }

    /// A's (row, column) strides as a kernel of `mr` rows reads them: packed A (`PACKED`) holds
    /// the mr values of one k contiguously, panels stepping by mr.
    #[inline(always)]
    pub(crate) fn a_strides<const PACKED: bool>(&self, mr: usize) -> (usize, usize) {
        if PACKED {
            (1, mr)
        } else {
            (self.rs_a, self.cs_a)
        }
    }
}

/// The scalars of a tile's epilogue `C = alpha·acc + beta·C` as one family's vectors `V`, and
/// whether C is read ([`Tile::reads_c`]).
#[derive(Clone, Copy)]
pub(crate) struct Scale<V> {
    pub alpha: V,
    pub beta: V,
    pub read_c: bool,
}

impl<V> Scale<V> {
    /// `t`'s alpha and beta broadcast by `splat`.
    #[inline(always)]
    pub(crate) fn of(t: &Tile, splat: impl Fn(f32) -> V) -> Self {
        Scale { alpha: splat(t.alpha), beta: splat(t.beta), read_c: t.reads_c() }
    }
}

/// Starts bringing the `M` rows of `t`'s C tile in before the depth loop (C is needed only at
/// the end): each row's first element and the one `last` columns on (a row may straddle two
/// cache lines).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn prefetch_c_rows<const M: usize>(t: &Tile, last: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for i in 0..M {
        let row = t.c.wrapping_add(i * t.rs_c);
        // SAFETY: a prefetch never faults, whatever the address.
        unsafe {
            _mm_prefetch::<_MM_HINT_T0>(row as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(last * t.cs_c) as *const i8);
        }
    }
}

/// Runs one tile with `kind`. `a_packed` promises `rs_a == 1 && cs_a == kind.mr()`.
///
/// # Safety
/// `kind` must be available on this CPU and every address described by `t` must be valid
/// (reads of A and B for all `p < k`, 16 values of B per p, and C inside its `mr × nr` part).
#[inline]
pub(crate) unsafe fn run_tile(kind: KernelKind, a_packed: bool, t: &Tile) {
    debug_assert!(t.mr >= 1 && t.mr <= kind.mr() && t.nr >= 1 && t.nr <= kind.nr());
    match kind {
        // SAFETY: forwarded caller contract.
        KernelKind::Portable => unsafe { portable::tile(a_packed, t) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded caller contract (the caller checked AVX2+FMA are present).
        KernelKind::Avx2 => unsafe { avx2::tile(a_packed, t) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: forwarded caller contract (the caller checked AVX-512F is present).
        KernelKind::Avx512 => unsafe { avx512::tile(a_packed, t) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => unreachable!("non-x86 kernels are never available"),
    }
}

/// One tile of the bf16 dot-product kernel (`vdpbf16ps`, 14 × 32 / 14 × 16 like the AVX-512
/// f32 kernel): every 32-bit word of A and B is a k-pair of bf16 values, `t.k` counts pairs, A
/// is packed (`rs_a == 1`, `cs_a == 14`).
///
/// # Safety
/// AVX-512F and AVX512_BF16 must be available, and `t` as in [`run_tile`].
#[inline]
pub(crate) unsafe fn run_dot_tile(t: &Tile) {
    debug_assert!(t.mr >= 1 && t.mr <= MR_MAX && t.nr >= 1 && t.nr <= NR_MAX);
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded caller contract.
    unsafe {
        avx512::dot::tile(true, t)
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the bf16 dot kernel is x86-64 only ({t:?})")
}

/// Dense `[MR_MAX][W]` stack copy of an edge tile of C, so edge tiles run the exact same vector
/// arithmetic as full ones (bitwise equal results). Loaded only when beta ≠ 0.
pub(crate) type EdgeTile<const W: usize> = [[f32; W]; MR_MAX];

/// Copies the valid `mr × nr` part of C into a zeroed edge tile.
///
/// # Safety
/// C must be valid for the `mr × nr` part described by `t`.
#[inline(always)]
pub(crate) unsafe fn edge_load<const W: usize>(t: &Tile) -> EdgeTile<W> {
    debug_assert!(t.nr <= W);
    let mut buf = [[0.0f32; W]; MR_MAX];
    if t.reads_c() {
        for (i, row) in buf.iter_mut().enumerate().take(t.mr) {
            for (j, v) in row.iter_mut().enumerate().take(t.nr) {
                // SAFETY: (i, j) is inside the valid mr × nr part of C.
                *v = unsafe { *t.c.add(i * t.rs_c + j * t.cs_c) };
            }
        }
    }
    buf
}

/// Writes the valid `mr × nr` part of an edge tile back to C.
///
/// # Safety
/// C must be valid for the `mr × nr` part described by `t`.
#[inline(always)]
pub(crate) unsafe fn edge_store<const W: usize>(t: &Tile, buf: &EdgeTile<W>) {
    for (i, row) in buf.iter().enumerate().take(t.mr) {
        for (j, v) in row.iter().enumerate().take(t.nr) {
            // SAFETY: (i, j) is inside the valid mr × nr part of C.
            unsafe { *t.c.add(i * t.rs_c + j * t.cs_c) = *v };
        }
    }
}
