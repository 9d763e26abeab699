//! e5x data core. The logic lives in plain-Rust modules with their own unit tests;
//! this file is the only one that knows pyo3 (behind the `python` feature, which
//! maturin enables), so `cargo test` never needs libpython.

#[cfg(feature = "python")]
mod python {
    use pyo3::prelude::*;

    #[pymodule]
    fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        Ok(())
    }
}
