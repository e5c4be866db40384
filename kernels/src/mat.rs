//! Strided matrix views: the operands of every kernel (`MatRef`, `MatMut`) and the raw output
//! view shared by worker threads (`OutView`). Their own file so that gemm.rs, gemv.rs and pack.rs
//! all import them from here rather than from each other.

/// Panics unless the last element of a `rows × cols` view with these strides is inside `len`.
fn check_bounds(what: &str, len: usize, rows: usize, cols: usize, rs: usize, cs: usize) {
    if rows > 0 && cols > 0 {
        let last = (rows - 1) * rs + (cols - 1) * cs;
        assert!(last < len, "{what} out of bounds: last index {last} >= len {len}");
    }
}

/// A strided matrix view over `&'a [f32]` or (with `mut`) `&'a mut [f32]`: element (i, j) lives
/// at `data[i*row_stride + j*col_stride]`; its constructors check that every element is inside.
macro_rules! strided_view {
    ($(#[$m:meta])* $view:ident $($mutability:tt)?) => {
        $(#[$m])*
        pub struct $view<'a> {
            pub data: &'a $($mutability)? [f32],
            pub rows: usize,
            pub cols: usize,
            pub row_stride: usize,
            pub col_stride: usize,
        }

        impl<'a> $view<'a> {
            /// Row-major contiguous `rows × cols` view.
            pub fn new(data: &'a $($mutability)? [f32], rows: usize, cols: usize) -> Self {
                Self::strided(data, rows, cols, cols, 1)
            }
            /// View with arbitrary strides (panics if an element would fall outside `data`).
            pub fn strided(
                data: &'a $($mutability)? [f32],
                rows: usize,
                cols: usize,
                row_stride: usize,
                col_stride: usize,
            ) -> Self {
                check_bounds(stringify!($view), data.len(), rows, cols, row_stride, col_stride);
                $view { data, rows, cols, row_stride, col_stride }
            }
        }
    };
}

strided_view! {
    /// A read-only strided matrix view: element (i, j) lives at `data[i*row_stride + j*col_stride]`.
    #[derive(Clone, Copy, Debug)]
    MatRef
}

strided_view! {
    /// A mutable strided matrix view.
    #[derive(Debug)]
    MatMut mut
}

impl MatRef<'_> {
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

/// Raw view of C shared by the worker threads (each writes disjoint tiles).
#[derive(Clone, Copy)]
pub(crate) struct OutView {
    pub ptr: *mut f32,
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

// SAFETY: workers write disjoint elements of C (distinct output tiles), and `C` is exclusively
// borrowed by the gemm call for its whole duration.
unsafe impl Send for OutView {}
// SAFETY: as above.
unsafe impl Sync for OutView {}

impl OutView {
    pub(crate) fn from_mat(c: MatMut<'_>) -> OutView {
        OutView {
            ptr: c.data.as_mut_ptr(),
            rows: c.rows,
            cols: c.cols,
            rs: c.row_stride,
            cs: c.col_stride,
        }
    }

    /// Address of element (i, j) (inside the view when i < rows, j < cols).
    #[inline]
    pub(crate) fn elem(&self, i: usize, j: usize) -> *mut f32 {
        self.ptr.wrapping_add(i * self.rs + j * self.cs)
    }

    pub(crate) fn t(self) -> OutView {
        OutView { ptr: self.ptr, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }

    /// `C = beta·C` (zero when beta is 0), the whole product when k = 0 or alpha = 0.
    pub(crate) fn scale(self, beta: f32) {
        for i in 0..self.rows {
            for j in 0..self.cols {
                // SAFETY: (i, j) is inside the checked C view.
                unsafe {
                    let p = self.ptr.add(i * self.rs + j * self.cs);
                    *p = if beta == 0.0 { 0.0 } else { beta * *p };
                }
            }
        }
    }
}

/// One product `C = alpha·A·B + beta·C` on kernel `kind`, its views checked: what each path of
/// [`crate::gemm::gemm_with`] takes (B a matrix, or for the packed loops any [`crate::pack::BOperand`]).
#[derive(Clone, Copy)]
pub(crate) struct Gemm<'a, B = MatRef<'a>> {
    pub kind: crate::microkernel::KernelKind,
    pub alpha: f32,
    pub a: MatRef<'a>,
    pub b: B,
    pub beta: f32,
    pub c: OutView,
}

impl<'a> Gemm<'a> {
    /// The same product transposed, Cᵀ = Bᵀ·Aᵀ (no data moves: strides swap).
    pub(crate) fn t(self) -> Self {
        Gemm { a: self.b.t(), b: self.a.t(), c: self.c.t(), ..self }
    }

    /// The product with B as another operand type.
    pub(crate) fn with_b<B>(self, b: B) -> Gemm<'a, B> {
        let Gemm { kind, alpha, a, beta, c, .. } = self;
        Gemm { kind, alpha, a, b, beta, c }
    }
}
