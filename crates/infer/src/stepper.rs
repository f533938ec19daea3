//! What the sampling loops step: a model that reads one character at a time for each of one or
//! more rows ([`CharStepper`]), implemented by the Burn model on any backend
//! ([`crate::BurnStepper`]) and the CPU path ([`crate::CpuCharRnn`]).

/// A model that reads one character at a time for each of its rows (independent samples side
/// by side, each with its own recurrent state) and returns the logits of each row's next
/// character.
pub trait CharStepper {
    /// Sets every row back to the zero state.
    fn reset(&mut self);
    /// Feeds character `id` to every row; returns the first row's logits (`[vocab]`).
    fn step(&mut self, id: u32) -> &[f32] {
        let vocab = self.vocab_size();
        // One row, the usual case, needs no buffer for its ids.
        let logits = match self.rows() {
            1 => self.step_rows(&[id]),
            rows => self.step_rows(&vec![id; rows]),
        };
        &logits[..vocab]
    }
    /// Vocabulary size.
    fn vocab_size(&self) -> usize;
    /// How many rows each step feeds.
    fn rows(&self) -> usize;
    /// Makes the model step `rows` rows from now on, all starting from the zero state (the
    /// weights are kept).
    ///
    /// # Panics
    /// If `rows` is 0.
    fn set_rows(&mut self, rows: usize);
    /// Feeds character `ids[r]` to row `r` of every row at once (each row carries its own
    /// state, untouched by the others) and returns the logits of each row's next character,
    /// `[rows, vocab]` row-major. Each row's logits are a batch-1 [`CharStepper::step`]'s on
    /// the same characters, within rounding.
    ///
    /// # Panics
    /// If `ids` does not hold one id per row, or an id is outside the vocabulary.
    fn step_rows(&mut self, ids: &[u32]) -> &[f32];
}
