//! Packing of GEMM operands into 64-byte aligned panels.
//!
//! A block (rows × kc) is packed into MR-row panels: panel q holds, for each p, the MR values
//! A(q·MR + i, p) contiguously (rows past the end are zero). B (k × n) is packed panel-major into
//! NR = 16-wide panels: panel q holds, for each p, B(p, 16q .. 16q+16) (columns past the end are
//! zero), so a K sub-range is an offset inside every panel and a 16-aligned column range is a range of
//! panels — [`PackedB`] serves any such sub-product without repacking.

use std::cell::Cell;

use crate::bf16::types::{bf16_bits, Bf16Rows};
use crate::mat::MatRef;
use crate::microkernel::NR;

/// One 64-byte line of floats: the unit of the aligned buffers.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A growable, 64-byte aligned f32 buffer.
#[derive(Default)]
pub(crate) struct AlignedBuf {
    lines: Vec<Line>,
}

impl AlignedBuf {
    /// A zeroed buffer of at least `len` floats.
    pub(crate) fn zeroed(len: usize) -> Self {
        AlignedBuf { lines: vec![Line([0.0; 16]); len.div_ceil(16)] }
    }

    /// The first `len` floats, growing the buffer if needed (contents unspecified).
    pub(crate) fn slice_mut(&mut self, len: usize) -> &mut [f32] {
        let lines = len.div_ceil(16);
        if self.lines.len() < lines {
            self.lines.resize(lines, Line([0.0; 16]));
        }
        // SAFETY: `Line` is `repr(C)` over `[f32; 16]` (no padding), so the first `lines` lines are
        // 16·lines ≥ len initialized, contiguous, exclusively borrowed floats.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut f32, len) }
    }

    /// The first `len` floats (must be within the buffer).
    pub(crate) fn slice(&self, len: usize) -> &[f32] {
        assert!(len <= self.lines.len() * 16);
        // SAFETY: as in `slice_mut`; `len` floats are inside the allocation.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const f32, len) }
    }
}

thread_local! {
    static PACK_A: Cell<AlignedBuf> = Cell::new(AlignedBuf::default());
    static PACK_B: Cell<AlignedBuf> = Cell::new(AlignedBuf::default());
    static PANEL: Cell<AlignedBuf> = Cell::new(AlignedBuf::default());
}

/// Which per-thread reusable buffer to borrow.
#[derive(Clone, Copy)]
pub(crate) enum Scratch {
    A,
    B,
    /// Contiguous copies of in-place B panels (L1-sized).
    Panel,
}

/// Runs `f` with this thread's reusable buffer (taken out while in use, so a nested call on the same
/// thread — e.g. through rayon work stealing — simply gets a fresh one instead of aliasing).
pub(crate) fn with_scratch<R>(which: Scratch, f: impl FnOnce(&mut AlignedBuf) -> R) -> R {
    let key = match which {
        Scratch::A => &PACK_A,
        Scratch::B => &PACK_B,
        Scratch::Panel => &PANEL,
    };
    let mut buf = key.with(|c| c.take());
    let out = f(&mut buf);
    key.with(|c| c.set(buf));
    out
}

/// Which rows of A a packed block reads: a contiguous range, or an index list (gathering the rows of
/// the tokens routed to one expert).
#[derive(Clone, Copy, Debug)]
pub enum RowSource<'a> {
    /// Block row r is A row `start + r`.
    Range { start: usize },
    /// Block row r is A row `index[r]`.
    Index(&'a [usize]),
}

impl RowSource<'_> {
    #[inline]
    pub(crate) fn row(&self, r: usize) -> usize {
        match self {
            RowSource::Range { start } => start + r,
            RowSource::Index(ix) => ix[r],
        }
    }
}

/// Packs rows `0..rows` (through `src`) and columns `p0 .. p0+kc` of A into MR-row panels of
/// 32-bit words: f32 values, or (`pairs`) k-pairs of A rounded to bf16 for the dot-product kernel — word `p` of a row holds columns 2p (low half) and 2p + 1 (high half,
/// zero past A's last column), and `p0`, `kc` count words.
#[allow(clippy::too_many_arguments)]
pub(crate) fn pack_a_words(
    mr: usize,
    a: MatRef<'_>,
    src: RowSource<'_>,
    rows: usize,
    p0: usize,
    kc: usize,
    pairs: bool,
    dst: &mut [f32],
) {
    let panels = rows.div_ceil(mr);
    debug_assert!(dst.len() >= panels * mr * kc);
    let mut starts = [0usize; crate::microkernel::MR_MAX];
    let col0 = if pairs { 2 * p0 } else { p0 };
    for q in 0..panels {
        let panel = &mut dst[q * mr * kc..(q + 1) * mr * kc];
        let live = mr.min(rows - q * mr);
        for (i, s) in starts.iter_mut().enumerate().take(live) {
            let row = src.row(q * mr + i);
            assert!(row < a.rows, "pack_a: row index {row} out of range ({} rows)", a.rows);
            *s = row * a.row_stride + col0 * a.col_stride;
        }
        if live < mr {
            panel.fill(0.0);
        }
        let cs = a.col_stride;
        if pairs {
            pack_a_pairs(a.data, &starts[..live], cs, mr, a.cols - col0, panel);
            continue;
        }
        #[cfg(target_arch = "x86_64")]
        if mr >= 6 && cs == 1 && kc >= 8 && has_avx2() {
            // Rows contiguous in p (AVX2's 6-row and AVX-512's 14-row panels): 8 × 8 register
            // transposes instead of mr strided, bounds-checked reads per p (those were 6 % of
            // the tiny versatile forward's profile with 14 rows).
            for &s in &starts[..live] {
                assert!(s + kc <= a.data.len(), "pack_a: row out of bounds");
            }
            // SAFETY: AVX2 present; every live row has kc readable values from its start
            // (checked above) and the panel holds mr·kc floats.
            unsafe { pack_a_rows_avx2::<false>(a.data.as_ptr(), &starts[..live], mr, kc, panel) };
            continue;
        }
        // Column-major A (a transposed view, e.g. dYᵀ of a weight gradient) with consecutive
        // rows: the live values of one p are contiguous, so each p is one short copy instead of
        // `live` strided, bounds-checked loads (measured: this pack fell from 6.2 % to
        // 3.4–3.9 % of a linear layer's forward + backward profile, all of it in dW = dYᵀ·X).
        if a.row_stride == 1 && (0..live).all(|i| starts[i] == starts[0] + i) {
            match mr {
                6 => pack_a_cols::<6>(a.data, starts[0], cs, live, panel),
                2 => pack_a_cols::<2>(a.data, starts[0], cs, live, panel),
                14 => pack_a_cols::<14>(a.data, starts[0], cs, live, panel),
                _ => pack_a_strided(a.data, &starts[..live], cs, mr, panel),
            }
            continue;
        }
        pack_a_strided(a.data, &starts[..live], cs, mr, panel);
    }
}

/// An A panel of k-pairs: word `panel[p·mr + i]` = bf16(A(i, 2p)) | bf16(A(i, 2p + 1)) << 16 for
/// the live rows i at `data[starts[i] + c·cs]` (column c; `cols` columns remain, later ones are
/// zero). Rows contiguous in c go eight at a time through the AVX2 packer.
fn pack_a_pairs(
    data: &[f32],
    starts: &[usize],
    cs: usize,
    mr: usize,
    cols: usize,
    panel: &mut [f32],
) {
    let kc = panel.len() / mr;
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if cs == 1 && has_avx2() {
        let whole = (cols / 2).min(kc) / 8 * 8;
        if whole > 0 && mr == 1 {
            // One row (the AMX driver's row-major A): no transposes.
            assert!(starts[0] + 2 * whole <= data.len(), "pack_a: row out of bounds");
            for p in (0..whole).step_by(8) {
                // SAFETY: AVX2 present; values 2p .. 2p + 16 ≤ 2·whole of the row are readable
                // (checked above) and words p .. p + 8 ≤ whole ≤ kc lie inside the panel.
                unsafe {
                    let v = bf16_pairs_avx2(data.as_ptr().add(starts[0] + 2 * p));
                    std::arch::x86_64::_mm256_storeu_ps(panel.as_mut_ptr().add(p), v);
                }
            }
            done = whole;
        } else if whole > 0 {
            for &s in starts {
                assert!(s + 2 * whole <= data.len(), "pack_a: row out of bounds");
            }
            // SAFETY: AVX2 present; every live row has 2·whole readable values from its start
            // (checked above) and the panel holds mr·kc ≥ mr·whole words.
            unsafe { pack_a_rows_avx2::<true>(data.as_ptr(), starts, mr, whole, panel) };
            done = whole;
        }
    }
    let words: &mut [u32] = bytemuck::cast_slice_mut(panel);
    for p in done..kc {
        for (i, &s) in starts.iter().enumerate() {
            let half = |c: usize| if c < cols { u32::from(bf16_bits(data[s + c * cs])) } else { 0 };
            words[p * mr + i] = half(2 * p) | half(2 * p + 1) << 16;
        }
    }
}

/// Generic A panel: `panel[p·mr + i] = data[starts[i] + p·cs]` for the live rows i.
fn pack_a_strided(data: &[f32], starts: &[usize], cs: usize, mr: usize, panel: &mut [f32]) {
    for (p, out) in panel.chunks_exact_mut(mr).enumerate() {
        for (v, &s) in out.iter_mut().zip(starts) {
            *v = data[s + p * cs];
        }
    }
}

/// A panel whose `live` rows are consecutive in memory: `panel[p·M + i] = data[s0 + p·cs + i]`
/// (rows ≥ live were zeroed by the caller). A fixed `M` makes a full row one inline copy.
fn pack_a_cols<const M: usize>(data: &[f32], s0: usize, cs: usize, live: usize, panel: &mut [f32]) {
    for (p, out) in panel.chunks_exact_mut(M).enumerate() {
        let s = s0 + p * cs;
        if live == M {
            let out: &mut [f32; M] = out.try_into().expect("M values");
            *out = data[s..s + M].try_into().expect("M values");
        } else {
            out[..live].copy_from_slice(&data[s..s + live]);
        }
    }
}

/// The part of B a packing call reads: depth steps (rows of B; pairs for bf16 k-pairs)
/// `p0 .. p0+kc` and columns `j0 .. j0+cols`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Block {
    pub p0: usize,
    pub kc: usize,
    pub j0: usize,
    pub cols: usize,
}

/// Packs block `blk` of B into 16-wide panels; panel q starts at `q·panel_stride` and holds its
/// kc rows of 16 values contiguously.
// b [k,n] -> dst [ceil(cols/16)·panel_stride]
pub(crate) fn pack_b(b: MatRef<'_>, blk: Block, panel_stride: usize, dst: &mut [f32]) {
    BOperand::F32(b).pack_panels(blk, panel_stride, dst);
}

/// One 16-wide panel (`blk.cols = nr ≤ 16`): `dst[p·16 + j] = B(p0 + p, j0 + j)` for j < nr,
/// zero beyond.
pub(crate) fn pack_b_panel(b: MatRef<'_>, blk: Block, dst: &mut [f32]) {
    let Block { p0, kc, j0, cols: nr } = blk;
    debug_assert!(dst.len() >= kc * NR && nr <= NR);
    if kc == 0 {
        return;
    }
    let (rs, cs) = (b.row_stride, b.col_stride);
    let base = p0 * rs + j0 * cs;
    if nr == NR && cs == 1 {
        for (p, out) in dst.chunks_exact_mut(NR).take(kc).enumerate() {
            // Fixed-size arrays: a 64-byte copy inline, not a call to memmove per row.
            let out: &mut [f32; NR] = out.try_into().expect("16 values");
            *out = b.data[base + p * rs..base + p * rs + NR].try_into().expect("16 values");
        }
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if nr == NR && rs == 1 && kc >= 8 && has_avx2() {
        // Bounds of the transposing loads: column j0+15 up to row p0+kc-1 must exist.
        assert!(base + (kc - 1) + (NR - 1) * cs < b.data.len());
        // SAFETY: AVX2 present; all loads are inside `b.data` (checked above) and all stores
        // inside `dst[..kc*16]` (checked by debug_assert and slice length use below).
        unsafe {
            pack_b_panel_transpose_avx2(b.data.as_ptr().add(base), cs, kc, &mut dst[..kc * NR])
        };
        return;
    }
    for (p, out) in dst.chunks_exact_mut(NR).take(kc).enumerate() {
        for (j, v) in out.iter_mut().enumerate() {
            *v = if j < nr { b.data[base + p * rs + j * cs] } else { 0.0 };
        }
    }
}

/// What the packed GEMM builds its 16-wide B panels from. A panel always holds 32-bit words,
/// 16 per depth step: f32 values, or (k-pairs) two bf16 values each.
#[derive(Clone, Copy, Debug)]
pub(crate) enum BOperand<'a> {
    /// An f32 matrix B (k × n).
    F32(MatRef<'a>),
    /// B = Wᵀ for bf16 rows W (n × k), widened to f32 (exact): B(p, j) = W[j, p].
    Bf16Widen(Bf16Rows<'a>),
    /// B = Wᵀ in k-pairs for the bf16 dot-product kernel: depth step q holds, per column j, the
    /// word `W[j, 2q] | W[j, 2q+1] << 16` (the high half zero past k). Depth counts pairs.
    Bf16Pairs(Bf16Rows<'a>),
}

impl BOperand<'_> {
    /// Depth steps (rows of B; pairs for `Bf16Pairs`).
    pub(crate) fn depth(&self) -> usize {
        match self {
            BOperand::F32(b) => b.rows,
            BOperand::Bf16Widen(w) => w.cols,
            BOperand::Bf16Pairs(w) => w.cols.div_ceil(2),
        }
    }

    /// Columns of B.
    pub(crate) fn cols(&self) -> usize {
        match self {
            BOperand::F32(b) => b.cols,
            BOperand::Bf16Widen(w) | BOperand::Bf16Pairs(w) => w.rows,
        }
    }

    /// One 16-wide panel of block `blk` (`blk.cols ≤ 16`, zero beyond).
    pub(crate) fn pack_panel(&self, blk: Block, dst: &mut [f32]) {
        match self {
            BOperand::F32(b) => pack_b_panel(*b, blk, dst),
            BOperand::Bf16Widen(w) => pack_bf16_panel(w, blk, false, dst),
            BOperand::Bf16Pairs(w) => pack_bf16_panel(w, blk, true, dst),
        }
    }

    /// Adjacent panels `dst[h·panel_stride..]` for columns `j0 + 16h ..` up to `j0 + cols`.
    /// Full panels of a row-major f32 B are copied row by row across the group: each row of B
    /// is then one contiguous read (a page touched once per group, not once per panel row).
    pub(crate) fn pack_panels(&self, blk: Block, panel_stride: usize, dst: &mut [f32]) {
        let Block { p0, kc, j0, cols } = blk;
        let full = cols / NR;
        if let BOperand::F32(b) = self {
            if b.col_stride == 1 && full >= 2 && kc > 0 {
                pack_b_rows(*b, Block { cols: full * NR, ..blk }, panel_stride, dst);
                if cols > full * NR {
                    let last = &mut dst[full * panel_stride..];
                    let tail = Block { p0, kc, j0: j0 + full * NR, cols: cols - full * NR };
                    pack_b_panel(*b, tail, &mut last[..kc * NR]);
                }
                return;
            }
        }
        for (q, panel) in dst.chunks_mut(panel_stride).take(cols.div_ceil(NR)).enumerate() {
            let j = j0 + q * NR;
            self.pack_panel(
                Block { p0, kc, j0: j, cols: NR.min(j0 + cols - j) },
                &mut panel[..kc * NR],
            );
        }
    }
}

/// Full 16-wide panels (`blk.cols` a multiple of 16) of a row-major B, row by row:
/// `dst[h·panel_stride + p·16 + j] = B(p0 + p, j0 + 16h + j)`.
fn pack_b_rows(b: MatRef<'_>, blk: Block, panel_stride: usize, dst: &mut [f32]) {
    let Block { p0, kc, j0, cols } = blk;
    let panels = cols / NR;
    let width = panels * NR;
    assert!(b.col_stride == 1 && j0 + width <= b.cols && p0 + kc <= b.rows);
    assert!(dst.len() >= (panels - 1) * panel_stride + kc * NR);
    for p in 0..kc {
        let start = (p0 + p) * b.row_stride + j0;
        let row = &b.data[start..start + width];
        for (h, piece) in row.chunks_exact(NR).enumerate() {
            let at = h * panel_stride + p * NR;
            // Fixed-size arrays: a 64-byte copy inline, not a call to memmove per piece.
            let out: &mut [f32; NR] = (&mut dst[at..at + NR]).try_into().expect("16 values");
            *out = piece.try_into().expect("16 values");
        }
    }
}

/// A 16-wide panel of Wᵀ from bf16 rows: `dst[p·16 + j]` is, for column j < nr (W row j0 + j),
/// the word of depth step p0 + p — W[j0+j, p0+p] widened, or the k-pair starting at 2(p0+p) —
/// and zero for j ≥ nr. Eight rows at a time through 8 × 8 transposes of 32-bit words where
/// AVX2 is allowed; the scalar loop covers the rest (the last, half-filled pair of an odd k).
fn pack_bf16_panel(w: &Bf16Rows<'_>, blk: Block, pairs: bool, dst: &mut [f32]) {
    let Block { p0, kc, j0, cols: nr } = blk;
    debug_assert!(nr <= NR && j0 + nr <= w.rows);
    let words: &mut [u32] = bytemuck::cast_slice_mut(&mut dst[..kc * NR]);
    // Depth steps whose pair lies inside every row (both halves before k), counted from p0.
    let first_value = if pairs { 2 * p0 } else { p0 };
    let whole = if pairs { (w.cols / 2).saturating_sub(p0) } else { 0 };
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if nr == NR && has_avx2() {
        // Widening reads the same pair words and splits each into two depth steps.
        let vec_steps = if pairs { whole.min(kc) / 8 * 8 } else { (w.cols - p0).min(kc) / 16 * 16 };
        if vec_steps > 0 {
            let start = j0 * w.row_stride + first_value;
            let span = if pairs { 2 * vec_steps } else { vec_steps };
            assert!(start + (NR - 1) * w.row_stride + span <= w.bits.len());
            // SAFETY: AVX2 present; row j0 + j (j < 16) has `span` readable values from
            // `first_value` (checked above); stores stay inside `words` (vec_steps ≤ kc).
            unsafe {
                pack_bf16_words_avx2(
                    w.bits.as_ptr().add(start),
                    w.row_stride,
                    vec_steps,
                    pairs,
                    &mut words[..vec_steps * NR],
                )
            };
            done = vec_steps;
        }
    }
    for (j, col) in (0..NR).map(|j| (j, j0 + j)) {
        let row = if j < nr {
            Some(&w.bits[col * w.row_stride..col * w.row_stride + w.cols])
        } else {
            None
        };
        for p in done..kc {
            words[p * NR + j] = match row {
                None => 0,
                Some(r) if pairs => {
                    let c = 2 * (p0 + p);
                    u32::from(r[c]) | u32::from(r.get(c + 1).copied().unwrap_or(0)) << 16
                }
                Some(r) => u32::from(r[p0 + p]) << 16,
            };
        }
    }
}

/// The vector part of [`pack_bf16_panel`]: 16 rows at `src + j·rs` (u16 values), `steps` depth
/// steps (a multiple of 8 for pairs, of 16 when widening). Eight rows' eight 32-bit pair words go
/// through one 8 × 8 transpose; when widening, each transposed pair word yields two depth steps
/// (low half shifted up, high half masked).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pack_bf16_words_avx2(
    src: *const u16,
    rs: usize,
    steps: usize,
    pairs: bool,
    dst: &mut [u32],
) {
    use std::arch::x86_64::*;
    let out = dst.as_mut_ptr();
    let high = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
    // Pair words per group of rows: `steps` for pairs, steps / 2 when widening.
    let words = if pairs { steps } else { steps / 2 };
    let mut q = 0;
    while q < words {
        for h in 0..2 {
            let mut rows = [_mm256_setzero_ps(); 8];
            for (r, v) in rows.iter_mut().enumerate() {
                // SAFETY: row 8h + r holds values 2q .. 2q + 16 (caller contract).
                *v = unsafe { _mm256_loadu_ps(src.add((8 * h + r) * rs + 2 * q) as *const f32) };
            }
            let t = crate::microkernel::avx2::transpose8(rows);
            for (r, v) in t.iter().enumerate() {
                let v = _mm256_castps_si256(*v);
                // SAFETY: the depth steps written are < steps, each 16 words inside dst.
                unsafe {
                    if pairs {
                        _mm256_storeu_si256(out.add((q + r) * NR + 8 * h) as *mut __m256i, v);
                    } else {
                        let p = 2 * (q + r);
                        let even = _mm256_slli_epi32::<16>(v);
                        let odd = _mm256_and_si256(v, high);
                        _mm256_storeu_si256(out.add(p * NR + 8 * h) as *mut __m256i, even);
                        _mm256_storeu_si256(out.add((p + 1) * NR + 8 * h) as *mut __m256i, odd);
                    }
                }
            }
        }
        q += 8;
    }
}

/// An `mr`-row A panel (mr ≤ 16) from rows contiguous in p (`starts` = offsets of the live rows):
/// `dst[p·mr + i] = data[starts[i] + p]`; rows past the live ones were zeroed by the caller.
/// Groups of eight rows go through 8 × 8 register transposes. With `PAIRS` the words are k-pairs
/// rounded to bf16 (`dst[p·mr + i]` from values 2p and 2p + 1 of the row; kc a multiple of 8).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pack_a_rows_avx2<const PAIRS: bool>(
    data: *const f32,
    starts: &[usize],
    mr: usize,
    kc: usize,
    dst: &mut [f32],
) {
    use std::arch::x86_64::*;
    debug_assert!(mr <= 16 && dst.len() >= mr * kc && starts.len() <= mr);
    debug_assert!(!PAIRS || kc.is_multiple_of(8));
    let out = dst.as_mut_ptr();
    for g0 in (0..mr).step_by(8) {
        let width = 8.min(mr - g0);
        let lane_ids = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(width as i32), lane_ids);
        let live = starts.len().saturating_sub(g0).min(width);
        if live == 0 {
            continue;
        }
        let group = &starts[g0..g0 + live];
        let mut p = 0;
        while p + 8 <= kc {
            let mut rows = [_mm256_setzero_ps(); 8];
            for (r, &s) in rows.iter_mut().zip(group) {
                // SAFETY: p + 8 ≤ kc values (words) of this row are readable (caller contract).
                *r = unsafe {
                    if PAIRS {
                        bf16_pairs_avx2(data.add(s + 2 * p))
                    } else {
                        _mm256_loadu_ps(data.add(s + p))
                    }
                };
            }
            let t = crate::microkernel::avx2::transpose8(rows);
            for (q, v) in t.iter().enumerate() {
                // SAFETY: floats (p+q)·mr + g0 .. + width lie inside dst (p + q < kc and
                // g0 + width ≤ mr); a partial group stores only its `width` lanes.
                unsafe {
                    let o = out.add((p + q) * mr + g0);
                    if width == 8 {
                        _mm256_storeu_ps(o, *v);
                    } else if width == 6 {
                        // 4 + 2 floats with plain moves (AMD's masked stores are microcoded).
                        _mm_storeu_ps(o, _mm256_castps256_ps128(*v));
                        let hi = _mm256_extractf128_ps::<1>(*v);
                        _mm_store_sd(o.add(4) as *mut f64, _mm_castps_pd(hi));
                    } else {
                        _mm256_maskstore_ps(o, keep, *v);
                    }
                }
            }
            p += 8;
        }
        for pp in p..kc {
            for (i, &s) in group.iter().enumerate() {
                // SAFETY: as above, one element at a time.
                unsafe { *out.add(pp * mr + g0 + i) = *data.add(s + pp) };
            }
        }
    }
}

/// Eight k-pairs from 16 floats at p: word t = bf16(p[2t]) | bf16(p[2t + 1]) << 16, rounded as
/// [`bf16_bits`] (integer arithmetic: `vcvtne2ps2bf16` would flush subnormals to zero).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn bf16_pairs_avx2(p: *const f32) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let round = |v: __m256i| {
        let odd = _mm256_and_si256(_mm256_srli_epi32::<16>(v), _mm256_set1_epi32(1));
        let rounded = _mm256_add_epi32(v, _mm256_add_epi32(_mm256_set1_epi32(0x7FFF), odd));
        let abs = _mm256_and_si256(v, _mm256_set1_epi32(0x7FFF_FFFF));
        let nan = _mm256_cmpgt_epi32(abs, _mm256_set1_epi32(0x7F80_0000));
        let quiet = _mm256_or_si256(v, _mm256_set1_epi32(0x0040_0000));
        _mm256_srli_epi32::<16>(_mm256_blendv_epi8(rounded, quiet, nan))
    };
    // SAFETY: the caller guarantees 16 readable floats at p.
    let (lo, hi) = unsafe {
        (_mm256_loadu_si256(p as *const __m256i), _mm256_loadu_si256(p.add(8) as *const __m256i))
    };
    // packus interleaves 128-bit lanes: [lo 0..4, hi 0..4 | lo 4..8, hi 4..8]; the permute puts
    // the 64-bit quarters back in order 0, 2, 1, 3.
    let words = _mm256_packus_epi32(round(lo), round(hi));
    _mm256_castsi256_ps(_mm256_permute4x64_epi64::<0b11_01_10_00>(words))
}

/// AVX2 packing code allowed by the one ISA decision (`microkernel::isa`).
#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    crate::microkernel::avx2_allowed() && std::arch::is_x86_feature_detected!("avx2")
}

/// Panel of 16 columns that are each contiguous in p (column stride `cs`): 8 × 8 register
/// transposes instead of 16 strided reads per row.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pack_b_panel_transpose_avx2(src: *const f32, cs: usize, kc: usize, dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let out = dst.as_mut_ptr();
    let mut p = 0;
    while p + 8 <= kc {
        for h in 0..2 {
            let mut rows = [_mm256_setzero_ps(); 8];
            for (q, r) in rows.iter_mut().enumerate() {
                // SAFETY: column 8h+q, rows p..p+8 lie inside B (caller checked the far corner).
                *r = unsafe { _mm256_loadu_ps(src.add((8 * h + q) * cs + p)) };
            }
            let t = crate::microkernel::avx2::transpose8(rows);
            for (r, v) in t.iter().enumerate() {
                // SAFETY: (p + r)·16 + 8h + 8 ≤ kc·16 = dst.len().
                unsafe { _mm256_storeu_ps(out.add((p + r) * NR + 8 * h), *v) };
            }
        }
        p += 8;
    }
    for pp in p..kc {
        for j in 0..NR {
            // SAFETY: same bounds as above, one element at a time.
            unsafe { *out.add(pp * NR + j) = *src.add(j * cs + pp) };
        }
    }
}

/// B (k × n) packed once into 16-wide panels for repeated products (weights).
///
/// Any K sub-range and any column range starting at a multiple of 16 can be multiplied without
/// repacking (see [`crate::gemm::gemm_packed_with`]).
pub struct PackedB {
    buf: AlignedBuf,
    k: usize,
    n: usize,
}

/// Columns `cols` (start a multiple of 16, any end) and depths `ks` (B's rows) of a [`PackedB`]:
/// the B operand of [`crate::gemm::gemm_packed_with`].
#[derive(Clone)]
pub struct PackedPart<'a> {
    pub b: &'a PackedB,
    pub cols: std::ops::Range<usize>,
    pub ks: std::ops::Range<usize>,
}

impl PackedB {
    /// B[ks, cols], without repacking.
    pub fn part(&self, cols: std::ops::Range<usize>, ks: std::ops::Range<usize>) -> PackedPart<'_> {
        PackedPart { b: self, cols, ks }
    }

    /// Packs all of B.
    // b [k,n] -> panels [ceil(n/16), k, 16]
    pub fn pack(b: MatRef<'_>) -> PackedB {
        let (k, n) = (b.rows, b.cols);
        let panels = n.div_ceil(NR);
        let mut buf = AlignedBuf::zeroed(panels * k * NR);
        if k > 0 && n > 0 {
            let dst = buf.slice_mut(panels * k * NR);
            let panel_stride = k * NR;
            if panels >= 8 && k * n >= 1 << 16 {
                use rayon::prelude::*;
                dst.par_chunks_mut(panel_stride).enumerate().for_each(|(q, panel)| {
                    let blk = Block { p0: 0, kc: k, j0: q * NR, cols: NR.min(n - q * NR) };
                    pack_b_panel(b, blk, panel);
                });
            } else {
                pack_b(b, Block { p0: 0, kc: k, j0: 0, cols: n }, panel_stride, dst);
            }
        }
        PackedB { buf, k, n }
    }

    /// K: rows of the packed B.
    pub fn rows(&self) -> usize {
        self.k
    }

    /// N: columns of the packed B.
    pub fn cols(&self) -> usize {
        self.n
    }

    /// All panels (`ceil(n/16)` panels of `k × 16` floats).
    pub(crate) fn data(&self) -> &[f32] {
        self.buf.slice(self.n.div_ceil(NR) * self.k * NR)
    }

    /// Element B(p, j) (for tests and debugging).
    pub fn at(&self, p: usize, j: usize) -> f32 {
        assert!(p < self.k && j < self.n);
        self.data()[(j / NR) * self.k * NR + p * NR + j % NR]
    }
}

impl std::fmt::Debug for PackedB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedB {{ k: {}, n: {} }}", self.k, self.n)
    }
}

#[cfg(test)]
mod tests;
