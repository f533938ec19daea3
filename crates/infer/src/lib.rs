//! Sampling new text from a trained karnna model, one character at a time.
//!
//! It owns the top-n / temperature choice ([`pick`], a pure function with an injected RNG), the
//! models that can be stepped one character at a time ([`CharStepper`]: the Burn model on any
//! backend, [`BurnStepper`], and the dedicated CPU path, [`CpuCharRnn`], whose weights are read out
//! of the Burn module into plain arrays), and the priming-and-drawing loop that streams text to a
//! writer ([`generate`]), or several samples drawn side by side in one batch ([`generate_many`]).
//!
//! It depends on `karnna-model` and `karnna-data` only and must never depend on burn-train:
//! sampling is what users run most, and it should stay light.

mod cpu;
pub mod eval;
mod generate;
mod sampler;
mod stepper;

pub use cpu::{default_parts, CpuCharRnn, CpuWeights, Precision};
pub use eval::{encode_known, evaluate, Encoded, EvalReport};
pub use generate::{
    default_prime, generate, generate_many, BurnStepper, SampleError, SampleOptions,
};
pub use sampler::{
    check_temperature, check_top_n, pick, Strategy, DEFAULT_LEN, DEFAULT_TEMPERATURE, DEFAULT_TOP_N,
};
pub use stepper::CharStepper;
