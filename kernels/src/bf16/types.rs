//! The bf16 vocabulary shared by the kernels: bf16 weight rows ([`Bf16Rows`]), the rounding of
//! f32 to bf16 bits and back, the paths a bf16 product can take and the errors of their
//! arguments. A leaf module: the packers and the AMX driver use it without depending on the
//! GEMM entry points in [`super`].

/// Errors of the bf16 kernels' arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Bf16Error {
    /// `w` is shorter than the rows it should hold.
    Weights { rows: usize, row_stride: usize, k: usize, needed: usize, len: usize },
    /// Rows would overlap: the stride is shorter than a row.
    Stride { row_stride: usize, k: usize },
    /// `x [m, k]`, `W [n, k]` and `out [m, n]` do not fit together.
    Shape { x: [usize; 2], w: [usize; 2], out: [usize; 2] },
    /// A view reaches outside its slice, or `out` has overlapping elements.
    View(&'static str),
    /// `VFFN_BF16` holds a name that is not a path.
    UnknownPath(String),
    /// A path was asked for where it cannot run (`dot` needs avx512_bf16, `amx` AMX-BF16, both
    /// the avx512 kernel family).
    Unavailable(Bf16Path),
}

impl std::fmt::Display for Bf16Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bf16Error::Weights { rows, row_stride, k, needed, len } => write!(
                f,
                "bf16 weights: {rows} rows of stride {row_stride} (k = {k}) need {needed} values, got {len}"
            ),
            Bf16Error::Stride { row_stride, k } => {
                write!(f, "bf16 weights: row stride {row_stride} is shorter than k = {k}")
            }
            Bf16Error::Shape { x, w, out } => write!(
                f,
                "bf16 linear: x [{}, {}], W [{}, {}] and out [{}, {}] do not fit (x [m, k], W [n, k], out [m, n])",
                x[0], x[1], w[0], w[1], out[0], out[1]
            ),
            Bf16Error::View(what) => write!(f, "bf16 linear: {what}"),
            Bf16Error::UnknownPath(s) => {
                write!(f, "VFFN_BF16=`{s}` is not one of amx, dot, widen")
            }
            Bf16Error::Unavailable(p) => write!(
                f,
                "the bf16 `{p}` path cannot run here (dot needs avx512_bf16, amx AMX-BF16, both the avx512 kernel family: VFFN_KERNEL)"
            ),
        }
    }
}

impl std::error::Error for Bf16Error {}

/// The rows of a linear layer's weight as bf16 bits: `W[j, p] = bits[j·row_stride + p]` for
/// `j < rows`, `p < cols`.
#[derive(Clone, Copy, Debug)]
pub struct Bf16Rows<'a> {
    pub bits: &'a [u16],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
}

impl<'a> Bf16Rows<'a> {
    /// Contiguous `rows × cols` weights.
    pub fn new(bits: &'a [u16], rows: usize, cols: usize) -> Result<Self, Bf16Error> {
        Self::strided(bits, rows, cols, cols)
    }

    /// Rows `row_stride` values apart.
    pub fn strided(
        bits: &'a [u16],
        rows: usize,
        cols: usize,
        row_stride: usize,
    ) -> Result<Self, Bf16Error> {
        let w = Bf16Rows { bits, rows, cols, row_stride };
        w.check()?;
        Ok(w)
    }

    /// Whether every row fits in `bits` without overlapping the next.
    pub fn check(&self) -> Result<(), Bf16Error> {
        let (rows, k, row_stride) = (self.rows, self.cols, self.row_stride);
        if row_stride < k && rows > 1 {
            return Err(Bf16Error::Stride { row_stride, k });
        }
        let needed = if rows == 0 || k == 0 {
            0
        } else {
            (rows - 1).checked_mul(row_stride).and_then(|r| r.checked_add(k)).unwrap_or(usize::MAX)
        };
        if self.bits.len() < needed {
            return Err(Bf16Error::Weights { rows, row_stride, k, needed, len: self.bits.len() });
        }
        Ok(())
    }

    /// The f32 value of W[j, p].
    pub fn at(&self, j: usize, p: usize) -> f32 {
        assert!(
            j < self.rows && p < self.cols,
            "Bf16Rows::at({j}, {p}) outside {}×{}",
            self.rows,
            self.cols
        );
        widen(self.bits[j * self.row_stride + p])
    }
}

/// How the packed GEMM multiplies by bf16 weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Path {
    /// Weights widened to f32 in the B panels, the f32 micro-kernel of the selected family.
    Widen,
    /// `vdpbf16ps` on k-pairs, x rounded to bf16 (round-to-nearest-even) when packed.
    Dot,
    /// AMX-BF16 tiles (`tdpbf16ps`) on the same k-pairs, x rounded likewise.
    Amx,
}

impl Bf16Path {
    /// Name as accepted by `VFFN_BF16`.
    pub const fn name(self) -> &'static str {
        match self {
            Bf16Path::Widen => "widen",
            Bf16Path::Dot => "dot",
            Bf16Path::Amx => "amx",
        }
    }
}

impl std::fmt::Display for Bf16Path {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The bf16 bits of x rounded to nearest, ties to even (NaN stays NaN, made quiet: the `half`
/// crate's `bf16::from_f32`). The dot path rounds x this way when packing it.
#[inline]
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if b & 0x7FFF_FFFF > 0x7F80_0000 {
        return ((b >> 16) | 0x40) as u16;
    }
    ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
}

/// The f32 value of bf16 bits.
#[inline(always)]
pub(crate) fn widen(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}
