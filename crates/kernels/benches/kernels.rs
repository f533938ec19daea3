//! The kernels alone, against this CPU's peak: one recurrent layer's forward and backward over a
//! whole sequence, for each cell, in f32 and in bf16 (f32 sums), with no Burn and no model
//! around them. Prints milliseconds, GFLOP/s of the recurrent products and their share of the
//! measured FMA (or `VDPBF16PS`) peak.
//!
//! `cargo bench -p karnna-kernels` runs the notebook's layer (100 steps, 100 rows, 512 units);
//! `cargo bench -p karnna-kernels -- T B H` another. What `karnna bench` adds on top (the input
//! projections, the output layer, Adam, Burn's own work) is measured there.

use std::time::Instant;

use karnna_kernels::{
    backward, forward, measure_peak, simd_name, Backward, Bf16Path, Cell, Dims, Forward,
};

/// Timed repetitions; the median counts.
const REPS: usize = 7;

fn main() {
    // As the `karnna` binary does: this thread is worker 0 of the pool the kernels use.
    let _ = rayon::ThreadPoolBuilder::new()
        .use_current_thread()
        .build_global();
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .map(|a| {
            a.parse()
                .unwrap_or_else(|_| panic!("`{a}`: expected T B H as numbers"))
        })
        .collect();
    let d = match sizes[..] {
        [t, b, h] => Dims { t, b, h },
        [] => Dims {
            t: 100,
            b: 100,
            h: 512,
        },
        _ => panic!("expected no sizes or three: T B H"),
    };
    let peak = measure_peak(0.5);
    println!(
        "cpu kernels: {} on {} threads; peak f32 {:.0} GFLOP/s{}",
        simd_name(),
        peak.threads,
        peak.f32_gflops,
        peak.bf16_gflops
            .map(|g| format!(", bf16 {g:.0} GFLOP/s"))
            .unwrap_or_default()
    );
    println!("layer: T={} B={} H={}", d.t, d.b, d.h);
    println!(
        "{:<5} {:<5} {:>9} {:>9} {:>10} {:>8}",
        "cell", "prec", "fwd ms", "bwd ms", "GFLOP/s", "of peak"
    );
    for cell in Cell::ALL {
        for bf16 in [None, Some(Bf16Path::detect())] {
            let (fwd, bwd) = time_layer(cell, d, bf16);
            // Recurrent products: T·(B×H · H×G·H) forward; twice that backward (dh and dW_hh).
            let flop = 2.0 * (d.t * d.b * d.h * cell.gates() * d.h) as f64;
            let gflops = 3.0 * flop / (fwd + bwd) / 1e9;
            let peak_of = match bf16 {
                Some(Bf16Path::Dot) => peak.bf16_gflops.unwrap_or(peak.f32_gflops),
                _ => peak.f32_gflops,
            };
            println!(
                "{:<5} {:<5} {:>9.2} {:>9.2} {:>10.1} {:>7.0}%",
                cell.name(),
                if bf16.is_some() { "bf16" } else { "f32" },
                fwd * 1e3,
                bwd * 1e3,
                gflops,
                100.0 * gflops / peak_of
            );
        }
    }
}

/// The median seconds of one forward and one backward pass of `cell` over `d`.
fn time_layer(cell: Cell, d: Dims, bf16: Option<Bf16Path>) -> (f64, f64) {
    let g = cell.gates() * d.h;
    let (bh, tbh, tbg) = (d.b * d.h, d.t * d.b * d.h, d.t * d.b * g);
    let lstm = cell == Cell::Lstm;
    let bias = if lstm { 0 } else { g };
    let fill = |n: usize, seed: u32| -> Vec<f32> {
        (0..n)
            .map(|i| {
                ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32
                    / (1u32 << 24) as f32
                    - 0.5
            })
            .collect()
    };
    let w_hh: Vec<f32> = fill(d.h * g, 1).iter().map(|w| w * 0.1).collect();
    let b_hh = fill(bias, 2);
    let h0 = fill(bh, 3);
    let c0 = if lstm { fill(bh, 4) } else { Vec::new() };
    let xp = fill(tbg, 5);
    let dhs = fill(tbh, 6);
    let mut hs = vec![0.0; tbh];
    let mut aux = vec![0.0; if cell == Cell::Rnn { 0 } else { tbh }];
    let (mut gz, mut dw_hh, mut db_hh) = (xp.clone(), vec![0.0; d.h * g], vec![0.0; bias]);
    let (mut dh0, mut dc0) = (vec![0.0; bh], vec![0.0; c0.len()]);
    let (mut fwd, mut bwd) = (Vec::new(), Vec::new());
    for _ in 0..REPS + 1 {
        gz.copy_from_slice(&xp);
        let t = Instant::now();
        forward(
            cell,
            d,
            Forward {
                xz: &mut gz,
                w_hh: &w_hh,
                b_hh: &b_hh,
                h0: &h0,
                c0: &c0,
                hs: &mut hs,
                aux: &mut aux,
                bf16,
            },
        );
        fwd.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        backward(
            cell,
            d,
            Backward {
                w_hh: &w_hh,
                h0: &h0,
                c0: &c0,
                hs: &hs,
                aux: &aux,
                gz: &mut gz,
                dhs: &dhs,
                dw_hh: &mut dw_hh,
                db_hh: &mut db_hh,
                dh0: &mut dh0,
                dc0: &mut dc0,
                bf16,
            },
        );
        bwd.push(t.elapsed().as_secs_f64());
    }
    assert!(
        dw_hh.iter().all(|v| v.is_finite()),
        "{cell}: a gradient is not finite"
    );
    // The first pass warms the caches and the pool, and is left out.
    (median(&mut fwd[1..]), median(&mut bwd[1..]))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
