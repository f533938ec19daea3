//! The recurrent cell kinds ([`Cell`]): a leaf of the crate, which the kernels, the model and its
//! fused ops all name, so that it must not import any of them.

use serde::{Deserialize, Serialize};

/// The recurrent cell of every layer.
///
/// The GRU and the plain RNN follow PyTorch's `nn.GRU` and `nn.RNN` (tanh): the same equations
/// and parameter layout, so the PyTorch peer runs the same model.
///
/// With the `clap` feature it is also a `clap::ValueEnum`, so a command line parses straight
/// into it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Cell {
    /// Long short-term memory: gates i, f, g, o; state `h` and `c` (the notebook's cell).
    #[default]
    #[cfg_attr(
        feature = "clap",
        value(help = "Long short-term memory (the notebook's)")
    )]
    Lstm,
    /// Gated recurrent unit: gates r, z, n, with `b_hn` inside the reset product; state `h`.
    #[cfg_attr(
        feature = "clap",
        value(help = "Gated recurrent unit (PyTorch's nn.GRU)")
    )]
    Gru,
    /// Plain (Elman) RNN, `h_t = tanh(x·W_ih + b_ih + h_{t-1}·W_hh + b_hh)`; state `h`.
    #[cfg_attr(feature = "clap", value(help = "Plain tanh RNN (PyTorch's nn.RNN)"))]
    Rnn,
}

impl Cell {
    /// Every cell, in the order of the names.
    pub const ALL: [Cell; 3] = [Cell::Lstm, Cell::Gru, Cell::Rnn];

    /// The name used in config files, on the command line and in checkpoints.
    pub fn name(self) -> &'static str {
        match self {
            Cell::Lstm => "lstm",
            Cell::Gru => "gru",
            Cell::Rnn => "rnn",
        }
    }

    /// Gate blocks side by side in the weights: `W_ih` is `[input, gates·H]`, `W_hh` is
    /// `[H, gates·H]`.
    pub fn gates(self) -> usize {
        match self {
            Cell::Lstm => 4,
            Cell::Gru => 3,
            Cell::Rnn => 1,
        }
    }

    /// The cell with `gates` gate blocks, if any has that many.
    pub fn from_gates(gates: usize) -> Option<Cell> {
        Cell::ALL.into_iter().find(|c| c.gates() == gates)
    }
}

impl std::fmt::Display for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Cell {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Cell::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| format!("unknown cell `{s}` (expected lstm, gru or rnn)"))
    }
}
