//! What the sampling loop steps: a model that reads one character at a time ([`CharStepper`]),
//! implemented by the Burn model ([`crate::BurnStepper`]) and the CPU path
//! ([`crate::CpuCharRnn`]).

/// A model that reads one character at a time and returns its logits for the next one,
/// carrying its recurrent state between calls.
pub trait CharStepper {
    /// Back to the zero state.
    fn reset(&mut self);
    /// Feeds character `id`; returns the logits of the next character (`[vocab]`).
    fn step(&mut self, id: u32) -> &[f32];
    /// Vocabulary size.
    fn vocab_size(&self) -> usize;
}
