//! `C = alpha·A·B + beta·C` over strided views.
//!
//! PLACEHOLDER: naive triple loop with the final public signature; the packed BLIS-style
//! implementation replaces the body (issue 2).

/// A read-only strided matrix view: element (i, j) lives at `data[i*row_stride + j*col_stride]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// Row-major contiguous `rows × cols` view.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols, 1)
    }
    /// View with arbitrary strides (panics if an element would fall outside `data`).
    pub fn strided(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Self {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * row_stride + (cols - 1) * col_stride;
            assert!(
                last < data.len(),
                "MatRef out of bounds: last index {last} >= len {}",
                data.len()
            );
        }
        MatRef { data, rows, cols, row_stride, col_stride }
    }
    /// The transpose, at no cost (strides swap).
    pub fn t(self) -> Self {
        MatRef {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }
    #[inline]
    pub fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.row_stride + j * self.col_stride]
    }
}

/// A mutable strided matrix view.
#[derive(Debug)]
pub struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl<'a> MatMut<'a> {
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        Self::strided(data, rows, cols, cols, 1)
    }
    pub fn strided(
        data: &'a mut [f32],
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Self {
        if rows > 0 && cols > 0 {
            let last = (rows - 1) * row_stride + (cols - 1) * col_stride;
            assert!(
                last < data.len(),
                "MatMut out of bounds: last index {last} >= len {}",
                data.len()
            );
        }
        MatMut { data, rows, cols, row_stride, col_stride }
    }
}

/// `C = alpha·A·B + beta·C`; A is m×k, B is k×n, C is m×n. `beta == 0` overwrites C (NaNs in C are
/// not propagated). Transposed operands are passed as transposed views (`MatRef::t`).
pub fn gemm(alpha: f32, a: MatRef<'_>, b: MatRef<'_>, beta: f32, c: MatMut<'_>) {
    assert_eq!(a.cols, b.rows, "gemm: inner dimensions differ");
    assert_eq!((a.rows, b.cols), (c.rows, c.cols), "gemm: output shape mismatch");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f32;
            for p in 0..k {
                acc += a.at(i, p) * b.at(p, j);
            }
            let idx = i * c.row_stride + j * c.col_stride;
            c.data[idx] = if beta == 0.0 { alpha * acc } else { alpha * acc + beta * c.data[idx] };
        }
    }
}
