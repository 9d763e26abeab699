//! The Python extension `e5x._native`: the only module that knows pyo3. Classes and
//! functions here convert arguments (Arrow columns through pyo3-arrow), release the GIL
//! around the work, which lives in plain-Rust modules, and turn their errors into
//! Python exceptions.

use std::sync::{Arc, Mutex, MutexGuard};

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, SchemaRef};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3_arrow::{PyChunkedArray, PyTable};

use crate::arrow_io::{self, Error, ErrorKind, StrCol};
use crate::dedup::Dedup;
use crate::quality;
use crate::render::Template;
use crate::validate::Reason;
use crate::validate_batch::{self, Batch, Gate, GateColumns, Options, TaskTypes, TypeSpec};

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        let msg = e.to_string();
        match e.kind() {
            ErrorKind::Type => PyTypeError::new_err(msg),
            ErrorKind::Value => PyValueError::new_err(msg),
            ErrorKind::Runtime => PyRuntimeError::new_err(msg),
        }
    }
}

/// The Arrow chunks of a column.
fn chunks(col: PyChunkedArray) -> Vec<ArrayRef> {
    col.into_inner().0
}

fn table(batches: Vec<RecordBatch>, schema: SchemaRef) -> PyResult<PyTable> {
    PyTable::try_new(batches, schema)
}

fn chunked(chunks: Vec<ArrayRef>, name: &str, dt: DataType) -> PyResult<PyChunkedArray> {
    let field = Arc::new(Field::new(name, dt, true));
    PyChunkedArray::try_new(chunks, field)
}

// ---------------------------------------------------------------- validation

/// Task-type schemas compiled once; validate many batches with them.
#[pyclass(module = "e5x._native", frozen)]
struct Validator {
    inner: validate_batch::Validator,
}

#[pymethods]
impl Validator {
    /// `schemas`: list of (task type, JSON Schema as JSON text).
    #[new]
    fn new(schemas: Vec<(String, String)>) -> PyResult<Self> {
        let inner = validate_batch::Validator::new(&schemas).map_err(PyValueError::new_err)?;
        Ok(Validator { inner })
    }

    #[getter]
    fn task_types(&self) -> Vec<String> {
        self.inner.task_types().to_vec()
    }

    /// The string fields `validate(..., unpack=True)` adds as columns.
    #[getter]
    fn unpack_columns(&self) -> Vec<String> {
        self.inner.unpack_columns().to_vec()
    }

    /// Validate `texts` (strings or binary); `task_types` is one name or a column.
    /// With `dedup`, accepted rows are also deduplicated on `dedup_fields` in the
    /// same pass (every input row counts as seen by the deduplicator). With `gate`,
    /// accepted rows also pass the quality gate, given per row the task definition
    /// (`gate_tasks`), the requested language(s) (`gate_languages`) and per field the
    /// words the request asked for (`gate_min_words`: (field, Int64 column)).
    #[pyo3(signature = (texts, task_types, extract=false, unpack=false, json=true, dedup=None, dedup_fields=None, gate=None, gate_tasks=None, gate_languages=None, gate_min_words=None))]
    #[allow(clippy::too_many_arguments)]
    fn validate(
        &self,
        py: Python<'_>,
        texts: PyChunkedArray,
        task_types: &Bound<'_, PyAny>,
        extract: bool,
        unpack: bool,
        json: bool,
        dedup: Option<Bound<'_, Deduplicator>>,
        dedup_fields: Option<Vec<String>>,
        gate: Option<Bound<'_, QualityGate>>,
        gate_tasks: Option<PyChunkedArray>,
        gate_languages: Option<PyChunkedArray>,
        gate_min_words: Option<Vec<(String, PyChunkedArray)>>,
    ) -> PyResult<PyTable> {
        let texts = StrCol::new("texts", chunks(texts), true)?;
        let gate_cols = GateColumns::new(
            gate_tasks.map(chunks),
            gate_languages.map(chunks),
            gate_min_words
                .unwrap_or_default()
                .into_iter()
                .map(|(f, c)| (f, chunks(c)))
                .collect(),
            texts.len(),
        )?;
        let tasks = match task_types.extract::<String>() {
            Ok(s) => TaskTypes::One(s),
            Err(_) => TaskTypes::column(chunks(task_types.extract()?), texts.len())?,
        };
        let dedup = dedup.as_ref().map(|d| d.get());
        let opts = Options {
            extract,
            unpack,
            json,
            dedup: dedup.map(|d| d.casefold),
            dedup_fields,
        };
        let gate = gate.as_ref().map(|g| &g.get().inner);
        let batch = Batch::new(&self.inner, texts, tasks, opts, gate, gate_cols)?;
        // The deduplicator's lock is taken without the GIL, as in Deduplicator.add.
        let (schema, batches) = py.detach(|| -> PyResult<_> {
            let out = batch.run();
            let mut inner = dedup.map(Deduplicator::lock).transpose()?;
            Ok(out.into_batches(inner.as_deref_mut())?)
        })?;
        table(batches, schema)
    }
}

// ---------------------------------------------------------------- dedup

/// Keep-first exact dedup whose state persists across batches. Safe to share between
/// threads: calls take turns on a mutex, waiting without the GIL.
#[pyclass(module = "e5x._native", frozen)]
struct Deduplicator {
    casefold: bool,
    inner: Mutex<Dedup>,
}

impl Deduplicator {
    fn lock(&self) -> PyResult<MutexGuard<'_, Dedup>> {
        self.inner.lock().map_err(|_| {
            PyRuntimeError::new_err(
                "this Deduplicator is unusable: an internal error interrupted an earlier add",
            )
        })
    }
}

#[pymethods]
impl Deduplicator {
    #[new]
    #[pyo3(signature = (casefold=false))]
    fn new(casefold: bool) -> Self {
        Deduplicator {
            casefold,
            inner: Mutex::new(Dedup::new(casefold)),
        }
    }

    #[getter]
    fn casefold(&self) -> bool {
        self.casefold
    }

    /// Rows added so far (all batches).
    #[getter]
    fn seen(&self, py: Python<'_>) -> PyResult<u64> {
        py.detach(|| Ok(self.lock()?.seen))
    }

    /// Distinct keys kept so far.
    #[getter]
    fn unique(&self, py: Python<'_>) -> PyResult<usize> {
        py.detach(|| Ok(self.lock()?.unique()))
    }

    /// Add a batch given as string columns (all the same length). Returns an Int64
    /// column: the global index of the first occurrence for dropped rows, else null.
    fn add(
        &self,
        py: Python<'_>,
        names: Vec<String>,
        columns: Vec<PyChunkedArray>,
    ) -> PyResult<PyChunkedArray> {
        let cols = arrow_io::dedup_columns(&names, columns.into_iter().map(chunks).collect())?;
        // The lock is taken without the GIL, so a thread waiting for it never blocks
        // the one holding it.
        let dup = py.detach(|| -> PyResult<_> {
            let mut inner = self.lock()?;
            Ok(arrow_io::dedup_insert(&mut inner, &cols)?)
        })?;
        chunked(
            vec![arrow_io::index_array(dup)],
            "duplicate_of",
            DataType::Int64,
        )
    }
}

// ---------------------------------------------------------------- quality gate

/// Checks and per-task-type plans of the quality gate (crate::quality).
#[pyclass(module = "e5x._native", frozen)]
struct QualityGate {
    inner: Gate,
}

#[pymethods]
impl QualityGate {
    /// `checks`: (name, threshold; NaN = default) of the checks to run. `types`: per
    /// task type (name, prompt template, [(field, language part or -1)]).
    /// `language_codes`: (language name as requests give it, ISO 639-1 code), which
    /// lets wrong_language read function words before asking whatlang.
    #[new]
    #[pyo3(signature = (checks, types, language_codes=Vec::new()))]
    fn new(
        checks: Vec<(String, f64)>,
        types: Vec<TypeSpec>,
        language_codes: Vec<(String, String)>,
    ) -> PyResult<Self> {
        let inner = Gate::new(&checks, types, language_codes).map_err(PyValueError::new_err)?;
        Ok(QualityGate { inner })
    }

    /// The checks that run, with their thresholds.
    #[getter]
    fn checks(&self) -> Vec<(&'static str, f64)> {
        self.inner.checks()
    }
}

/// Why each task definition is not one (None = it is), see quality::task_problem.
#[pyfunction]
#[pyo3(signature = (tasks, min_words=4))]
fn task_problems(tasks: Vec<String>, min_words: usize) -> Vec<Option<String>> {
    tasks
        .iter()
        .map(|t| quality::task_problem(t, min_words))
        .collect()
}

// ---------------------------------------------------------------- sampling + render

/// Draw `n` rows of placeholder values. `values[k]` and `weights[k]` belong to
/// `names[k]`. Returns a table with one Utf8View column per placeholder.
#[pyfunction]
fn sample_placeholders(
    py: Python<'_>,
    names: Vec<String>,
    values: Vec<Vec<String>>,
    weights: Vec<Vec<f64>>,
    n: usize,
    seed: u64,
) -> PyResult<PyTable> {
    let batch = py.detach(|| arrow_io::sample_placeholders(&names, &values, &weights, n, seed))?;
    table(vec![batch.clone()], batch.schema())
}

/// Placeholder names of a template, in order of first appearance.
#[pyfunction]
fn template_names(template: &str) -> PyResult<Vec<String>> {
    Ok(Template::parse(template)
        .map_err(PyValueError::new_err)?
        .names)
}

/// Render `template` for every row; `columns[k]` holds the values of `names[k]`.
#[pyfunction]
fn render(
    py: Python<'_>,
    template: &str,
    names: Vec<String>,
    columns: Vec<PyChunkedArray>,
    n: usize,
) -> PyResult<PyChunkedArray> {
    let columns: Vec<Vec<ArrayRef>> = columns.into_iter().map(chunks).collect();
    let arr = py.detach(|| arrow_io::render(template, &names, columns, n))?;
    chunked(vec![arr], "rendered", DataType::Utf8View)
}

/// Reason codes `validate` can emit.
#[pyfunction]
fn reason_codes() -> Vec<&'static str> {
    Reason::ALL.iter().map(|r| r.code()).collect()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("MAX_DEPTH", crate::validate::MAX_DEPTH)?;
    m.add("MAX_TEXT_BYTES", crate::validate::MAX_TEXT_BYTES)?;
    m.add_class::<Validator>()?;
    m.add_class::<Deduplicator>()?;
    m.add_class::<QualityGate>()?;
    m.add_function(wrap_pyfunction!(task_problems, m)?)?;
    m.add_function(wrap_pyfunction!(sample_placeholders, m)?)?;
    m.add_function(wrap_pyfunction!(render, m)?)?;
    m.add_function(wrap_pyfunction!(template_names, m)?)?;
    m.add_function(wrap_pyfunction!(reason_codes, m)?)?;
    Ok(())
}
