//! e5x data core. The logic lives in plain-Rust modules with their own unit tests;
//! this file is the only one that knows pyo3 (behind the `python` feature, which
//! maturin enables), so `cargo test` never needs libpython.

pub mod dedup;
pub mod quality;
pub mod render;
pub mod sample;
pub mod validate;

#[cfg(feature = "python")]
mod python {
    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex, MutexGuard};

    use arrow_array::builder::BooleanBuilder;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int64Type, StringViewType};
    use arrow_array::{
        Array, ArrayRef, GenericByteViewArray, GenericStringArray, Int64Array, OffsetSizeTrait,
        RecordBatch, StringViewArray,
    };
    use arrow_buffer::{Buffer, NullBuffer, ScalarBuffer};
    use arrow_schema::{DataType, Field, Schema as ArrowSchema};
    use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
    use pyo3::prelude::*;
    use pyo3_arrow::{PyChunkedArray, PyTable};
    use rayon::prelude::*;

    use crate::dedup::{row_hash, Dedup};
    use crate::quality::{
        self, FieldPlan, GateScratch, Languages, QualityConfig, RowCtx, TypePlan,
    };
    use crate::render::{RenderError, Template};
    use crate::sample::{self, Alias};
    use crate::validate::{utf8, validate_row, Reason, Rejection, SchemaSet, Scratch, Sink};

    // ---------------------------------------------------------------- input columns

    /// A string/binary column made of Arrow chunks, read by global row index.
    struct StrCol {
        chunks: Vec<ArrayRef>,
        starts: Vec<usize>,
        len: usize,
        name: String,
    }

    impl StrCol {
        fn new(name: &str, chunks: Vec<ArrayRef>, allow_binary: bool) -> PyResult<StrCol> {
            let mut starts = Vec::with_capacity(chunks.len());
            let mut len = 0;
            for c in &chunks {
                match c.data_type() {
                    DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => {}
                    DataType::Binary | DataType::LargeBinary | DataType::BinaryView
                        if allow_binary => {}
                    other => {
                        return Err(PyTypeError::new_err(format!(
                            "column '{name}' must hold strings, got Arrow type {other}"
                        )))
                    }
                }
                starts.push(len);
                len += c.len();
            }
            Ok(StrCol {
                chunks,
                starts,
                len,
                name: name.to_string(),
            })
        }

        fn from_py(name: &str, col: PyChunkedArray, allow_binary: bool) -> PyResult<StrCol> {
            let (chunks, _) = col.into_inner();
            StrCol::new(name, chunks, allow_binary)
        }

        /// A row's bytes (None for nulls). String columns are read as bytes too: an Arrow
        /// array from outside may hold any bytes, so nothing here assumes UTF-8.
        #[inline]
        fn bytes(&self, row: usize) -> Option<&[u8]> {
            let k = self.starts.partition_point(|&s| s <= row) - 1;
            let (c, i) = (&self.chunks[k], row - self.starts[k]);
            if c.is_null(i) {
                return None;
            }
            Some(match c.data_type() {
                DataType::Utf8View => view_bytes(c.as_string_view(), i),
                DataType::Utf8 => offset_bytes(c.as_string::<i32>(), i),
                DataType::LargeUtf8 => offset_bytes(c.as_string::<i64>(), i),
                DataType::BinaryView => c.as_binary_view().value(i),
                DataType::Binary => c.as_binary::<i32>().value(i),
                DataType::LargeBinary => c.as_binary::<i64>().value(i),
                _ => return None, // Null type
            })
        }

        /// A row's text (None for nulls), or the offset of its first byte that is not UTF-8.
        #[inline]
        fn str(&self, row: usize) -> Result<Option<&str>, usize> {
            self.bytes(row).map(utf8).transpose()
        }

        /// The ValueError for a row of this column that is not UTF-8 from byte `at` on.
        fn utf8_error(&self, row: usize, at: usize) -> PyErr {
            PyValueError::new_err(format!(
                "column '{}' row {row}: invalid UTF-8 at byte {at}",
                self.name
            ))
        }
    }

    /// Value `i` of a string array as bytes, without the `&str` Arrow would make of them.
    #[inline]
    fn offset_bytes<O: OffsetSizeTrait>(a: &GenericStringArray<O>, i: usize) -> &[u8] {
        let o = a.value_offsets();
        &a.value_data()[o[i].as_usize()..o[i + 1].as_usize()]
    }

    /// Value `i` of a string view array as bytes (Utf8View layout: up to 12 bytes inline
    /// after the 4-byte length, else length, prefix, buffer index, offset).
    #[inline]
    fn view_bytes(a: &StringViewArray, i: usize) -> &[u8] {
        let v = a.views()[i];
        let len = v as u32 as usize;
        if len <= 12 {
            &a.views().inner()[i * 16 + 4..i * 16 + 4 + len]
        } else {
            let (buf, off) = ((v >> 64) as u32 as usize, (v >> 96) as u32 as usize);
            &a.data_buffers()[buf][off..off + len]
        }
    }

    // ---------------------------------------------------------------- output columns

    /// An empty byte buffer with `cap` bytes of capacity. Big ones ask Linux for
    /// transparent huge pages (THP "madvise" mode is the common default): writing
    /// gigabytes of fresh output otherwise costs one page fault per 4 KiB, which
    /// took ~30% of validation time and serialised threads on the mm lock.
    fn alloc_bytes(cap: usize) -> Vec<u8> {
        let v: Vec<u8> = Vec::with_capacity(cap);
        #[cfg(target_os = "linux")]
        if cap >= 4 << 20 {
            const PAGE: usize = 4096;
            let start = (v.as_ptr() as usize).next_multiple_of(PAGE);
            let end = (v.as_ptr() as usize + cap) & !(PAGE - 1);
            if end > start {
                // SAFETY: advisory only, on whole pages inside this allocation; a
                // failure (e.g. THP disabled) leaves ordinary pages.
                unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
                }
            }
        }
        v
    }

    /// Builds a Utf8View array; buffers are split before any would pass u32 offsets.
    #[derive(Default)]
    struct StrBuf {
        views: Vec<u128>,
        /// Buffers of the input shared zero-copy (views may point into them); own
        /// buffers come after them.
        foreign: Vec<Buffer>,
        buffers: Vec<Vec<u8>>,
        valid: Vec<bool>,
        any_null: bool,
    }

    impl StrBuf {
        fn with_foreign(foreign: Vec<Buffer>) -> Self {
            StrBuf {
                foreign,
                ..Default::default()
            }
        }

        /// Reserve one own buffer up front (untouched capacity costs no RSS), so the
        /// column is written once instead of grown and copied.
        fn reserve(mut self, bytes: usize) -> Self {
            self.buffers.push(alloc_bytes(bytes.min(u32::MAX as usize)));
            self
        }

        /// A non-inline view into one of the foreign buffers.
        #[inline]
        fn push_foreign(&mut self, s: &str, buf: u32, off: u32) {
            let b = s.as_bytes();
            debug_assert!(b.len() > 12 && (buf as usize) < self.foreign.len());
            let prefix = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u128;
            self.valid.push(true);
            self.views.push(
                (b.len() as u128) | (prefix << 32) | ((buf as u128) << 64) | ((off as u128) << 96),
            );
        }

        #[inline]
        fn push(&mut self, s: Option<&str>) {
            let Some(s) = s else {
                self.views.push(0);
                self.valid.push(false);
                self.any_null = true;
                return;
            };
            self.valid.push(true);
            let b = s.as_bytes();
            let len = b.len() as u128;
            if b.len() <= 12 {
                let mut inline = [0u8; 16];
                inline[..4].copy_from_slice(&(b.len() as u32).to_le_bytes());
                inline[4..4 + b.len()].copy_from_slice(b);
                self.views.push(u128::from_le_bytes(inline));
                return;
            }
            let need_new = match self.buffers.last() {
                None => true,
                Some(buf) => buf.len() + b.len() > u32::MAX as usize,
            };
            if need_new {
                self.buffers.push(alloc_bytes(b.len().max(1 << 20)));
            }
            let idx = self.foreign.len() + self.buffers.len() - 1;
            let buf = self.buffers.last_mut().expect("just pushed");
            let off = buf.len();
            buf.extend_from_slice(b);
            let prefix = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u128;
            self.views
                .push(len | (prefix << 32) | ((idx as u128) << 64) | ((off as u128) << 96));
        }

        fn finish(self) -> ArrayRef {
            let nulls = self.any_null.then(|| NullBuffer::from(self.valid));
            let mut buffers = self.foreign;
            buffers.extend(self.buffers.into_iter().map(Buffer::from_vec));
            // SAFETY: views were built above following the Utf8View layout from valid UTF-8.
            let arr = unsafe {
                GenericByteViewArray::<StringViewType>::new_unchecked(
                    ScalarBuffer::from(self.views),
                    buffers,
                    nulls,
                )
            };
            Arc::new(arr)
        }
    }

    /// This machine's physical memory in bytes (None where unknown). Sizes are checked
    /// against it before allocating: a failed allocation aborts the whole interpreter.
    fn physical_memory() -> Option<usize> {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: sysconf has no preconditions.
            let (pages, size) = unsafe {
                (
                    libc::sysconf(libc::_SC_PHYS_PAGES),
                    libc::sysconf(libc::_SC_PAGESIZE),
                )
            };
            if pages > 0 && size > 0 {
                return (pages as usize).checked_mul(size as usize);
            }
        }
        None
    }

    /// A ValueError when `bytes` (None: overflowed) cannot fit in memory.
    fn check_fits(bytes: Option<usize>, what: impl Fn() -> String) -> PyResult<()> {
        let limit = physical_memory().unwrap_or(usize::MAX);
        match bytes {
            Some(b) if b <= limit => Ok(()),
            _ => Err(PyValueError::new_err(format!(
                "{} would need {}, more than this machine's {:.1} GiB of memory",
                what(),
                bytes.map_or(
                    "more bytes than an address space holds".to_string(),
                    |b| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
                ),
                limit as f64 / (1u64 << 30) as f64
            ))),
        }
    }

    fn bool_array(v: Vec<bool>) -> ArrayRef {
        let mut b = BooleanBuilder::with_capacity(v.len());
        b.append_slice(&v);
        Arc::new(b.finish())
    }

    fn table(batches: Vec<RecordBatch>, schema: Arc<ArrowSchema>) -> PyResult<PyTable> {
        PyTable::try_new(batches, schema)
    }

    fn chunked(chunks: Vec<ArrayRef>, name: &str, dt: DataType) -> PyResult<PyChunkedArray> {
        let field = Arc::new(Field::new(name, dt, true));
        PyChunkedArray::try_new(chunks, field)
    }

    /// Rows per parallel block: enough blocks for load balance, few output chunks.
    fn block_rows(n: usize) -> usize {
        let threads = rayon::current_num_threads().max(1);
        n.div_ceil(threads * 8).clamp(2048, 8192)
    }

    // ---------------------------------------------------------------- validation

    struct ChunkSink {
        ok: Vec<bool>,
        reason: StrBuf,
        field: StrBuf,
        message: StrBuf,
        extracted: Vec<bool>,
        /// None when the caller did not ask for the `json` column.
        json: Option<StrBuf>,
        unpack: Option<Vec<StrBuf>>,
        /// Which unpack column each value of the current row's schema goes to.
        colmap: Vec<usize>,
        filled: Vec<bool>,
        /// Fused dedup: per accepted row, the hash of these value indices (schema order;
        /// usize::MAX = the row's task type lacks the field, hashed as null).
        dedup: Option<FusedDedup>,
        /// Where the current row's text lives in the input's view buffers, if it does.
        row: Option<RowLoc>,
    }

    #[derive(Clone, Copy)]
    struct RowLoc {
        addr: usize,
        len: usize,
        buf: u32,
        off: u32,
    }

    impl ChunkSink {
        fn new(json: bool, unpack: Option<usize>, foreign: &[Buffer], bytes: usize) -> Self {
            ChunkSink {
                ok: Vec::new(),
                reason: StrBuf::default(),
                field: StrBuf::default(),
                message: StrBuf::default(),
                extracted: Vec::new(),
                json: json.then(|| StrBuf::default().reserve(bytes)),
                unpack: unpack.map(|k| {
                    (0..k)
                        .map(|_| StrBuf::with_foreign(foreign.to_vec()).reserve(bytes / k.max(1)))
                        .collect()
                }),
                colmap: Vec::new(),
                filled: Vec::new(),
                dedup: None,
                row: None,
            }
        }

        fn nulls_for_unpack(&mut self) {
            if let Some(cols) = &mut self.unpack {
                for c in cols {
                    c.push(None);
                }
            }
        }
    }

    impl Sink for ChunkSink {
        fn accept(&mut self, json: &str, extracted: bool, values: &[Option<&str>]) {
            if let Some(d) = &mut self.dedup {
                // Hash now, while the row's text is still in cache.
                let field = |k: usize| values.get(k).copied().flatten();
                let h = if d.map.len() <= 8 {
                    let mut buf = [None; 8];
                    for (b, &k) in buf.iter_mut().zip(&d.map) {
                        *b = field(k);
                    }
                    row_hash(&buf[..d.map.len()], d.casefold, &mut d.norm)
                } else {
                    let v: Vec<_> = d.map.iter().map(|&k| field(k)).collect();
                    row_hash(&v, d.casefold, &mut d.norm)
                };
                d.hashes.push(Some(h));
            }
            self.ok.push(true);
            self.reason.push(None);
            self.field.push(None);
            self.message.push(None);
            self.extracted.push(extracted);
            if let Some(j) = &mut self.json {
                j.push(Some(json));
            }
            if let Some(cols) = &mut self.unpack {
                self.filled.clear();
                self.filled.resize(cols.len(), false);
                for (v, &c) in values.iter().zip(&self.colmap) {
                    if c >= cols.len() {
                        continue;
                    }
                    self.filled[c] = true;
                    // A value that is a plain slice of the input row becomes a view into
                    // the input buffer: no copy.
                    if let (Some(r), Some(x)) = (self.row, v) {
                        let a = x.as_ptr() as usize;
                        if x.len() > 12 && a >= r.addr && a + x.len() <= r.addr + r.len {
                            cols[c].push_foreign(x, r.buf, r.off + (a - r.addr) as u32);
                            continue;
                        }
                    }
                    cols[c].push(*v);
                }
                for (c, f) in cols.iter_mut().zip(&self.filled) {
                    if !f {
                        c.push(None);
                    }
                }
            }
        }

        fn reject(&mut self, rej: Rejection, extracted: bool) {
            if let Some(d) = &mut self.dedup {
                d.hashes.push(None);
            }
            self.ok.push(false);
            self.reason.push(Some(rej.reason.code()));
            self.field.push(rej.field.as_deref());
            self.message.push(Some(&rej.message));
            self.extracted.push(extracted);
            if let Some(j) = &mut self.json {
                j.push(None);
            }
            self.nulls_for_unpack();
        }
    }

    /// Per-block state of dedup fused into validation.
    struct FusedDedup {
        casefold: bool,
        map: Vec<usize>,
        norm: String,
        hashes: Vec<Option<u128>>,
    }

    // ---------------------------------------------------------------- quality gate

    /// (task type, prompt template, [(field, language part or -1)]).
    type TypeSpec = (String, String, Vec<(String, i64)>);

    /// Checks and per-task-type plans of the quality gate (crate::quality).
    #[pyclass(module = "e5x._native", frozen)]
    struct QualityGate {
        cfg: QualityConfig,
        plans: Vec<(String, Vec<String>, TypePlan)>,
        languages: Languages,
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
            let cfg = QualityConfig::from_pairs(&checks).map_err(PyValueError::new_err)?;
            let plans = types
                .into_iter()
                .map(|(name, template, fields)| {
                    let names: Vec<String> = fields.iter().map(|f| f.0.clone()).collect();
                    let fp = fields
                        .iter()
                        .map(|f| FieldPlan {
                            lang_part: usize::try_from(f.1).ok(),
                        })
                        .collect();
                    (name, names, TypePlan::new(&template, fp, &cfg))
                })
                .collect();
            Ok(QualityGate {
                cfg,
                plans,
                languages: Languages::new(language_codes),
            })
        }

        /// The checks that run, with their thresholds.
        #[getter]
        fn checks(&self) -> Vec<(&'static str, f64)> {
            let c = &self.cfg;
            let all = [
                ("format_residue", c.format_residue),
                ("degenerate", c.degenerate),
                ("prompt_echo", c.prompt_echo.map(|n| n as f64)),
                ("too_few_words", c.too_few_words),
                ("wrong_language", c.wrong_language),
            ];
            all.into_iter()
                .filter_map(|(n, v)| v.map(|v| (n, v)))
                .collect()
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

    /// A nullable Int64 column read by global row index.
    struct IntCol {
        chunks: Vec<ArrayRef>,
        starts: Vec<usize>,
        len: usize,
    }

    impl IntCol {
        fn from_py(name: &str, col: PyChunkedArray) -> PyResult<IntCol> {
            let (chunks, _) = col.into_inner();
            let mut starts = Vec::with_capacity(chunks.len());
            let mut len = 0;
            for c in &chunks {
                if !matches!(c.data_type(), DataType::Int64 | DataType::Null) {
                    return Err(PyTypeError::new_err(format!(
                        "column '{name}' must hold Int64, got Arrow type {}",
                        c.data_type()
                    )));
                }
                starts.push(len);
                len += c.len();
            }
            Ok(IntCol {
                chunks,
                starts,
                len,
            })
        }

        #[inline]
        fn get(&self, row: usize) -> Option<u32> {
            let k = self.starts.partition_point(|&s| s <= row) - 1;
            let (c, i) = (&self.chunks[k], row - self.starts[k]);
            if c.is_null(i) || c.data_type() == &DataType::Null {
                return None;
            }
            let v = c.as_primitive::<Int64Type>().value(i);
            Some(v.clamp(0, u32::MAX as i64) as u32)
        }
    }

    /// Runs the quality gate on rows the validator accepts, then hands them on.
    struct GateSink<'a> {
        inner: &'a mut ChunkSink,
        cfg: &'a QualityConfig,
        plan: Option<&'a (String, Vec<String>, TypePlan)>,
        min_words: &'a [Option<u32>],
        ctx: RowCtx<'a>,
        scratch: &'a mut GateScratch,
    }

    impl Sink for GateSink<'_> {
        fn accept(&mut self, json: &str, extracted: bool, values: &[Option<&str>]) {
            if let Some((_, names, plan)) = self.plan {
                if let Some(r) = quality::check_row(
                    self.cfg,
                    plan,
                    names,
                    values,
                    self.min_words,
                    self.ctx,
                    self.scratch,
                ) {
                    return self.inner.reject(r, extracted);
                }
            }
            self.inner.accept(json, extracted, values)
        }

        fn reject(&mut self, rej: Rejection, extracted: bool) {
            self.inner.reject(rej, extracted)
        }
    }

    /// Task-type schemas compiled once; validate many batches with them.
    #[pyclass(module = "e5x._native", frozen)]
    struct Validator {
        set: SchemaSet,
        names: Vec<String>,
    }

    enum Tasks {
        One(String),
        PerRow(StrCol),
    }

    #[pymethods]
    impl Validator {
        /// `schemas`: list of (task type, JSON Schema as JSON text).
        #[new]
        fn new(schemas: Vec<(String, String)>) -> PyResult<Self> {
            let set = SchemaSet::compile(&schemas).map_err(PyValueError::new_err)?;
            Ok(Validator {
                set,
                names: schemas.into_iter().map(|s| s.0).collect(),
            })
        }

        #[getter]
        fn task_types(&self) -> Vec<String> {
            self.names.clone()
        }

        /// The string fields `validate(..., unpack=True)` adds as columns.
        #[getter]
        fn unpack_columns(&self) -> Vec<String> {
            self.set.unpack_columns.clone()
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
            let texts = StrCol::from_py("texts", texts, true)?;
            let gate = gate.as_ref().map(|g| g.get());
            let gate_tasks = gate_tasks
                .map(|c| StrCol::from_py("gate_tasks", c, false))
                .transpose()?;
            let gate_langs = gate_languages
                .map(|c| StrCol::from_py("gate_languages", c, false))
                .transpose()?;
            let mut gate_min: Vec<(String, IntCol)> = Vec::new();
            for (f, c) in gate_min_words.unwrap_or_default() {
                let col = IntCol::from_py(&format!("gate_min_words[{f}]"), c)?;
                gate_min.push((f, col));
            }
            for (name, len) in gate_tasks
                .iter()
                .map(|c| ("gate_tasks", c.len))
                .chain(gate_langs.iter().map(|c| ("gate_languages", c.len)))
                .chain(gate_min.iter().map(|(_, c)| ("gate_min_words", c.len)))
            {
                if len != texts.len {
                    return Err(PyValueError::new_err(format!(
                        "{name} has {len} rows but texts has {}",
                        texts.len
                    )));
                }
            }
            let tasks = if let Ok(s) = task_types.extract::<String>() {
                Tasks::One(s)
            } else {
                let col = StrCol::from_py("task_types", task_types.extract()?, false)?;
                if col.len != texts.len {
                    return Err(PyValueError::new_err(format!(
                        "task_types has {} rows but texts has {}",
                        col.len, texts.len
                    )));
                }
                Tasks::PerRow(col)
            };
            let n = texts.len;
            let set = &self.set;
            // One task type: unpack just its fields; a column of them: the union.
            let unpack_names: Vec<String> = match &tasks {
                Tasks::One(t) => set
                    .get(t)
                    .map(|s| s.string_props.clone())
                    .unwrap_or_default(),
                Tasks::PerRow(_) => set.unpack_columns.clone(),
            };
            let ncols = unpack.then_some(unpack_names.len());
            let dedup_fields = match (&dedup, dedup_fields) {
                (None, None) => None,
                (Some(_), Some(f)) if !f.is_empty() => Some(f),
                _ => {
                    return Err(PyValueError::new_err(
                        "dedup and dedup_fields go together (at least one field)",
                    ))
                }
            };
            // Per task type, where each dedup field sits among its string values.
            let mut dedup_maps: Vec<(String, Vec<usize>)> = Vec::new();
            if let Some(fields) = &dedup_fields {
                // (An unknown single task type rejects every row: nothing to check.)
                let known: Option<&[String]> = match &tasks {
                    Tasks::One(t) => set.get(t).map(|s| s.string_props.as_slice()),
                    Tasks::PerRow(_) => Some(&set.unpack_columns),
                };
                let unknown = known.and_then(|k| fields.iter().find(|f| !k.contains(f)));
                if let (Some(f), Some(known)) = (unknown, known) {
                    return Err(PyValueError::new_err(format!(
                        "dedup field '{f}' is not a string field of the task type(s) \
                         (string fields: {known:?})"
                    )));
                }
                for t in &self.names {
                    if let Some(sc) = set.get(t) {
                        let m = fields
                            .iter()
                            .map(|f| {
                                sc.string_props
                                    .iter()
                                    .position(|p| p == f)
                                    .unwrap_or(usize::MAX)
                            })
                            .collect();
                        dedup_maps.push((t.clone(), m));
                    }
                }
            }
            let casefold = dedup.as_ref().map(|d| d.get().casefold);
            // The gate's field plans in the order of each schema's string properties (the
            // order of the values the validator hands on).
            let gate_plans: Vec<(String, Vec<String>, TypePlan)> = gate
                .map(|g| {
                    g.plans
                        .iter()
                        .filter_map(|(name, names, plan)| {
                            let sc = set.get(name)?;
                            let fields = sc
                                .string_props
                                .iter()
                                .map(|p| match names.iter().position(|x| x == p) {
                                    Some(k) => plan.fields[k].clone(),
                                    None => FieldPlan { lang_part: None },
                                })
                                .collect();
                            let plan = TypePlan {
                                fields,
                                template: plan.template.clone(),
                            };
                            Some((name.clone(), sc.string_props.clone(), plan))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let gate_plans = &gate_plans;
            let block = block_rows(n);
            let colmaps: Vec<(String, Vec<usize>)> = self
                .names
                .iter()
                .filter_map(|t| {
                    set.get(t).map(|s| {
                        let m = s
                            .string_props
                            .iter()
                            .map(|p| {
                                unpack_names
                                    .iter()
                                    .position(|c| c == p)
                                    .unwrap_or(usize::MAX)
                            })
                            .collect();
                        (t.clone(), m)
                    })
                })
                .collect();
            // Blocks never straddle two input chunks, so a block's unpacked values can
            // point into its chunk's view buffers.
            let mut blocks = Vec::new();
            for (k, c) in texts.chunks.iter().enumerate() {
                let start = texts.starts[k];
                let mut lo = 0;
                while lo < c.len() {
                    let hi = (lo + block).min(c.len());
                    blocks.push((k, start + lo, start + hi));
                    lo = hi;
                }
            }
            let mut sinks: Vec<ChunkSink> = py.detach(|| {
                blocks
                    .par_iter()
                    .map(|&(k, lo, hi)| {
                        let chunk = &texts.chunks[k];
                        let views = (chunk.data_type() == &DataType::Utf8View)
                            .then(|| chunk.as_string_view());
                        let foreign: Vec<Buffer> =
                            views.map(|v| v.data_buffers().to_vec()).unwrap_or_default();
                        let bytes: usize = match views {
                            Some(v) => v.views()[lo - texts.starts[k]..hi - texts.starts[k]]
                                .iter()
                                .map(|&w| w as u32 as usize)
                                .sum(),
                            None => 0,
                        };
                        let mut sink = ChunkSink::new(json, ncols, &foreign, bytes);
                        sink.dedup = casefold.map(|casefold| FusedDedup {
                            casefold,
                            map: Vec::new(),
                            norm: String::new(),
                            hashes: Vec::with_capacity(hi - lo),
                        });
                        let mut scratch = Scratch::new(!json);
                        let mut gate_scratch = GateScratch::default();
                        let mut last_task: Option<String> = None;
                        let mut gate_plan = None;
                        // Per field of the row's schema: the column of its minimum words.
                        let mut min_cols: Vec<Option<usize>> = Vec::new();
                        let mut min_words: Vec<Option<u32>> = Vec::new();
                        let mut last_gate_task: Option<String> = None;
                        for row in lo..hi {
                            let task = match &tasks {
                                Tasks::One(s) => Ok(Some(s.as_str())),
                                Tasks::PerRow(c) => c.str(row),
                            };
                            let gate_task = gate_tasks.as_ref().map_or(Ok(None), |c| c.str(row));
                            let gate_lang = gate_langs.as_ref().map_or(Ok(None), |c| c.str(row));
                            let (task, gate_task, gate_lang) = match (task, gate_task, gate_lang) {
                                (Ok(t), Ok(g), Ok(l)) => (t, g, l),
                                (t, g, l) => {
                                    let (at, column) = [
                                        (t.err(), "task_types"),
                                        (g.err(), "gate_tasks"),
                                        (l.err(), "gate_languages"),
                                    ]
                                    .into_iter()
                                    .find_map(|(e, c)| Some((e?, c)))
                                    .expect("one of them failed");
                                    sink.reject(Rejection::invalid_utf8(at, Some(column)), false);
                                    continue;
                                }
                            };
                            if (ncols.is_some() || sink.dedup.is_some())
                                && task != last_task.as_deref()
                            {
                                let find = |maps: &[(String, Vec<usize>)]| {
                                    task.and_then(|t| maps.iter().find(|c| c.0 == t))
                                        .map(|c| c.1.clone())
                                        .unwrap_or_default()
                                };
                                sink.colmap = find(&colmaps);
                                if let Some(d) = &mut sink.dedup {
                                    d.map = find(&dedup_maps);
                                }
                                last_task = task.map(str::to_string);
                            }
                            let schema = task.and_then(|t| set.get(t));
                            if gate.is_some() {
                                if task != last_gate_task.as_deref() {
                                    gate_plan =
                                        task.and_then(|t| gate_plans.iter().find(|p| p.0 == t));
                                    min_cols = gate_plan
                                        .map(|p| {
                                            p.1.iter()
                                                .map(|f| gate_min.iter().position(|m| &m.0 == f))
                                                .collect()
                                        })
                                        .unwrap_or_default();
                                    last_gate_task = task.map(str::to_string);
                                }
                                min_words.clear();
                                min_words.extend(
                                    min_cols
                                        .iter()
                                        .map(|c| c.and_then(|c| gate_min[c].1.get(row))),
                                );
                            }
                            let text = texts.bytes(row);
                            sink.row = match (views, text) {
                                (Some(v), Some(t)) if t.len() > 12 => {
                                    let view = v.views()[row - texts.starts[k]];
                                    Some(RowLoc {
                                        addr: t.as_ptr() as usize,
                                        len: t.len(),
                                        buf: (view >> 64) as u32,
                                        off: (view >> 96) as u32,
                                    })
                                }
                                _ => None,
                            };
                            let before = sink.ok.len();
                            let res = catch_unwind(AssertUnwindSafe(|| {
                                let mut gated;
                                let sink: &mut dyn Sink = match gate {
                                    Some(g) => {
                                        gated = GateSink {
                                            inner: &mut sink,
                                            cfg: &g.cfg,
                                            plan: gate_plan,
                                            min_words: &min_words,
                                            ctx: RowCtx {
                                                task: gate_task,
                                                language: gate_lang,
                                                languages: Some(&g.languages),
                                            },
                                            scratch: &mut gate_scratch,
                                        };
                                        &mut gated
                                    }
                                    None => &mut sink,
                                };
                                validate_row(text, schema, task, extract, &mut scratch, sink)
                            }));
                            if res.is_err() && sink.ok.len() == before {
                                scratch = Scratch::new(!json);
                                gate_scratch = GateScratch::default();
                                sink.reject(
                                    Rejection {
                                        reason: Reason::InternalError,
                                        field: None,
                                        message: format!(
                                            "internal error while validating row {row}"
                                        ),
                                    },
                                    false,
                                );
                            }
                        }
                        sink
                    })
                    .collect()
            });
            let mut fields = vec![
                Field::new("ok", DataType::Boolean, false),
                Field::new("reason", DataType::Utf8View, true),
                Field::new("field", DataType::Utf8View, true),
                Field::new("message", DataType::Utf8View, true),
                Field::new("extracted", DataType::Boolean, false),
            ];
            if json {
                fields.push(Field::new("json", DataType::Utf8View, true));
            }
            if unpack {
                for c in &unpack_names {
                    fields.push(Field::new(c, DataType::Utf8View, true));
                }
            }
            // Fused dedup: insert the blocks' hashes in row order.
            let mut dups: Option<std::vec::IntoIter<Option<u64>>> = None;
            if let Some(d) = &dedup {
                let hashes: Vec<Option<u128>> = sinks
                    .iter_mut()
                    .flat_map(|s| s.dedup.take().map(|d| d.hashes).unwrap_or_default())
                    .collect();
                dups = Some(d.get().lock()?.insert_opt(&hashes).into_iter());
                fields.push(Field::new("keep", DataType::Boolean, false));
                fields.push(Field::new("duplicate_of", DataType::Int64, true));
            }
            let schema = Arc::new(ArrowSchema::new(fields));
            let mut batches = Vec::with_capacity(sinks.len());
            for s in sinks {
                let rows = s.ok.len();
                let keep_dup = dups.as_mut().map(|it| {
                    let part: Vec<Option<u64>> = it.by_ref().take(rows).collect();
                    let keep: Vec<bool> =
                        s.ok.iter()
                            .zip(&part)
                            .map(|(&ok, d)| ok && d.is_none())
                            .collect();
                    let dup: Int64Array = part.into_iter().map(|d| d.map(|x| x as i64)).collect();
                    (bool_array(keep), Arc::new(dup) as ArrayRef)
                });
                let mut cols: Vec<ArrayRef> = vec![
                    bool_array(s.ok),
                    s.reason.finish(),
                    s.field.finish(),
                    s.message.finish(),
                    bool_array(s.extracted),
                ];
                cols.extend(s.json.map(StrBuf::finish));
                if let Some(u) = s.unpack {
                    cols.extend(u.into_iter().map(StrBuf::finish));
                }
                if let Some((keep, dup)) = keep_dup {
                    cols.extend([keep, dup]);
                }
                batches.push(
                    RecordBatch::try_new(schema.clone(), cols)
                        .map_err(|e| PyRuntimeError::new_err(e.to_string()))?,
                );
            }
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
            if names.len() != columns.len() || columns.is_empty() {
                return Err(PyValueError::new_err(
                    "need one name per column and at least one column",
                ));
            }
            let cols: Vec<StrCol> = names
                .iter()
                .zip(columns)
                .map(|(n, c)| StrCol::from_py(n, c, false))
                .collect::<PyResult<_>>()?;
            let n = cols[0].len;
            if let Some(c) = cols.iter().find(|c| c.len != n) {
                return Err(PyValueError::new_err(format!(
                    "column '{}' has {} rows, expected {n}",
                    c.name, c.len
                )));
            }
            // The lock is taken without the GIL, so a thread waiting for it never blocks
            // the one holding it.
            let dup = py.detach(|| {
                let mut inner = self.lock()?;
                // The first row holding bytes that are not UTF-8 (usize::MAX: none); the
                // batch is then refused whole, before anything is inserted.
                let bad_row = AtomicUsize::new(usize::MAX);
                catch_unwind(AssertUnwindSafe(|| {
                    let hashes = inner.hash_rows(n, cols.len(), |row, out| {
                        out.extend(cols.iter().map(|c| {
                            c.str(row).unwrap_or_else(|_| {
                                bad_row.fetch_min(row, Ordering::Relaxed);
                                None
                            })
                        }))
                    });
                    let row = bad_row.load(Ordering::Relaxed);
                    if row < n {
                        if let Some((c, at)) =
                            cols.iter().find_map(|c| Some((c, c.str(row).err()?)))
                        {
                            return Err(c.utf8_error(row, at));
                        }
                    }
                    Ok(inner.insert(&hashes))
                }))
                .map_err(|_| PyRuntimeError::new_err("internal error in Deduplicator.add"))?
            })?;
            let arr: ArrayRef = Arc::new(
                dup.into_iter()
                    .map(|d| d.map(|x| x as i64))
                    .collect::<Int64Array>(),
            );
            chunked(vec![arr], "duplicate_of", DataType::Int64)
        }
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
        if names.len() != values.len() || names.len() != weights.len() {
            return Err(PyValueError::new_err(
                "names, values and weights must have the same length",
            ));
        }
        let mut tables = Vec::with_capacity(names.len());
        for ((name, vals), w) in names.iter().zip(&values).zip(&weights) {
            if vals.len() != w.len() {
                return Err(PyValueError::new_err(format!(
                    "placeholder '{name}': {} values but {} weights",
                    vals.len(),
                    w.len()
                )));
            }
            tables.push(
                Alias::new(w)
                    .map_err(|e| PyValueError::new_err(format!("placeholder '{name}': {e}")))?,
            );
        }
        check_fits(sample::peak_bytes(n, names.len()), || {
            format!("drawing n={n} rows of {} placeholder(s)", names.len())
        })?;
        let idx = py.detach(|| sample::draw(&tables, n, seed));
        let mut cols: Vec<ArrayRef> = Vec::with_capacity(names.len());
        let mut fields = Vec::with_capacity(names.len());
        for ((name, vals), ix) in names.iter().zip(&values).zip(idx) {
            // One buffer with every value once; each row's view points into it.
            let mut data = Vec::new();
            let mut value_views = Vec::with_capacity(vals.len());
            for v in vals {
                let b = v.as_bytes();
                let view = if b.len() <= 12 {
                    let mut inline = [0u8; 16];
                    inline[..4].copy_from_slice(&(b.len() as u32).to_le_bytes());
                    inline[4..4 + b.len()].copy_from_slice(b);
                    u128::from_le_bytes(inline)
                } else {
                    let off = data.len() as u128;
                    data.extend_from_slice(b);
                    let prefix = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u128;
                    (b.len() as u128) | (prefix << 32) | (off << 96)
                };
                value_views.push(view);
            }
            let views: Vec<u128> =
                py.detach(|| ix.par_iter().map(|&i| value_views[i as usize]).collect());
            // SAFETY: views built from valid UTF-8 values following the Utf8View layout.
            let arr = unsafe {
                GenericByteViewArray::<StringViewType>::new_unchecked(
                    ScalarBuffer::from(views),
                    vec![Buffer::from_vec(data)],
                    None,
                )
            };
            cols.push(Arc::new(arr));
            fields.push(Field::new(name, DataType::Utf8View, false));
        }
        let schema = Arc::new(ArrowSchema::new(fields));
        let batch = RecordBatch::try_new_with_options(
            schema.clone(),
            cols,
            &arrow_array::RecordBatchOptions::new().with_row_count(Some(n)),
        )
        .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        table(vec![batch], schema)
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
        let tpl = Template::parse(template).map_err(PyValueError::new_err)?;
        let mut cols = Vec::with_capacity(tpl.names.len());
        let mut given: Vec<Option<StrCol>> = names.iter().map(|_| None).collect();
        for (k, c) in columns.into_iter().enumerate() {
            given[k] = Some(StrCol::from_py(&names[k], c, false)?);
        }
        for name in &tpl.names {
            let Some(k) = names.iter().position(|x| x == name) else {
                return Err(PyValueError::new_err(format!(
                    "template placeholder '{{{name}}}' has no column in values (columns: {})",
                    names.join(", ")
                )));
            };
            let col = given[k]
                .take()
                .ok_or_else(|| PyValueError::new_err(format!("column '{name}' given twice")))?;
            if col.len != n {
                return Err(PyValueError::new_err(format!(
                    "column '{name}' has {} rows, expected {n}",
                    col.len
                )));
            }
            cols.push(col);
        }
        // Measured first: a block's text must fit the u32 offsets of a string view, and
        // the whole output (plus a 16-byte view per row) must fit in memory.
        let limit = physical_memory().unwrap_or(usize::MAX);
        let out = py.detach(|| {
            tpl.render_within(
                n,
                sample::BLOCK,
                u32::MAX as usize,
                limit.saturating_sub(n.saturating_mul(16)),
                |v, row| cols[v].bytes(row),
            )
        });
        let chunks = out.map_err(|e| match e {
            RenderError::Null { row, var } => PyValueError::new_err(format!(
                "row {row}: placeholder '{}' is null",
                tpl.names[var]
            )),
            RenderError::InvalidUtf8 { row, var, at } => cols[var].utf8_error(row, at),
            RenderError::BlockTooLarge { lo, hi, bytes } => PyValueError::new_err(format!(
                "rows {lo}..{hi} render to {bytes} bytes; one block of rendered rows holds at \
                 most 4 GiB (render fewer or shorter rows at a time)"
            )),
            RenderError::TotalTooLarge { bytes } => PyValueError::new_err(format!(
                "rendering {n} rows would need {:.1} GiB, more than this machine's {:.1} GiB of memory",
                bytes as f64 / (1u64 << 30) as f64,
                limit as f64 / (1u64 << 30) as f64
            )),
        })?;
        // One Utf8View array whose data buffers are the rendered blocks.
        let mut views = Vec::with_capacity(n);
        let mut buffers = Vec::with_capacity(chunks.len());
        for (offsets, data) in chunks {
            let bi = buffers.len() as u128;
            for w in offsets.windows(2) {
                let (s, e) = (w[0] as usize, w[1] as usize);
                let b = &data[s..e];
                let view = if b.len() <= 12 {
                    let mut inline = [0u8; 16];
                    inline[..4].copy_from_slice(&(b.len() as u32).to_le_bytes());
                    inline[4..4 + b.len()].copy_from_slice(b);
                    u128::from_le_bytes(inline)
                } else {
                    let prefix = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u128;
                    (b.len() as u128) | (prefix << 32) | (bi << 64) | ((s as u128) << 96)
                };
                views.push(view);
            }
            buffers.push(Buffer::from_vec(data));
        }
        // SAFETY: views follow the Utf8View layout over valid UTF-8 rendered text.
        let arr = unsafe {
            GenericByteViewArray::<StringViewType>::new_unchecked(
                ScalarBuffer::from(views),
                buffers,
                None,
            )
        };
        chunked(vec![Arc::new(arr)], "rendered", DataType::Utf8View)
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
}
