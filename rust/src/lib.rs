//! e5x data core. The logic lives in plain-Rust modules with their own unit tests:
//! validate (one row), validate_batch (whole Arrow batches, with dedup and the quality
//! gate fused in), arrow_io (Arrow columns in and out), dedup, quality (with text_scan,
//! its SIMD byte scans), render, sample.
//! py.rs is the only module that knows pyo3 (behind the `python` feature, which maturin
//! enables), so `cargo test` never needs libpython.

pub mod arrow_io;
pub mod dedup;
pub mod quality;
pub mod render;
pub mod sample;
mod text_scan;
pub mod validate;
pub mod validate_batch;

#[cfg(feature = "python")]
mod py;
