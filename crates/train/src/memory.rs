//! How much memory a run needs, estimated before anything is allocated, so a model too big for
//! the machine is refused with a message instead of being killed by the OOM killer (which can
//! take other processes down with it).
//!
//! The estimate counts what a training step keeps alive at its peak, in `f32`:
//! - the weights, their gradients and Adam's two moments, plus as much again for the
//!   temporaries of Adam's update: 6 values a parameter;
//! - one batch's activations (N = batch_size x num_steps positions), per recurrent layer: the gates
//!   `[N, G·H]` the fused op keeps for its backward (and turns into `dL/dxp` in place; `G` gate
//!   blocks: the LSTM's 4, the GRU's 3, the RNN's 1), `h` and the cell's second array (the
//!   LSTM's `c`, the GRU's `hp_n`) of every step (2H), the dropout mask and output (2H), and the
//!   gradients flowing back through `h` and into the layer's input (2H): (2G + 2)·N·H, 10·N·H
//!   for the LSTM;
//! - the output layer: logits, their softmax and their gradient, and the loss's own copy:
//!   4·N·V;
//! - a fixed base for the program itself (its code, thread stacks, Burn's runtime);
//! - the resident part of the text, which is memory-mapped, not loaded: a window read through
//!   the map gives its pages back at once ([`karnna_data::Ids::read`]), so at most the one or
//!   two 2 MiB folios of the window being read. It does not grow with the text.
//!
//! Measured against the peak resident memory `karnna bench` reports (the same step: forward,
//! backward, global clip, Adam), the estimate is within the factor stated in docs/GUIDE.md ("Training").

use karnna_model::CharRnnConfig;

/// What a program of ours holds before its model: code, stacks, allocator and runtime pools.
pub const BASE_BYTES: u64 = 48 << 20;

/// A run's memory estimate, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// The weights.
    pub weights: u64,
    /// Gradients, Adam's moments and the update's temporaries.
    pub optimizer: u64,
    /// One batch's activations and their gradients.
    pub activations: u64,
    /// The resident part of the mapped text (0 until [`MemoryEstimate::with_text`]).
    pub text: u64,
}

/// The most of a mapped text that is resident at once: a window's two large folios.
const TEXT_RESIDENT: u64 = 4 << 20;

impl MemoryEstimate {
    /// The estimate for training `model` on batches of `batch_size` x `num_steps`.
    pub fn of(model: &CharRnnConfig, batch_size: usize, num_steps: usize) -> Self {
        let f32s = |n: u128| u64::try_from(n * 4).unwrap_or(u64::MAX);
        let p = model.num_params() as u128;
        let n = batch_size as u128 * num_steps as u128;
        let g = model.cell().gates() as u128;
        let (h, v, l) = (
            model.shape.lstm_size as u128,
            model.vocab_size as u128,
            model.shape.num_layers as u128,
        );
        Self {
            weights: f32s(p),
            optimizer: f32s(5 * p),
            // Per unit, step and row: the gates, the states and their gradients (10 floats for
            // the LSTM's four gates, fewer for the GRU's three and the RNN's one).
            activations: f32s((2 * g + 2) * n * h * l + 4 * n * v),
            text: 0,
        }
    }

    /// With the resident part of a mapped text, and the two batches of ids (training and
    /// validation) read from it, `width` bytes an id, in batches of `batch_size` x `num_steps`.
    pub fn with_text(self, width: usize, batch_size: usize, num_steps: usize) -> Self {
        let batch = (2 * batch_size * (num_steps + 1) * width.max(4)) as u64;
        Self {
            text: TEXT_RESIDENT + 2 * batch,
            ..self
        }
    }

    /// Everything, with the program's base.
    pub fn total(&self) -> u64 {
        BASE_BYTES
            .saturating_add(self.weights)
            .saturating_add(self.optimizer)
            .saturating_add(self.activations)
            .saturating_add(self.text)
    }

    /// One line: the total and its parts.
    pub fn describe(&self) -> String {
        let text = match self.text {
            0 => String::new(),
            t => format!(
                ", the text {}: it is mapped from disk, not loaded",
                bytes(t)
            ),
        };
        format!(
            "about {} (weights {}, gradients and Adam {}, one batch's activations {}{text})",
            bytes(self.total()),
            bytes(self.weights),
            bytes(self.optimizer),
            bytes(self.activations)
        )
    }
}

/// Memory this process can still take on this machine: Linux's `MemAvailable` (free memory
/// plus what the kernel can reclaim), or `None` where it is not known.
pub fn available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A byte count in the largest binary unit that keeps it at 1 or more: `548 MiB`, `1.2 TiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value >= 100.0 || unit == 0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notebook_model_estimate_adds_up() {
        // 2 x 512, 83 characters, batches 100 x 100: 3,366,483 parameters.
        let m = MemoryEstimate::of(&CharRnnConfig::new(83), 100, 100);
        assert_eq!(m.weights, 3_366_483 * 4);
        assert_eq!(m.optimizer, 5 * 3_366_483 * 4);
        assert_eq!(m.activations, (10 * 10_000 * 512 * 2 + 4 * 10_000 * 83) * 4);
        assert!(
            m.total() > 450 << 20 && m.total() < 600 << 20,
            "{}",
            m.describe()
        );
    }

    #[test]
    fn huge_models_are_counted_in_tebibytes() {
        let m = CharRnnConfig::new(83).with_lstm_size(200_000);
        let e = MemoryEstimate::of(&m, 100, 100);
        assert!(e.total() > 1 << 40, "{}", e.describe()); // over a TiB
        assert!(e.describe().contains("TiB"));
    }

    #[test]
    fn byte_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(548 << 20), "548 MiB");
        assert_eq!(bytes(3 << 29), "1.5 GiB");
    }
}
