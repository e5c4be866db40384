//! `C = alpha·A·B + beta·C` over strided views, BLIS style.
//!
//! Three paths, chosen from the shape alone (never from the thread count):
//! - **packed** (large products): for each NC column block and KC depth block, B is packed into
//!   16-wide panels shared by all threads; each MC row block of A is packed per thread; the
//!   micro-kernel sweeps MR × 16 tiles (jr outer, ir inner, so the B micro-panel stays in L1).
//! - **direct** (small products, where packing costs more than it saves): A is read in place by
//!   broadcasts (any strides), B in place when its rows are contiguous; otherwise the product is
//!   transposed (Cᵀ = Bᵀ·Aᵀ) so that only the small operand is packed.
//! - **gemv** (M = 1 or N = 1): streaming matrix-vector kernels.
//!
//! The packed and direct paths run the same micro-kernel with the same KC blocking, so they give
//! bitwise identical results; every split across threads is over independent output tiles, so the
//! result never depends on the thread count.

use std::ops::Range;

use rayon::prelude::*;

use crate::cpu::blocking;
use crate::mat::Gemm;
pub(crate) use crate::mat::OutView;
pub use crate::mat::{MatMut, MatRef};
use crate::microkernel::{
    run_dot_tile, run_tile, selected_kernel, KernelError, KernelKind, Tile, NR,
};
use crate::pack::{
    pack_a_words, pack_b, with_scratch, AlignedBuf, BOperand, Block, PackedB, PackedPart,
    RowSource, Scratch,
};

/// Widest B packed whole (all depths) when k > KC: see `packed`.
const FULL_B_MAX_N: usize = 512;
/// Products with m or n up to this use the direct path (measured: packing pays off from ~96).
const DIRECT_MAX_DIM: usize = 80;
/// Rows × columns × depth below which threads are not used (~1 M FLOPs of work).
const PAR_MIN_WORK: usize = 1 << 19;

/// Which algorithm runs a product (`Auto` picks from the shape; the others force one, for tests
/// and benchmarks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmPath {
    /// Chosen from (m, n, k) and the operand layouts.
    Auto,
    /// Pack A and B, BLIS loops.
    Packed,
    /// Read operands in place (pack only the small side if B's rows are strided).
    Direct,
    /// Matrix-vector kernels; falls back to `Direct` unless m = 1 or n = 1.
    Gemv,
}

/// Errors of the checked GEMM entry points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GemmError {
    /// The requested micro-kernel cannot run here.
    Kernel(KernelError),
    /// Operand shapes or ranges do not fit together.
    Shape(String),
}

impl std::fmt::Display for GemmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GemmError::Kernel(e) => write!(f, "{e}"),
            GemmError::Shape(s) => write!(f, "gemm shape error: {s}"),
        }
    }
}

impl std::error::Error for GemmError {}

impl From<KernelError> for GemmError {
    fn from(e: KernelError) -> Self {
        GemmError::Kernel(e)
    }
}

/// `C = alpha·A·B + beta·C`; A is m×k, B is k×n, C is m×n. `beta == 0` overwrites C (NaNs in C are
/// not propagated). Transposed operands are passed as transposed views (`MatRef::t`).
///
/// Uses [`selected_kernel`] and the current rayon pool. Panics on mismatched shapes, on views that
/// reach outside their slices or whose C elements overlap, and if `VFFN_KERNEL` forces a kernel this
/// CPU cannot run (check [`selected_kernel`] first to report that as an error).
pub fn gemm(alpha: f32, a: MatRef<'_>, b: MatRef<'_>, beta: f32, c: MatMut<'_>) {
    let kind = selected_kernel().unwrap_or_else(|e| panic!("gemm: {e}"));
    gemm_with(kind, GemmPath::Auto, alpha, a, b, beta, c).unwrap_or_else(|e| panic!("gemm: {e}"));
}

/// Whether every element of a `rows × cols` view with these strides lies inside `len` values.
pub(crate) fn view_fits(len: usize, rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    if rows == 0 || cols == 0 {
        return true;
    }
    let last = (rows - 1)
        .checked_mul(rs)
        .and_then(|r| (cols - 1).checked_mul(cs).and_then(|c| r.checked_add(c)));
    matches!(last, Some(l) if l < len)
}

/// Panics unless every element of the view lies inside a slice of `len` floats.
fn check_view(what: &str, len: usize, rows: usize, cols: usize, rs: usize, cs: usize) {
    assert!(
        view_fits(len, rows, cols, rs, cs),
        "gemm: {what} view ({rows}×{cols}, strides {rs},{cs}) exceeds its slice of {len}"
    );
}

/// Whether no two elements of a `rows × cols` view share an address (parallel tiles would race).
pub(crate) fn distinct_elements(rows: usize, cols: usize, rs: usize, cs: usize) -> bool {
    rows <= 1 && (cols <= 1 || cs >= 1)
        || cols <= 1 && rs >= 1
        || (cs >= 1 && rs >= cols * cs)
        || (rs >= 1 && cs >= rows * rs)
}

/// Panics if two elements of C share an address (parallel tiles would race).
fn check_no_overlap(rows: usize, cols: usize, rs: usize, cs: usize) {
    assert!(
        distinct_elements(rows, cols, rs, cs),
        "gemm: C view ({rows}×{cols}, strides {rs},{cs}) has overlapping elements"
    );
}

/// [`gemm`] with an explicit kernel and path (no environment lookup): lets tests run every kernel
/// and path in one process without races.
pub fn gemm_with(
    kind: KernelKind,
    path: GemmPath,
    alpha: f32,
    a: MatRef<'_>,
    b: MatRef<'_>,
    beta: f32,
    c: MatMut<'_>,
) -> Result<(), GemmError> {
    kind.check()?;
    assert_eq!(a.cols, b.rows, "gemm: inner dimensions differ");
    assert_eq!((a.rows, b.cols), (c.rows, c.cols), "gemm: output shape mismatch");
    check_view("A", a.data.len(), a.rows, a.cols, a.row_stride, a.col_stride);
    check_view("B", b.data.len(), b.rows, b.cols, b.row_stride, b.col_stride);
    check_view("C", c.data.len(), c.rows, c.cols, c.row_stride, c.col_stride);
    check_no_overlap(c.rows, c.cols, c.row_stride, c.col_stride);
    let (m, n, k) = (a.rows, b.cols, a.cols);
    let out = OutView::from_mat(c);
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 || alpha == 0.0 {
        out.scale(beta);
        return Ok(());
    }
    let path = match path {
        GemmPath::Auto => choose_path(m, n, k),
        p => p,
    };
    let g = Gemm { kind, alpha, a, b, beta, c: out };
    match path {
        GemmPath::Gemv if crate::gemv::gemv(g) => {}
        GemmPath::Packed => packed(g),
        _ => direct(g),
    }
    Ok(())
}

/// Shape-only choice of algorithm (so the result never depends on the thread count).
fn choose_path(m: usize, n: usize, k: usize) -> GemmPath {
    if m == 1 || n == 1 {
        GemmPath::Gemv
    } else if m.min(n) <= DIRECT_MAX_DIM || m * n * k <= DIRECT_MAX_DIM.pow(3) {
        GemmPath::Direct
    } else {
        GemmPath::Packed
    }
}

/// Where the micro-kernel reads B panel q at depth p: in place (`q < direct_panels`, rows of B
/// contiguous) or in packed 16-wide panels.
#[derive(Clone, Copy)]
pub(crate) struct BSource {
    direct: *const f32,
    direct_rs: usize,
    direct_panels: usize,
    packed: *const f32,
    packed_panel_stride: usize,
    /// Depth of the first packed row (packed pointers are relative to it).
    p_origin: usize,
    /// The packed panels hold bf16 k-pairs (`BOperand::Bf16Pairs`): A is then packed as rounded
    /// k-pairs and the bf16 dot-product kernel runs; depths count pairs.
    pub(crate) pairs: bool,
}

// SAFETY: read-only pointers into operands borrowed for the whole gemm call.
unsafe impl Send for BSource {}
// SAFETY: as above.
unsafe impl Sync for BSource {}

impl BSource {
    /// Panels of a pre-packed B starting at column `col_start` (a multiple of 16), all depths.
    pub(crate) fn from_packed(b: &PackedB, col_start: usize) -> BSource {
        debug_assert!(col_start.is_multiple_of(NR));
        let panel_stride = b.rows() * NR;
        BSource::packed(
            b.data().as_ptr().wrapping_add((col_start / NR) * panel_stride),
            panel_stride,
            0,
        )
    }

    /// Packed panels only: panel q at `packed + q·panel_stride`, its first row is depth `p_origin`.
    fn packed(packed: *const f32, panel_stride: usize, p_origin: usize) -> BSource {
        BSource {
            direct: std::ptr::null(),
            direct_rs: 0,
            direct_panels: 0,
            packed,
            packed_panel_stride: panel_stride,
            p_origin,
            pairs: false,
        }
    }

    /// Pointer to B(p, 16q) and the row stride of that panel.
    #[inline]
    fn panel(&self, q: usize, p: usize) -> (*const f32, usize) {
        if q < self.direct_panels {
            (self.direct.wrapping_add(p * self.direct_rs + q * NR), self.direct_rs)
        } else {
            let off =
                (q - self.direct_panels) * self.packed_panel_stride + (p - self.p_origin) * NR;
            (self.packed.wrapping_add(off), NR)
        }
    }
}

/// Where the micro-kernel reads A: in place (any strides, `pack == None`) or packed per row block
/// and depth block from the rows `pack` names. A's column `p - p_origin` is depth p.
#[derive(Clone, Copy)]
pub(crate) struct ASource<'a> {
    pub mat: MatRef<'a>,
    pub pack: Option<RowSource<'a>>,
    pub p_origin: usize,
}

/// The tiled product for C rows 0..c.rows, columns 0..c.cols and depths `ps` (B panel q covers
/// C columns 16q..): splits independent output blocks over the rayon pool, then per block runs depth
/// blocks of KC (beta applied on the first), 16-wide panels, MR-row tiles.
#[allow(clippy::too_many_arguments)]
pub(crate) fn compute(
    kind: KernelKind,
    alpha: f32,
    beta: f32,
    a: ASource<'_>,
    b: BSource,
    ps: Range<usize>,
    c: OutView,
    parallel: bool,
) {
    let (m, n) = (c.rows, c.cols);
    let mr = kind.mr();
    let panels = n.div_ceil(NR);
    let pack_a = a.pack.is_some();
    let threads = rayon::current_num_threads();
    let work = m * n * ps.len();
    let parallel = parallel && threads > 1 && work >= PAR_MIN_WORK;
    // Rows are split in whole MR-row tiles: `row_blocks` blocks whose tile counts differ by at
    // most one (equal-size blocks with a short last one left one thread a block's worth idle:
    // 1024 rows as 5 × 182 + 114 ran two threads at 0.93× of twice one on Zen 5).
    let tiles = m.div_ceil(mr);
    let mut row_blocks = if pack_a {
        // As many blocks of at most MC rows as a multiple of the thread count.
        let mut blocks = m.div_ceil(blocking(kind).mc);
        if parallel {
            blocks = blocks.next_multiple_of(threads);
        }
        blocks.min(tiles)
    } else {
        1
    };
    let mut panel_block = panels;
    if parallel {
        // Enough independent blocks for load balance; the split never changes any tile's result.
        let target = 3 * threads;
        loop {
            let items = row_blocks * panels.div_ceil(panel_block);
            if items >= target {
                break;
            }
            let block_tiles = tiles / row_blocks;
            if panel_block >= 2 && (panel_block >= block_tiles || block_tiles <= 1) {
                panel_block = panel_block.div_ceil(2);
            } else if block_tiles > 1 {
                row_blocks = (row_blocks * 2).min(tiles);
            } else {
                break;
            }
        }
    }
    // Keep the panel pairs of two-panel kernels together (a split pair runs as two narrow tiles:
    // same bits, fewer FMAs per load).
    let pair = kind.nr() / NR;
    if panel_block < panels {
        panel_block = panel_block.next_multiple_of(pair);
    }
    let mut items = Vec::new();
    for r in 0..row_blocks {
        let rows = (tiles * r / row_blocks * mr)..(tiles * (r + 1) / row_blocks * mr).min(m);
        for q0 in (0..panels).step_by(panel_block) {
            items.push((rows.clone(), q0..panels.min(q0 + panel_block)));
        }
    }
    let product = Product { kind, alpha, beta, a, b, c };
    let run = |(rows, qs): (Range<usize>, Range<usize>)| {
        block(product, ps.clone(), rows, qs);
    };
    if items.len() > 1 {
        items.into_par_iter().for_each(run);
    } else {
        items.into_iter().for_each(run);
    }
}

/// What every output block of one [`compute`] shares: `C = alpha·A·B + beta·C` on this kernel.
#[derive(Clone, Copy)]
struct Product<'a> {
    kind: KernelKind,
    alpha: f32,
    beta: f32,
    a: ASource<'a>,
    b: BSource,
    c: OutView,
}

/// One output block: rows `rows` × panels `qs` of C over depths `ps`.
fn block(product: Product<'_>, ps: Range<usize>, rows: Range<usize>, qs: Range<usize>) {
    let Product { kind, alpha, beta, a, b, c } = product;
    let (mr, kc_max) = (kind.mr(), blocking(kind).kc);
    let pair = kind.nr() / NR;
    let tiles = |abuf: Option<&mut AlignedBuf>, copy: &mut AlignedBuf| {
        let mut abuf = abuf;
        for p0 in ps.clone().step_by(kc_max) {
            let kc = kc_max.min(ps.end - p0);
            let beta_eff = if p0 == ps.start { beta } else { 1.0 };
            let am = a.mat;
            let a_col = p0 - a.p_origin;
            let (a_ptr, rs_a, cs_a, packed_a) = match a.pack {
                None => (
                    am.data.as_ptr().wrapping_add(a_col * am.col_stride),
                    am.row_stride,
                    am.col_stride,
                    false,
                ),
                Some(src) => {
                    let buf = abuf.as_deref_mut().expect("pack buffer");
                    let rows_here = rows.len();
                    let dst = buf.slice_mut(rows_here.div_ceil(mr) * mr * kc);
                    let shifted = match src {
                        RowSource::Range { start } => {
                            RowSource::Range { start: start + rows.start }
                        }
                        RowSource::Index(ix) => RowSource::Index(&ix[rows.start..]),
                    };
                    pack_a_words(mr, am, shifted, rows_here, a_col, kc, b.pairs, dst);
                    (dst.as_ptr(), 1, mr, true)
                }
            };
            // Packed A comes in panels of MR rows; A read in place is cut into tiles of equal
            // height (16 rows: 8 + 8, not 14 + 2, whose second tile would be load-bound).
            let tile_rows =
                if packed_a { mr } else { rows.len().div_ceil(rows.len().div_ceil(mr)) };
            let mut q = qs.start;
            while q < qs.end {
                let (first, rs_first) = b.panel(q, p0);
                // Two-panel kernels take the next panel too when it has the same row stride and
                // lies after this one (then its offset is one number for every depth).
                let second = (pair == 2 && q + 1 < qs.end)
                    .then(|| b.panel(q + 1, p0))
                    .filter(|&(ptr, rs)| rs == rs_first && ptr as usize > first as usize)
                    .map(|(ptr, _)| (ptr as usize - first as usize) / 4);
                let panels = if second.is_some() { 2 } else { 1 };
                let (mut b_ptr, mut rs_b, mut b_next) = (first, rs_first, second.unwrap_or(0));
                let nr = (panels * NR).min(c.cols - q * NR);
                // (Two-panel tiles read a pair reused by at most two row tiles in place: measured
                // 1.2× at 16×512×512 on the Xeon, where the copy cost more than the L2 re-reads.)
                let reusers = rows.len().div_ceil(tile_rows);
                if rs_b != NR && reusers > pair {
                    // An in-place B panel reused by several row tiles is first copied to a
                    // contiguous buffer (in L1 for one-panel tiles; streamed from L2 for the
                    // two-panel tile, whose KC follows L2): B rows a power-of-two apart would
                    // otherwise collide in a few cache sets and be re-read by every tile. Same
                    // values, same bits.
                    let dst = copy.slice_mut(panels * kc * NR);
                    for (h, panel) in dst.chunks_exact_mut(kc * NR).enumerate() {
                        let src = b_ptr.wrapping_add(h * b_next);
                        for (p, row) in panel.chunks_exact_mut(NR).enumerate() {
                            // SAFETY: in-place panels are full (16 readable values per row p < kc).
                            let from = unsafe { std::slice::from_raw_parts(src.add(p * rs_b), NR) };
                            let row: &mut [f32; NR] = row.try_into().expect("16 values");
                            *row = from.try_into().expect("16 values");
                        }
                    }
                    (b_ptr, rs_b, b_next) = (dst.as_ptr(), NR, kc * NR);
                }
                for ir in rows.clone().step_by(tile_rows) {
                    let a_tile = if packed_a {
                        a_ptr.wrapping_add((ir - rows.start) * kc)
                    } else {
                        a_ptr.wrapping_add(ir * rs_a)
                    };
                    let t = Tile {
                        k: kc,
                        alpha,
                        beta: beta_eff,
                        a: a_tile,
                        rs_a,
                        cs_a,
                        b: b_ptr,
                        rs_b,
                        b_next,
                        c: c.ptr.wrapping_add(ir * c.rs + q * NR * c.cs),
                        rs_c: c.rs,
                        cs_c: c.cs,
                        mr: tile_rows.min(rows.end - ir),
                        nr,
                    };
                    // SAFETY: `kind` was checked available by the entry point; A covers rows
                    // ir..ir+mr and depths p0..p0+kc (in place, or packed and zero padded), B
                    // panels q (and q+1 at b_next when nr > 16) hold kc rows of 16 readable
                    // values (in place: full panels only; else packed or copied), and the C tile
                    // is inside the checked C view and written by this block only.
                    unsafe {
                        if b.pairs {
                            // Pairs of B come with pairs of A (packed above: `a.pack` is set
                            // for every B source of pairs), and the dot kernel's features were
                            // checked with the path (`Bf16Path::is_available`).
                            debug_assert!(packed_a);
                            run_dot_tile(&t);
                        } else {
                            run_tile(kind, packed_a, &t);
                        }
                    }
                }
                q += panels;
            }
        }
    };
    with_scratch(Scratch::Panel, |copy| {
        if a.pack.is_some() {
            with_scratch(Scratch::A, |buf| tiles(Some(buf), copy));
        } else {
            tiles(None, copy);
        }
    });
}

/// Small products: no packing except, when B's rows are strided, the smaller operand.
fn direct(g: Gemm<'_>) {
    let Gemm { kind, a, b, .. } = g;
    // Vector loads need B rows contiguous; else transpose the product if that makes them so, or
    // to pack the smaller operand.
    let swap = if b.col_stride == 1 {
        // At most one 16-wide panel of Aᵀ: packing it and streaming B's rows as the broadcast
        // operand beats reading 16-wide column strips of B (measured 1.15× at 16×512×512 with
        // the AVX2 6 × 16 tile; equal at m = 32, slower from 48 on). Two-panel kernels keep the
        // product as it is: one 16-wide panel would leave them a load-bound narrow tile.
        a.rows <= NR && kind.nr() == NR
    } else if a.row_stride == 1 {
        true
    } else {
        a.rows < b.cols
    };
    let Gemm { kind, alpha, a, b, beta, c } = if swap { g.t() } else { g };
    let (n, k) = (b.cols, b.rows);
    let direct_panels = if b.col_stride == 1 { n / NR } else { 0 };
    let packed_cols = n - direct_panels * NR;
    let panel_stride = k * NR;
    let run = |packed: *const f32| {
        let src = BSource {
            direct: b.data.as_ptr(),
            direct_rs: b.row_stride,
            direct_panels,
            packed,
            packed_panel_stride: panel_stride,
            p_origin: 0,
            pairs: false,
        };
        // Many B panels re-read the same A rows: a contiguous packed copy then beats strided
        // broadcasts (measured at n = 512; at n = 128 in place is faster).
        // A few rows (up to two tiles) run in place in tiles of balanced height instead.
        let few_rows = kind.nr() > NR && a.rows <= 2 * kind.mr();
        let pack_a = n >= 16 * NR && a.rows > kind.mr() && !few_rows;
        let pack = pack_a.then_some(RowSource::Range { start: 0 });
        let a_src = ASource { mat: a, pack, p_origin: 0 };
        compute(kind, alpha, beta, a_src, src, 0..k, c, true);
    };
    if packed_cols == 0 {
        run(std::ptr::null());
    } else {
        with_scratch(Scratch::B, |buf| {
            let dst = buf.slice_mut(packed_cols.div_ceil(NR) * panel_stride);
            let blk = Block { p0: 0, kc: k, j0: direct_panels * NR, cols: packed_cols };
            pack_b(b, blk, panel_stride, dst);
            run(dst.as_ptr());
        });
    }
}

/// Large products: BLIS loops with packed A and B.
fn packed(g: Gemm<'_>) {
    // Contiguous C rows let the micro-kernel store whole vectors.
    let g = if g.c.cs != 1 && g.c.rs == 1 { g.t() } else { g };
    packed_loops(g.with_b(BOperand::F32(g.b)));
}

/// The BLIS loops over NC column blocks and KC depth blocks of B (packed from `b`, whatever its
/// storage), with A packed per row block: the packed path of `gemm` and the bf16 linear layers.
pub(crate) fn packed_loops(g: Gemm<'_, BOperand<'_>>) {
    let Gemm { kind, alpha, a, b, beta, c } = g;
    let (n, k) = (b.cols(), b.depth());
    let a_src = ASource { mat: a, pack: Some(RowSource::Range { start: 0 }), p_origin: 0 };
    let blk = blocking(kind);
    if k > blk.kc && n <= FULL_B_MAX_N {
        // Deep and narrow (a linear layer's backward): all of B packed first, then each row
        // block runs every depth block in turn, so its C block (≤ 144 × 512 floats) stays in L2
        // across them instead of going back to L3 between depth blocks. Same depth blocks in
        // the same order as below: bitwise the same result.
        with_scratch(Scratch::B, |buf| {
            let src = pack_b_block(b, 0..k, 0..n, 2, buf);
            compute(kind, alpha, beta, a_src, src, 0..k, c, true);
        });
        return;
    }
    with_scratch(Scratch::B, |buf| {
        for jc in (0..n).step_by(blk.nc) {
            let nc = blk.nc.min(n - jc);
            for pc in (0..k).step_by(blk.kc) {
                let kc = blk.kc.min(k - pc);
                let src = pack_b_block(b, pc..pc + kc, jc..jc + nc, 4, buf);
                let c_block = OutView { ptr: c.ptr.wrapping_add(jc * c.cs), cols: nc, ..c };
                let beta_eff = if pc == 0 { beta } else { 1.0 };
                compute(kind, alpha, beta_eff, a_src, src, pc..pc + kc, c_block, true);
            }
        }
    });
}

/// Panels packed together by one work item when B is packed per block: a row of B is read as
/// 4 × 64 contiguous bytes (measured against one panel at a time at 1024³ on the Xeon).
const PACK_GROUP: usize = 4;

/// Packs B's depth steps `ps` and columns `js` into 16-wide panels in `buf` (in parallel from
/// `min_par_panels` panels and ~32 K values on) and returns them as a B source.
fn pack_b_block(
    b: BOperand<'_>,
    ps: Range<usize>,
    js: Range<usize>,
    min_par_panels: usize,
    buf: &mut AlignedBuf,
) -> BSource {
    let (kc, nc) = (ps.len(), js.len());
    let panels = nc.div_ceil(NR);
    let panel_stride = kc * NR;
    let dst = buf.slice_mut(panels * panel_stride);
    // Work items of PACK_GROUP adjacent panels (see BOperand::pack_panels).
    let pack = |(g, group): (usize, &mut [f32])| {
        let j = js.start + g * PACK_GROUP * NR;
        let blk = Block { p0: ps.start, kc, j0: j, cols: (PACK_GROUP * NR).min(js.end - j) };
        b.pack_panels(blk, panel_stride, group);
    };
    let group = PACK_GROUP * panel_stride;
    if panels >= min_par_panels && kc * nc >= 1 << 15 && rayon::current_num_threads() > 1 {
        dst.par_chunks_mut(group).enumerate().for_each(pack);
    } else {
        dst.chunks_mut(group).enumerate().for_each(pack);
    }
    let mut src = BSource::packed(dst.as_ptr(), panel_stride, ps.start);
    src.pairs = matches!(b, BOperand::Bf16Pairs(_));
    src
}

/// `C = alpha·A·B[ks, cols] + beta·C` with B pre-packed (`b = packed.part(cols, ks)`): A is
/// m × |ks|, C is m × |cols|. On kernel `kind` (e.g. [`selected_kernel`]), optionally A's rows
/// gathered by index (`rows[r]` is the A row of C row r; C then has `rows.len()` rows), and on
/// the calling thread alone when `parallel` is false (for callers that already split independent
/// rows over threads). The result is the same either way.
#[allow(clippy::too_many_arguments)]
pub fn gemm_packed_with(
    kind: KernelKind,
    alpha: f32,
    a: MatRef<'_>,
    rows: Option<&[usize]>,
    b: PackedPart<'_>,
    beta: f32,
    c: MatMut<'_>,
    parallel: bool,
) -> Result<(), GemmError> {
    let PackedPart { b, cols, ks } = b;
    kind.check()?;
    let shape = |s: String| Err(GemmError::Shape(s));
    if cols.start > cols.end || cols.end > b.cols() || !cols.start.is_multiple_of(NR) {
        return shape(format!(
            "columns {cols:?} of a packed B with {} columns (start % 16 == 0)",
            b.cols()
        ));
    }
    if ks.start > ks.end || ks.end > b.rows() {
        return shape(format!("depths {ks:?} of a packed B with {} rows", b.rows()));
    }
    if a.cols != ks.len() {
        return shape(format!("A has {} columns, depth range has {}", a.cols, ks.len()));
    }
    let m = rows.map_or(a.rows, |r| r.len());
    if (c.rows, c.cols) != (m, cols.len()) {
        return shape(format!("C is {}×{}, expected {m}×{}", c.rows, c.cols, cols.len()));
    }
    if let Some(r) = rows {
        if let Some(bad) = r.iter().find(|&&i| i >= a.rows) {
            return shape(format!("row index {bad} ≥ A rows {}", a.rows));
        }
    }
    check_view("A", a.data.len(), a.rows, a.cols, a.row_stride, a.col_stride);
    check_view("C", c.data.len(), c.rows, c.cols, c.row_stride, c.col_stride);
    check_no_overlap(c.rows, c.cols, c.row_stride, c.col_stride);
    let out = OutView::from_mat(c);
    if m == 0 || cols.is_empty() {
        return Ok(());
    }
    if ks.is_empty() || alpha == 0.0 {
        out.scale(beta);
        return Ok(());
    }
    let src = BSource::from_packed(b, cols.start);
    // Gathered rows must be packed; contiguous ones are packed only when many (as in `gemm`).
    let pack = match rows {
        Some(ix) => Some(RowSource::Index(ix)),
        None if m > DIRECT_MAX_DIM => Some(RowSource::Range { start: 0 }),
        None => None,
    };
    let a_src = ASource { mat: a, pack, p_origin: ks.start };
    compute(kind, alpha, beta, a_src, src, ks, out, parallel);
    Ok(())
}
