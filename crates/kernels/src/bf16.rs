//! Matrix products in bf16 with f32 sums, for bf16 mixed-precision training: both operands are
//! rounded to bf16 (to nearest, ties to even; subnormals to zero, as `VCVTNE2PS2BF16` does) and
//! their products summed in f32.
//!
//! On a CPU with AVX512_BF16 the microkernel is `VDPBF16PS`, which adds two bf16 products into
//! each f32 lane: twice the lanes of an f32 FMA. Elsewhere ([`Bf16Path::Reference`]) the same
//! rounded operands go through the f32 products; a product of two bf16 values is exact in f32,
//! so the two paths differ only in the order of their sums (and in `VDPBF16PS` flushing
//! subnormal sums to zero), which makes the reference the numerics oracle of the tests, and the
//! path a forced dispatch takes.
//!
//! Operands are packed once a product: the left-hand `[m, k]` as rows of bf16 pairs along `k`
//! ([`PackedA`]), the right-hand `[k, n]` as panels of [`NR`] columns whose rows are bf16 pairs
//! along `k` ([`PackedB`]), so that one 32-bit broadcast of a pair of `a` meets one pair of each
//! column in a `VDPBF16PS`. The loops block `k` by [`KC`] pairs (a panel's block stays in L1)
//! and the rows by [`MC`] (a row block stays in L2 across the panels).

use rayon::prelude::*;

use super::matmul::matmul;
use super::simd::bf16_dot;

/// Columns of a panel: two AVX-512 registers of f32 sums.
const NR: usize = 32;
/// Most rows of one microkernel call (2·MR accumulators of the 32 registers).
const MR: usize = 12;
/// Pairs of `k` in a block: a panel's block is `KC·NR·4` bytes (32 KiB, in L1 and L2).
const KC: usize = 256;
/// Rows in a block of the left-hand side: `MC·KC·4` bytes (192 KiB) stay in L2.
const MC: usize = 192;

/// `x` rounded to bf16, as bits: to nearest, ties to even; subnormals become zeros of their sign
/// and NaNs stay quiet NaNs, as `VCVTNE2PS2BF16` converts.
#[inline(always)]
pub fn bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1))) >> 16;
    let out = if (b & 0x7fff_ffff) > 0x7f80_0000 {
        (b >> 16) | 0x40
    } else if b & 0x7f80_0000 == 0 {
        (b >> 16) & 0x8000
    } else {
        rounded
    };
    out as u16
}

/// `x` rounded to bf16 ([`bf16_bits`]) and widened back to f32 (exact).
#[inline(always)]
pub fn round_bf16(x: f32) -> f32 {
    f32::from_bits((bf16_bits(x) as u32) << 16)
}

/// Two bf16 values in one 32-bit lane, `lo` in the low half: the layout `VDPBF16PS` reads.
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    bf16_bits(lo) as u32 | (bf16_bits(hi) as u32) << 16
}

/// The two values of a packed pair, widened.
#[inline(always)]
fn unpair(p: u32) -> (f32, f32) {
    (f32::from_bits(p << 16), f32::from_bits(p & 0xffff_0000))
}

/// How the bf16 products run on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Path {
    /// `VDPBF16PS` (AVX512_BF16).
    Dot,
    /// The f32 products on the rounded operands.
    Reference,
}

impl Bf16Path {
    /// `Dot` where this CPU has it (and `KARNNA_SIMD` allows it), else `Reference`.
    pub fn detect() -> Self {
        if bf16_dot() {
            Bf16Path::Dot
        } else {
            Bf16Path::Reference
        }
    }
}

/// A strided `[rows, cols]` f32 matrix: element `(r, c)` at `r·rs + c·cs`, every element inside
/// the slice (checked when it is made).
#[derive(Clone, Copy, Debug)]
pub struct Strided<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Strided<'a> {
    /// A row-major `[rows, cols]` matrix.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, rows, cols, cols, 1)
    }

    /// The transpose `[cols, rows]` of a row-major `[rows, cols]` matrix.
    pub fn transposed(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self::new(data, cols, rows, 1, cols)
    }

    /// `data` read as `[rows, cols]` with row stride `rs` and column stride `cs`, or `None`
    /// when an element would lie outside it.
    pub fn with_strides(
        data: &'a [f32],
        (rows, cols): (usize, usize),
        (rs, cs): (usize, usize),
    ) -> Option<Self> {
        let last = rows
            .checked_sub(1)
            .zip(cols.checked_sub(1))
            .map(|(r, c)| r.checked_mul(rs)?.checked_add(c.checked_mul(cs)?));
        match last {
            Some(None) => return None,
            Some(Some(last)) if last >= data.len() => return None,
            _ => {}
        }
        Some(Self {
            data,
            rows,
            cols,
            rs,
            cs,
        })
    }

    /// [`Strided::with_strides`] of a matrix its callers made to fit.
    ///
    /// # Panics
    ///
    /// Panics if an element would lie outside `data`.
    fn new(data: &'a [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        Self::with_strides(data, (rows, cols), (rs, cs)).unwrap_or_else(|| {
            panic!(
                "a [{rows}, {cols}] matrix with strides ({rs}, {cs}) needs more than {} values",
                data.len()
            )
        })
    }

    /// Its shape, `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// The block of rows `rows` and columns `cols`.
    ///
    /// # Panics
    ///
    /// Panics if a range reaches past the matrix.
    fn block(&self, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>) -> Self {
        assert!(
            rows.end <= self.rows && cols.end <= self.cols,
            "a block inside"
        );
        if rows.is_empty() || cols.is_empty() {
            return Self::new(&[], 0, 0, self.rs, self.cs);
        }
        let start = rows.start * self.rs + cols.start * self.cs;
        Self::new(
            &self.data[start..],
            rows.len(),
            cols.len(),
            self.rs,
            self.cs,
        )
    }

    #[inline(always)]
    fn at(&self, r: usize, c: usize) -> f32 {
        self.data[r * self.rs + c * self.cs]
    }
}

/// A left-hand `[m, k]` matrix in bf16: row `r` is `kp = ⌈k/2⌉` pairs `(a[r][2p], a[r][2p+1])`
/// (the odd `k`'s last pair padded with a zero).
pub(super) struct PackedA {
    m: usize,
    kp: usize,
    data: Vec<u32>,
}

impl PackedA {
    /// `a` rounded to bf16 and packed (threaded when large), reading it along its contiguous
    /// axis: by rows when they are contiguous, else by pairs of columns, 16 rows at a time.
    pub fn new(a: Strided) -> Self {
        const GROUP: usize = 16;
        let (m, k) = (a.rows, a.cols);
        let kp = k.div_ceil(2);
        let mut data = vec![0u32; m * kp];
        if kp == 0 {
            return Self { m, kp, data };
        }
        let fill = |(g, rows): (usize, &mut [u32])| {
            let r0 = g * GROUP;
            let n = rows.len() / kp;
            if a.cs == 1 {
                for (i, row) in rows.chunks_exact_mut(kp).enumerate() {
                    let start = (r0 + i) * a.rs;
                    pairs_of(&a.data[start..start + k], row);
                }
            } else if a.rs == 1 {
                // Column c of `a` is contiguous: rows r0.. of columns 2p and 2p + 1 side by side.
                let mut lanes = [0u32; GROUP];
                for p in 0..kp {
                    let lo = &a.data[2 * p * a.cs + r0..][..n];
                    let hi = (2 * p + 1 < k).then(|| &a.data[(2 * p + 1) * a.cs + r0..][..n]);
                    zip_pairs(lo, hi, &mut lanes[..n]);
                    for (row, &v) in rows.chunks_exact_mut(kp).zip(&lanes) {
                        row[p] = v;
                    }
                }
            } else {
                for (i, row) in rows.chunks_exact_mut(kp).enumerate() {
                    for (p, out) in row.iter_mut().enumerate() {
                        let hi = if 2 * p + 1 < k {
                            a.at(r0 + i, 2 * p + 1)
                        } else {
                            0.0
                        };
                        *out = pair(a.at(r0 + i, 2 * p), hi);
                    }
                }
            }
        };
        if m * kp >= 1 << 16 {
            data.par_chunks_mut(GROUP * kp).enumerate().for_each(fill);
        } else {
            data.chunks_mut(GROUP * kp).enumerate().for_each(fill);
        }
        Self { m, kp, data }
    }
}

/// `out[i] = (src[2i], src[2i+1])` in bf16, the last pair of an odd `src` padded with a zero.
#[inline(always)]
fn pairs_of(src: &[f32], out: &mut [u32]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if bf16_dot() {
        let whole = (src.len() / 32).min(out.len() / 16);
        // SAFETY: bf16_dot() says the CPU has AVX512_BF16 and AVX-512F; whole·32 ≤ src.len()
        // and whole·16 ≤ out.len().
        unsafe { pairs_of_avx512(&src[..whole * 32], &mut out[..whole * 16]) };
        done = whole * 16;
    }
    let (src, out) = (&src[2 * done..], &mut out[done..]);
    let (two, rest) = src.split_at(src.len() / 2 * 2);
    for (o, t) in out.iter_mut().zip(two.chunks_exact(2)) {
        *o = pair(t[0], t[1]);
    }
    if let Some(&last) = rest.first() {
        out[two.len() / 2] = pair(last, 0.0);
    }
}

/// [`pairs_of`] 32 values at a time: `VCVTNE2PS2BF16` keeps their order, so that its 32 bf16
/// are the 16 pairs.
///
/// # Safety
///
/// The CPU must have AVX512_BF16 and AVX-512F; `src` must hold `2·out.len()` values, a multiple
/// of 32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
unsafe fn pairs_of_avx512(src: &[f32], out: &mut [u32]) {
    use std::arch::x86_64::*;
    for (s, o) in src.chunks_exact(32).zip(out.chunks_exact_mut(16)) {
        // SAFETY: s holds 32 values and o 16 (chunks_exact).
        unsafe {
            let lo = _mm512_loadu_ps(s.as_ptr());
            let hi = _mm512_loadu_ps(s.as_ptr().add(16));
            let v = _mm512_cvtne2ps_pbh(hi, lo);
            _mm512_storeu_si512(
                o.as_mut_ptr().cast(),
                std::mem::transmute::<__m512bh, __m512i>(v),
            );
        }
    }
}

/// `out[i] = (lo[i], hi[i])` in bf16 (`hi` zeros when `None`).
#[inline(always)]
fn zip_pairs(lo: &[f32], hi: Option<&[f32]>, out: &mut [u32]) {
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if bf16_dot() {
        let whole = lo.len().min(out.len()) / 16 * 16;
        let hi = hi.map(|h| &h[..whole]);
        // SAFETY: bf16_dot() says the CPU has AVX512_BF16 and AVX-512F/BW; the slices hold
        // `whole` values each.
        unsafe { zip_pairs_avx512(&lo[..whole], hi, &mut out[..whole]) };
        done = whole;
    }
    let (lo, out) = (&lo[done..], &mut out[done..]);
    match hi {
        Some(hi) => {
            for ((o, &l), &h) in out.iter_mut().zip(lo).zip(&hi[done..]) {
                *o = pair(l, h);
            }
        }
        None => {
            for (o, &l) in out.iter_mut().zip(lo) {
                *o = pair(l, 0.0);
            }
        }
    }
}

/// [`zip_pairs`] 16 values at a time: both sides converted by one `VCVTNE2PS2BF16` (`lo`'s 16
/// bf16 then `hi`'s), then interleaved by one `VPERMW`.
///
/// # Safety
///
/// The CPU must have AVX512_BF16 and AVX-512F/BW; `lo`, `hi` and `out` must have one length, a
/// multiple of 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
unsafe fn zip_pairs_avx512(lo: &[f32], hi: Option<&[f32]>, out: &mut [u32]) {
    use std::arch::x86_64::*;
    // Word 2i of the result is word i of the conversion (lo[i]), word 2i + 1 is word 16 + i
    // (hi[i]).
    let order: [i16; 32] = std::array::from_fn(|w| ((w % 2) * 16 + w / 2) as i16);
    // SAFETY: `order` holds 32 i16, 64 bytes.
    let order = unsafe { _mm512_loadu_si512(order.as_ptr().cast()) };
    for (i, o) in out.chunks_exact_mut(16).enumerate() {
        // SAFETY: each slice read holds 16 values (the caller's lengths), and o holds 16.
        unsafe {
            let l = _mm512_loadu_ps(lo[16 * i..][..16].as_ptr());
            let h = match hi {
                Some(hi) => _mm512_loadu_ps(hi[16 * i..][..16].as_ptr()),
                None => _mm512_setzero_ps(),
            };
            let both = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(h, l));
            let v = _mm512_permutexvar_epi16(order, both);
            _mm512_storeu_si512(o.as_mut_ptr().cast(), v);
        }
    }
}

/// A right-hand `[k, n]` matrix in bf16, in panels of [`NR`] columns (the last padded with
/// zeros): pair `p` of column `c` of panel `q` at `(q·kp + p)·NR + c`.
pub(super) struct PackedB {
    n: usize,
    kp: usize,
    data: Vec<u32>,
}

impl PackedB {
    /// `b` rounded to bf16 and packed (threaded when large), reading it along its contiguous
    /// axis: two rows at a time when they are contiguous, else a column at a time.
    pub fn new(b: Strided) -> Self {
        let (k, n) = (b.rows, b.cols);
        let kp = k.div_ceil(2);
        let panels = n.div_ceil(NR);
        let mut data = vec![0u32; panels * kp * NR];
        if kp == 0 {
            return Self { n, kp, data };
        }
        let fill = |(q, panel): (usize, &mut [u32])| {
            let cols = q * NR..(q * NR + NR).min(n);
            let w = cols.len();
            if b.cs == 1 {
                for (p, out) in panel.chunks_exact_mut(NR).enumerate() {
                    let lo = &b.data[2 * p * b.rs + cols.start..][..w];
                    let hi =
                        (2 * p + 1 < k).then(|| &b.data[(2 * p + 1) * b.rs + cols.start..][..w]);
                    zip_pairs(lo, hi, &mut out[..w]);
                }
            } else if b.rs == 1 {
                // Column c of `b` is contiguous.
                let mut pairs = vec![0u32; kp];
                for (j, c) in cols.enumerate() {
                    pairs_of(&b.data[c * b.cs..][..k], &mut pairs);
                    for (out, &v) in panel.chunks_exact_mut(NR).zip(&pairs) {
                        out[j] = v;
                    }
                }
            } else {
                for (p, out) in panel.chunks_exact_mut(NR).enumerate() {
                    for (o, c) in out.iter_mut().zip(cols.clone()) {
                        let hi = if 2 * p + 1 < k {
                            b.at(2 * p + 1, c)
                        } else {
                            0.0
                        };
                        *o = pair(b.at(2 * p, c), hi);
                    }
                }
            }
        };
        if panels > 1 && kp * n >= 1 << 16 {
            data.par_chunks_mut(kp * NR).enumerate().for_each(fill);
        } else {
            data.chunks_mut(kp * NR).enumerate().for_each(fill);
        }
        Self { n, kp, data }
    }
}

/// `dst [m, n] = (acc ? dst : 0) + a · b` (`dst` row-major), in bf16 with f32 sums, on `path`;
/// `threaded` splits the rows between the pool's threads.
///
/// # Panics
///
/// Panics if the shapes do not agree.
pub(super) fn product(
    path: Bf16Path,
    dst: &mut [f32],
    acc: bool,
    a: &PackedA,
    b: &PackedB,
    threaded: bool,
) {
    let (m, n) = (a.m, b.n);
    assert_eq!(a.kp, b.kp, "a's k must be b's");
    assert_eq!(dst.len(), m * n, "dst must be [m, n]");
    if m == 0 || n == 0 {
        return;
    }
    if path == Bf16Path::Reference {
        return reference(dst, acc, a, b, threaded);
    }
    let threads = if threaded {
        rayon::current_num_threads()
    } else {
        1
    };
    if threads > 1 && m * n * a.kp >= 1 << 18 && m > MR {
        let chunk = m.div_ceil(threads).next_multiple_of(MR);
        dst.par_chunks_mut(chunk * n)
            .enumerate()
            .for_each(|(i, d)| blocked(d, acc, a, (i * chunk, 0), b));
    } else {
        blocked(dst, acc, a, (0, 0), b);
    }
}

/// [`product`]'s rows `r0..` of `a` (as many as `dst` holds), from its pair `ka` on (as many as
/// `b` holds), on this thread, blocked over `k` and the rows.
fn blocked(dst: &mut [f32], acc: bool, a: &PackedA, (r0, ka): (usize, usize), b: &PackedB) {
    let kp = b.kp;
    let n = b.n;
    assert!(ka + kp <= a.kp, "b's pairs must be inside a's");
    let rows = dst.len() / n;
    let panels = n.div_ceil(NR);
    for k0 in (0..kp.max(1)).step_by(KC) {
        let kc = KC.min(kp - k0);
        let acc_here = acc || k0 > 0;
        for m0 in (0..rows).step_by(MC) {
            let mc = MC.min(rows - m0);
            for q in 0..panels {
                let panel = &b.data[(q * kp + k0) * NR..][..kc * NR];
                let cols = NR.min(n - q * NR);
                // Tiles of nearly equal height: a short last tile would run its few chains at
                // the latency of `VDPBF16PS`, not its throughput.
                let tiles = mc.div_ceil(MR);
                for t in 0..tiles {
                    let (i0, mr) = (m0 + t * mc / tiles, (t + 1) * mc / tiles - t * mc / tiles);
                    let a_rows = &a.data[(r0 + i0) * a.kp + ka + k0..];
                    let out = &mut dst[i0 * n + q * NR..];
                    let tile = Tile {
                        rows: mr,
                        cols,
                        kc,
                        a: a_rows,
                        a_stride: a.kp,
                        b: panel,
                        dst: out,
                        dst_stride: n,
                        acc: acc_here,
                    };
                    dot_tile(tile);
                }
            }
        }
    }
}

/// One microkernel call: `dst [rows, cols] (+)= a [rows, kc pairs] · panel [kc pairs, NR]`.
struct Tile<'a> {
    rows: usize,
    cols: usize,
    kc: usize,
    /// Row `r`'s pairs from `r·a_stride`.
    a: &'a [u32],
    a_stride: usize,
    /// `kc·NR` pairs.
    b: &'a [u32],
    /// Row `r` from `r·dst_stride`.
    dst: &'a mut [f32],
    dst_stride: usize,
    acc: bool,
}

/// Runs `t` on the `VDPBF16PS` microkernel for its row count.
///
/// # Panics
///
/// Panics if `t`'s slices are too short for its shape, or `t.rows` is not in `1..=MR`.
fn dot_tile(mut t: Tile) {
    assert!((1..=MR).contains(&t.rows) && (1..=NR).contains(&t.cols));
    assert!(
        t.b.len() >= t.kc * NR,
        "the panel holds kc pairs of NR columns"
    );
    assert!(
        t.a.len() >= (t.rows - 1) * t.a_stride + t.kc,
        "a holds rows of kc pairs"
    );
    assert!(
        t.dst.len() >= (t.rows - 1) * t.dst_stride + t.cols,
        "dst holds the tile"
    );
    assert!(bf16_dot(), "VDPBF16PS needs AVX512_BF16");
    #[cfg(target_arch = "x86_64")]
    {
        macro_rules! rows {
            ($($r:literal)*) => {
                match t.rows {
                    // SAFETY: the asserts above bound every read and write the kernel makes
                    // (its SAFETY section), and bf16_dot() says the CPU has AVX512_BF16,
                    // AVX-512F/BW/VL.
                    $($r => unsafe { dot_kernel::<$r>(&mut t) },)*
                    _ => unreachable!(),
                }
            };
        }
        rows!(1 2 3 4 5 6 7 8 9 10 11 12);
    }
}

/// `VDPBF16PS` on a tile of `R` rows: `2·R` registers of f32 sums over the tile's `kc` pairs.
///
/// # Safety
///
/// The CPU must have AVX512_BF16 and AVX-512F/BW/VL. `t.b` must hold `t.kc·NR` values, `t.a`
/// `(R-1)·a_stride + kc`, `t.dst` `(R-1)·dst_stride + cols`, with `cols ≤ NR` and `R ≤ MR`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
unsafe fn dot_kernel<const R: usize>(t: &mut Tile) {
    use std::arch::x86_64::*;
    let zero = _mm512_setzero_ps();
    let mut lo = [zero; R];
    let mut hi = [zero; R];
    let (a, b) = (t.a.as_ptr(), t.b.as_ptr());
    for p in 0..t.kc {
        // SAFETY: p < kc, so the panel's row p (NR values at p·NR) is inside t.b.
        let (b0, b1) = unsafe {
            (
                _mm512_loadu_si512(b.add(p * NR).cast()),
                _mm512_loadu_si512(b.add(p * NR + 16).cast()),
            )
        };
        let as_bh = |v: __m512i| std::mem::transmute::<__m512i, __m512bh>(v);
        let (b0, b1) = (as_bh(b0), as_bh(b1));
        for r in 0..R {
            // SAFETY: r < R and p < kc: inside t.a by the caller's bound.
            let x = _mm512_set1_epi32(unsafe { *a.add(r * t.a_stride + p) } as i32);
            let x = std::mem::transmute::<__m512i, __m512bh>(x);
            lo[r] = _mm512_dpbf16_ps(lo[r], x, b0);
            hi[r] = _mm512_dpbf16_ps(hi[r], x, b1);
        }
    }
    // The columns kept: all 32, or the first `cols` of a last panel.
    let keep = if t.cols == NR {
        u32::MAX
    } else {
        (1u32 << t.cols) - 1
    };
    let (k0, k1) = (keep as u16, (keep >> 16) as u16);
    let dst = t.dst.as_mut_ptr();
    for r in 0..R {
        // SAFETY: row r's columns below `cols` are inside t.dst (the caller's bound); the masks
        // keep the loads and stores to those columns.
        unsafe {
            let d = dst.add(r * t.dst_stride);
            let (mut s0, mut s1) = (lo[r], hi[r]);
            if t.acc {
                s0 = _mm512_add_ps(s0, _mm512_maskz_loadu_ps(k0, d));
                s1 = _mm512_add_ps(s1, _mm512_maskz_loadu_ps(k1, d.add(16)));
            }
            _mm512_mask_storeu_ps(d, k0, s0);
            _mm512_mask_storeu_ps(d.add(16), k1, s1);
        }
    }
}

/// [`product`] in f32 on the packed (rounded) operands, widened: the same terms, summed by the
/// f32 products.
fn reference(dst: &mut [f32], acc: bool, a: &PackedA, b: &PackedB, threaded: bool) {
    let (m, n, kp) = (a.m, b.n, a.kp);
    let k = 2 * kp;
    let mut wa = vec![0.0f32; m * k];
    for (row, pairs) in wa.chunks_exact_mut(k).zip(a.data.chunks_exact(kp.max(1))) {
        for (two, &p) in row.chunks_exact_mut(2).zip(pairs) {
            (two[0], two[1]) = unpair(p);
        }
    }
    let mut wb = vec![0.0f32; k * n];
    for (q, panel) in b.data.chunks_exact((kp * NR).max(1)).enumerate() {
        for (p, lanes) in panel.chunks_exact(NR).enumerate() {
            for (c, &v) in lanes.iter().enumerate().take(n.saturating_sub(q * NR)) {
                let (x0, x1) = unpair(v);
                wb[2 * p * n + q * NR + c] = x0;
                wb[(2 * p + 1) * n + q * NR + c] = x1;
            }
        }
    }
    // SAFETY: wa is [m, k], wb [k, n] and dst [m, n] (asserted by `product`), all row-major and
    // distinct allocations.
    unsafe {
        matmul(
            m,
            n,
            k,
            (dst.as_mut_ptr(), n, 1),
            acc,
            (wa.as_ptr(), k, 1),
            (wb.as_ptr(), n, 1),
            threaded,
        );
    }
}

/// `dst [m, n] = (acc ? dst : 0) + a · b` in bf16 with f32 sums: packs both operands and runs
/// [`product`].
pub(super) fn matmul_bf16(
    path: Bf16Path,
    dst: &mut [f32],
    acc: bool,
    a: Strided,
    b: Strided,
    threaded: bool,
) {
    assert_eq!(a.cols, b.rows, "a's columns must be b's rows");
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(dst.len(), m * n, "dst must be [m, n]");
    let threads = if threaded {
        rayon::current_num_threads()
    } else {
        1
    };
    let pa = PackedA::new(a);
    if path == Bf16Path::Dot && threads > 1 && streams(k, n, threads) {
        return streamed(dst, acc, &pa, b, threads);
    }
    product(path, dst, acc, &pa, &PackedB::new(b), threaded);
}

/// Whether a product with a right-hand `[k, n]` packs it a block at a time ([`streamed`]):
/// when packed whole it would pass 16 MiB (the weight gradients' `[B·T, G·H]`), and it has
/// panels enough for every thread.
fn streams(k: usize, n: usize, threads: usize) -> bool {
    k.div_ceil(2) * n * 4 > 16 << 20 && n.div_ceil(NR) >= 4 * threads
}

/// [`matmul_bf16`] with each thread packing its own panels of `b`, [`KC`] pairs of rows at a
/// time, into a block it reuses, and summing into its own columns of `dst` apart: a large `b`
/// is then read once and never written whole.
fn streamed(dst: &mut [f32], acc: bool, a: &PackedA, b: Strided, threads: usize) {
    let (m, k, n) = (a.m, b.rows, b.cols);
    let per = n.div_ceil(NR).div_ceil(threads) * NR;
    let parts: Vec<(std::ops::Range<usize>, Vec<f32>)> = (0..threads)
        .into_par_iter()
        .map(|t| {
            let cols = (t * per).min(n)..((t + 1) * per).min(n);
            let w = cols.len();
            let mut out = vec![0.0; m * w];
            if acc {
                for (o, d) in out.chunks_exact_mut(w.max(1)).zip(dst.chunks_exact(n)) {
                    o.copy_from_slice(&d[cols.clone()]);
                }
            }
            for k0 in (0..a.kp).step_by(KC) {
                let rows = 2 * k0..(2 * (k0 + KC)).min(k);
                let block = PackedB::new(b.block(rows, cols.clone()));
                blocked(&mut out, acc || k0 > 0, a, (0, k0), &block);
            }
            (cols, out)
        })
        .collect();
    for (cols, out) in parts {
        if cols.is_empty() {
            continue;
        }
        for (d, o) in dst.chunks_exact_mut(n).zip(out.chunks_exact(cols.len())) {
            d[cols.clone()].copy_from_slice(o);
        }
    }
}

/// `x [m, k] · w [k, n]` (any strides) in bf16 with f32 sums, row-major, threaded, on the path
/// this CPU has: the model's dense products under `karnna_model::Matmul::Bf16`.
///
/// # Panics
///
/// Panics if `x`'s columns are not `w`'s rows.
pub fn dense_bf16(x: Strided, w: Strided) -> Vec<f32> {
    let mut out = vec![0.0; x.rows * w.cols];
    matmul_bf16(Bf16Path::detect(), &mut out, false, x, w, true);
    out
}

/// One product's speed alone, for `bench --products`: `[m, k] · [k, n]` in bf16 (where the CPU
/// has `VDPBF16PS`) on random operands, `threaded` or on this thread; the GFLOP/s of the
/// product on packed operands (the median of `reps` after one untimed) and the milliseconds
/// that packing both operands took.
pub fn bf16_product_speed(m: usize, k: usize, n: usize, threaded: bool, reps: usize) -> (f64, f64) {
    let mut state = 0x9e37_79b9_u32;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state as f32 / u32::MAX as f32 - 0.5
    };
    let a: Vec<f32> = (0..m * k).map(|_| next()).collect();
    let b: Vec<f32> = (0..k * n).map(|_| next()).collect();
    let t = std::time::Instant::now();
    let (pa, pb) = (
        PackedA::new(Strided::rows(&a, m, k)),
        PackedB::new(Strided::rows(&b, k, n)),
    );
    let pack_ms = t.elapsed().as_secs_f64() * 1e3;
    let mut dst = vec![0.0; m * n];
    let path = Bf16Path::detect();
    product(path, &mut dst, false, &pa, &pb, threaded);
    let mut times: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            let t = std::time::Instant::now();
            product(path, &mut dst, false, &pa, &pb, threaded);
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    let gflops = 2.0 * (m * k * n) as f64 / times[times.len() / 2] / 1e9;
    (gflops, pack_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{bf16_paths, Lcg};

    #[test]
    fn rounding_is_nearest_even_with_subnormals_to_zero() {
        // Ties go to the even neighbour; above a tie rounds up.
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8001)), 0x3f81);
        // Overflow rounds to infinity; infinities and NaNs stay what they are.
        assert_eq!(bf16_bits(f32::MAX), 0x7f80);
        assert_eq!(bf16_bits(f32::NEG_INFINITY), 0xff80);
        assert!(round_bf16(f32::NAN).is_nan());
        // Subnormals flush to a zero of their sign; the smallest normal stays.
        assert_eq!(bf16_bits(f32::from_bits(0x0000_0001)), 0x0000);
        assert_eq!(bf16_bits(-f32::from_bits(0x007f_ffff)), 0x8000);
        assert_eq!(bf16_bits(f32::MIN_POSITIVE), 0x0080);
        // Normal values agree with `half`'s nearest-even conversion.
        let mut rng = Lcg(9);
        for v in rng.vec(10_000, 1e3) {
            assert_eq!(bf16_bits(v), half::bf16::from_f32(v).to_bits(), "{v}");
        }
    }

    /// The vector conversions of the packing (`VCVTNE2PS2BF16` and `VCVTNEPS2BF16`, where the
    /// CPU has them) round as [`bf16_bits`] does, ties, subnormals, infinities and NaNs included.
    #[test]
    fn packing_rounds_as_the_scalar_conversion_does() {
        let special = [
            f32::from_bits(0x3f80_8000),
            f32::from_bits(0x3f81_8000),
            f32::from_bits(0x0000_0001),
            -f32::from_bits(0x007f_ffff),
            f32::MIN_POSITIVE,
            f32::MAX,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
        ];
        let mut rng = Lcg(31);
        let mut v: Vec<f32> = rng.vec(64 * 64, 10.0);
        for (i, &x) in special.iter().cycle().take(580).enumerate() {
            v[i * 7] = x;
        }
        let scalar = |a: f32, b: f32| bf16_bits(a) as u32 | (bf16_bits(b) as u32) << 16;
        // Rows of 64 pairs (pairs_of), and panels of two rows (zip_pairs).
        let a = PackedA::new(Strided::rows(&v, 64, 64));
        let b = PackedB::new(Strided::rows(&v, 64, 64));
        for r in 0..64 {
            for p in 0..32 {
                let want = scalar(v[r * 64 + 2 * p], v[r * 64 + 2 * p + 1]);
                assert_eq!(a.data[r * 32 + p], want, "a row {r} pair {p}");
            }
        }
        for q in 0..2 {
            for p in 0..32 {
                for c in 0..NR {
                    let col = q * NR + c;
                    let want = scalar(v[2 * p * 64 + col], v[(2 * p + 1) * 64 + col]);
                    assert_eq!(
                        b.data[(q * 32 + p) * NR + c],
                        want,
                        "b panel {q} pair {p} col {c}"
                    );
                }
            }
        }
    }

    /// Every path, against f64 sums of the bf16-rounded operands, within bf16-free rounding of
    /// the f32 sums (`k·2⁻²⁴ Σ|terms|`), and against f64 sums of the unrounded operands within
    /// bf16's bound (`2·2⁻⁸ Σ|terms|`: each operand rounds by at most 2⁻⁹ of itself).
    #[test]
    fn products_match_f64_within_bf16s_bound() {
        let mut rng = Lcg(21);
        // Partial panels and row tiles, odd k, and k over one KC block.
        for (m, k, n, transposed) in [
            (1, 1, 1, false),
            (7, 13, 37, false),
            (13, 300, 64, true),
            (20, 2 * KC + 3, 33, false),
            (MC + 9, 40, 70, true),
        ] {
            let a = rng.vec(m * k, 1.0);
            let b = rng.vec(k * n, 1.0);
            let sb = if transposed {
                Strided::transposed(&b, n, k)
            } else {
                Strided::rows(&b, k, n)
            };
            let dst0 = rng.vec(m * n, 1.0);
            for path in bf16_paths() {
                for acc in [false, true] {
                    for threaded in [false, true] {
                        let mut dst = dst0.clone();
                        matmul_bf16(path, &mut dst, acc, Strided::rows(&a, m, k), sb, threaded);
                        for i in 0..m {
                            for j in 0..n {
                                let (mut exact, mut rounded, mut mag) = (0.0f64, 0.0f64, 0.0f64);
                                for l in 0..k {
                                    let (x, y) = (a[i * k + l], sb.at(l, j));
                                    exact += x as f64 * y as f64;
                                    rounded += round_bf16(x) as f64 * round_bf16(y) as f64;
                                    mag += (x as f64 * y as f64).abs();
                                }
                                let add = if acc { dst0[i * n + j] as f64 } else { 0.0 };
                                let got = dst[i * n + j] as f64;
                                let name = format!("{path:?} {m}x{k}x{n} acc={acc} [{i},{j}]");
                                let f32_tol = (k as f64 + 2.0) * 6e-8 * (mag + add.abs()) + 1e-30;
                                assert!((got - rounded - add).abs() <= f32_tol, "{name}");
                                let bf16_tol = 2.0 * 2f64.powi(-8) * mag + f32_tol;
                                assert!((got - exact - add).abs() <= bf16_tol, "{name}");
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod streaming {
    use super::*;
    use crate::test_support::Lcg;

    /// A right-hand side packed a block at a time by each thread gives the bits of one packed
    /// whole: the same sums in the same order (blocks of `KC` pairs either way).
    #[test]
    fn streamed_equals_packed_whole() {
        if !bf16_dot() {
            return;
        }
        let mut rng = Lcg(17);
        for (m, k, n, transposed) in [
            (13, 4 * KC + 5, 5 * NR + 7, false),
            (30, 3 * KC, 9 * NR, true),
        ] {
            let (a, b) = (rng.vec(m * k, 1.0), rng.vec(k * n, 1.0));
            let sb = if transposed {
                Strided::transposed(&b, n, k)
            } else {
                Strided::rows(&b, k, n)
            };
            let pa = PackedA::new(Strided::rows(&a, m, k));
            let dst0 = rng.vec(m * n, 1.0);
            for acc in [false, true] {
                let (mut whole, mut blocks) = (dst0.clone(), dst0.clone());
                product(
                    Bf16Path::Dot,
                    &mut whole,
                    acc,
                    &pa,
                    &PackedB::new(sb),
                    false,
                );
                for threads in [2, 3] {
                    streamed(&mut blocks, acc, &pa, sb, threads);
                    let same = whole
                        .iter()
                        .zip(&blocks)
                        .all(|(x, y)| x.to_bits() == y.to_bits());
                    assert!(same, "{m}x{k}x{n} acc={acc} threads={threads}");
                    blocks.copy_from_slice(&dst0);
                }
            }
        }
    }
}
