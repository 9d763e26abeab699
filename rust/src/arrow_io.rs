//! Arrow columns in and out of the native calls, without Python: string and Int64
//! columns read by global row index over their chunks, Utf8View columns built in place,
//! and the Arrow side of dedup, placeholder sampling and rendering. Errors are plain
//! values ([`Error`]) carrying the message Python shows; rust/src/py.rs turns them into
//! exceptions by their [`ErrorKind`].

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arrow_array::builder::BooleanBuilder;
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, StringViewType};
use arrow_array::{
    Array, ArrayRef, GenericByteViewArray, GenericStringArray, Int64Array, OffsetSizeTrait,
    RecordBatch, RecordBatchOptions, StringViewArray,
};
use arrow_buffer::{Buffer, NullBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Schema};
use rayon::prelude::*;

use crate::dedup::Dedup;
use crate::render::{Block, RenderError, Template};
use crate::sample::{self, Alias};
use crate::validate::utf8;

// ---------------------------------------------------------------- errors

/// Which Python exception an [`Error`] becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// TypeError: a column of the wrong Arrow type.
    Type,
    /// ValueError: bad values or arguments.
    Value,
    /// RuntimeError: a failure inside the core.
    Runtime,
}

/// Why a call on Arrow columns failed; `Display` is the message Python shows.
#[derive(Clone, Debug, PartialEq)]
pub enum Error {
    /// Column `column` has chunks of Arrow type `got`; it must hold `expected`.
    ColumnType {
        column: String,
        expected: &'static str,
        got: DataType,
    },
    /// Row `row` of column `column` is not UTF-8 from byte `at` on.
    InvalidUtf8 {
        column: String,
        row: usize,
        at: usize,
    },
    /// Any other bad input; the message as shown.
    Value(String),
    /// A failure inside the core (a bug); the message as shown.
    Runtime(String),
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::ColumnType { .. } => ErrorKind::Type,
            Error::InvalidUtf8 { .. } | Error::Value(_) => ErrorKind::Value,
            Error::Runtime(_) => ErrorKind::Runtime,
        }
    }

    /// Column `column` has `rows` rows where `texts` has `texts`.
    pub fn rows_differ(column: &str, rows: usize, texts: usize) -> Error {
        Error::Value(format!("{column} has {rows} rows but texts has {texts}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ColumnType {
                column,
                expected,
                got,
            } => write!(
                f,
                "column '{column}' must hold {expected}, got Arrow type {got}"
            ),
            Error::InvalidUtf8 { column, row, at } => {
                write!(f, "column '{column}' row {row}: invalid UTF-8 at byte {at}")
            }
            Error::Value(m) | Error::Runtime(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

impl From<arrow_schema::ArrowError> for Error {
    fn from(e: arrow_schema::ArrowError) -> Error {
        Error::Runtime(e.to_string())
    }
}

// ---------------------------------------------------------------- input columns

/// Where global row `row` sits: (chunk, index inside it). `starts` holds each chunk's
/// first row; the last chunk starting at or before `row` holds it (empty chunks share
/// their start with the next one and are skipped).
#[inline]
fn locate(starts: &[usize], row: usize) -> (usize, usize) {
    let k = starts.partition_point(|&s| s <= row) - 1;
    (k, row - starts[k])
}

/// Each chunk's first global row, and the rows of all of them.
fn chunk_starts(chunks: &[ArrayRef]) -> (Vec<usize>, usize) {
    let mut starts = Vec::with_capacity(chunks.len());
    let mut len = 0;
    for c in chunks {
        starts.push(len);
        len += c.len();
    }
    (starts, len)
}

/// A string/binary column made of Arrow chunks, read by global row index.
pub struct StrCol {
    chunks: Vec<ArrayRef>,
    starts: Vec<usize>,
    len: usize,
    name: String,
}

impl StrCol {
    /// Utf8, LargeUtf8, Utf8View or Null chunks; Binary, LargeBinary and BinaryView too
    /// when `allow_binary`. Anything else is a [`Error::ColumnType`] naming the column.
    pub fn new(name: &str, chunks: Vec<ArrayRef>, allow_binary: bool) -> Result<StrCol, Error> {
        for c in &chunks {
            match c.data_type() {
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => {}
                DataType::Binary | DataType::LargeBinary | DataType::BinaryView if allow_binary => {
                }
                other => {
                    return Err(Error::ColumnType {
                        column: name.to_string(),
                        expected: "strings",
                        got: other.clone(),
                    })
                }
            }
        }
        let (starts, len) = chunk_starts(&chunks);
        Ok(StrCol {
            chunks,
            starts,
            len,
            name: name.to_string(),
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn chunks(&self) -> &[ArrayRef] {
        &self.chunks
    }

    /// The global row index of chunk `k`'s first row.
    pub fn chunk_start(&self, k: usize) -> usize {
        self.starts[k]
    }

    /// A row's bytes (None for nulls). String columns are read as bytes too: an Arrow
    /// array from outside may hold any bytes, so nothing here assumes UTF-8.
    #[inline]
    pub fn bytes(&self, row: usize) -> Option<&[u8]> {
        let (k, i) = locate(&self.starts, row);
        let c = &self.chunks[k];
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
    pub fn str(&self, row: usize) -> Result<Option<&str>, usize> {
        self.bytes(row).map(utf8).transpose()
    }

    /// The error for a row of this column that is not UTF-8 from byte `at` on.
    pub fn utf8_error(&self, row: usize, at: usize) -> Error {
        Error::InvalidUtf8 {
            column: self.name.clone(),
            row,
            at,
        }
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

/// A nullable Int64 column read by global row index.
pub struct IntCol {
    chunks: Vec<ArrayRef>,
    starts: Vec<usize>,
    len: usize,
}

impl IntCol {
    /// Int64 or Null chunks; anything else is a [`Error::ColumnType`] naming the column.
    pub fn new(name: &str, chunks: Vec<ArrayRef>) -> Result<IntCol, Error> {
        if let Some(c) = chunks
            .iter()
            .find(|c| !matches!(c.data_type(), DataType::Int64 | DataType::Null))
        {
            return Err(Error::ColumnType {
                column: name.to_string(),
                expected: "Int64",
                got: c.data_type().clone(),
            });
        }
        let (starts, len) = chunk_starts(&chunks);
        Ok(IntCol {
            chunks,
            starts,
            len,
        })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A row's value clamped to `0..=u32::MAX` (None for nulls).
    #[inline]
    pub fn get(&self, row: usize) -> Option<u32> {
        let (k, i) = locate(&self.starts, row);
        let c = &self.chunks[k];
        if c.is_null(i) || c.data_type() == &DataType::Null {
            return None;
        }
        let v = c.as_primitive::<Int64Type>().value(i);
        Some(v.clamp(0, u32::MAX as i64) as u32)
    }
}

// ---------------------------------------------------------------- output columns

/// The Utf8View view of the bytes `b`: inline (length, then up to 12 bytes) when short,
/// else length, 4-byte prefix, data buffer `buf` and offset `off` in it.
#[inline]
pub fn make_view(b: &[u8], buf: u32, off: u32) -> u128 {
    if b.len() <= 12 {
        let mut inline = [0u8; 16];
        inline[..4].copy_from_slice(&(b.len() as u32).to_le_bytes());
        inline[4..4 + b.len()].copy_from_slice(b);
        return u128::from_le_bytes(inline);
    }
    let prefix = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u128;
    (b.len() as u128) | (prefix << 32) | ((buf as u128) << 64) | ((off as u128) << 96)
}

/// A Utf8View array of `views` over `buffers`, without checks.
///
/// # Safety
/// Every view must follow the Utf8View layout ([`make_view`]) and point at valid UTF-8
/// inside `buffers`.
unsafe fn view_array(
    views: Vec<u128>,
    buffers: Vec<Buffer>,
    nulls: Option<NullBuffer>,
) -> ArrayRef {
    Arc::new(GenericByteViewArray::<StringViewType>::new_unchecked(
        ScalarBuffer::from(views),
        buffers,
        nulls,
    ))
}

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
pub struct StrBuf {
    views: Vec<u128>,
    /// Buffers of the input shared zero-copy (views may point into them); own
    /// buffers come after them.
    foreign: Vec<Buffer>,
    buffers: Vec<Vec<u8>>,
    valid: Vec<bool>,
    any_null: bool,
}

impl StrBuf {
    /// A builder whose first data buffers are `foreign` (see [`StrBuf::push_foreign`]).
    pub fn with_foreign(foreign: Vec<Buffer>) -> Self {
        StrBuf {
            foreign,
            ..Default::default()
        }
    }

    /// Reserve one own buffer up front (untouched capacity costs no RSS), so the
    /// column is written once instead of grown and copied.
    pub fn reserve(mut self, bytes: usize) -> Self {
        self.buffers.push(alloc_bytes(bytes.min(u32::MAX as usize)));
        self
    }

    /// Values pushed so far.
    pub fn len(&self) -> usize {
        self.views.len()
    }

    pub fn is_empty(&self) -> bool {
        self.views.is_empty()
    }

    /// A non-inline value `s` that lies in foreign buffer `buf` at `off`: its view
    /// points there, nothing is copied.
    #[inline]
    pub fn push_foreign(&mut self, s: &str, buf: u32, off: u32) {
        debug_assert!(s.len() > 12 && (buf as usize) < self.foreign.len());
        self.valid.push(true);
        self.views.push(make_view(s.as_bytes(), buf, off));
    }

    /// A value (None: null), copied into an own buffer unless short enough to inline.
    #[inline]
    pub fn push(&mut self, s: Option<&str>) {
        let Some(s) = s else {
            self.views.push(0);
            self.valid.push(false);
            self.any_null = true;
            return;
        };
        self.valid.push(true);
        let b = s.as_bytes();
        if b.len() <= 12 {
            self.views.push(make_view(b, 0, 0));
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
        self.views.push(make_view(b, idx as u32, off as u32));
    }

    pub fn finish(self) -> ArrayRef {
        let nulls = self.any_null.then(|| NullBuffer::from(self.valid));
        let mut buffers = self.foreign;
        buffers.extend(self.buffers.into_iter().map(Buffer::from_vec));
        // SAFETY: views were built above following the Utf8View layout from valid UTF-8
        // (own values are &str; foreign ones are &str slices of the foreign buffers).
        unsafe { view_array(self.views, buffers, nulls) }
    }
}

/// A non-nullable Boolean array.
pub fn bool_array(v: Vec<bool>) -> ArrayRef {
    let mut b = BooleanBuilder::with_capacity(v.len());
    b.append_slice(&v);
    Arc::new(b.finish())
}

/// A nullable Int64 array of row indices.
pub fn index_array(v: Vec<Option<u64>>) -> ArrayRef {
    Arc::new(
        v.into_iter()
            .map(|d| d.map(|x| x as i64))
            .collect::<Int64Array>(),
    )
}

// ---------------------------------------------------------------- memory

/// This machine's physical memory in bytes (None where unknown). Sizes are checked
/// against it before allocating: a failed allocation aborts the whole interpreter.
pub fn physical_memory() -> Option<usize> {
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

fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// An error when `bytes` (None: overflowed) exceed `limit`; `what` names the work.
fn check_fits_in(
    bytes: Option<usize>,
    limit: usize,
    what: impl Fn() -> String,
) -> Result<(), Error> {
    match bytes {
        Some(b) if b <= limit => Ok(()),
        _ => Err(Error::Value(format!(
            "{} would need {}, more than this machine's {:.1} GiB of memory",
            what(),
            bytes.map_or(
                "more bytes than an address space holds".to_string(),
                |b| format!("{:.1} GiB", gib(b))
            ),
            gib(limit)
        ))),
    }
}

/// An error when `bytes` (None: overflowed) cannot fit in this machine's memory.
pub fn check_fits(bytes: Option<usize>, what: impl Fn() -> String) -> Result<(), Error> {
    check_fits_in(bytes, physical_memory().unwrap_or(usize::MAX), what)
}

// ---------------------------------------------------------------- dedup

/// The key columns of a dedup batch: one name per column, at least one column, all
/// string columns of the same length.
pub fn dedup_columns(names: &[String], columns: Vec<Vec<ArrayRef>>) -> Result<Vec<StrCol>, Error> {
    if names.len() != columns.len() || columns.is_empty() {
        return Err(Error::Value(
            "need one name per column and at least one column".to_string(),
        ));
    }
    let cols: Vec<StrCol> = names
        .iter()
        .zip(columns)
        .map(|(n, c)| StrCol::new(n, c, false))
        .collect::<Result<_, _>>()?;
    let n = cols[0].len;
    if let Some(c) = cols.iter().find(|c| c.len != n) {
        return Err(Error::Value(format!(
            "column '{}' has {} rows, expected {n}",
            c.name, c.len
        )));
    }
    Ok(cols)
}

/// Hash the rows of `cols` (from [`dedup_columns`]) and insert them into `dedup`.
/// Returns per row the global index of its first occurrence (None: kept). A row that is
/// not UTF-8 refuses the batch whole, before anything is inserted.
pub fn dedup_insert(dedup: &mut Dedup, cols: &[StrCol]) -> Result<Vec<Option<u64>>, Error> {
    let n = cols.first().map_or(0, StrCol::len);
    // The first row holding bytes that are not UTF-8 (usize::MAX: none).
    let bad_row = AtomicUsize::new(usize::MAX);
    catch_unwind(AssertUnwindSafe(|| {
        let hashes = dedup.hash_rows(n, cols.len(), |row, out| {
            out.extend(cols.iter().map(|c| {
                c.str(row).unwrap_or_else(|_| {
                    bad_row.fetch_min(row, Ordering::Relaxed);
                    None
                })
            }))
        });
        let row = bad_row.load(Ordering::Relaxed);
        if row < n {
            if let Some((c, at)) = cols.iter().find_map(|c| Some((c, c.str(row).err()?))) {
                return Err(c.utf8_error(row, at));
            }
        }
        Ok(dedup.insert(&hashes))
    }))
    .map_err(|_| Error::Runtime("internal error in Deduplicator.add".to_string()))?
}

// ---------------------------------------------------------------- sampling

/// One Utf8View column with `values[i]` for each `i` of `picks`: every value is stored
/// once, each row's view points at it.
pub fn picked_column(values: &[String], picks: &[u32]) -> ArrayRef {
    let mut data = Vec::new();
    let mut value_views = Vec::with_capacity(values.len());
    for v in values {
        value_views.push(make_view(v.as_bytes(), 0, data.len() as u32));
        if v.len() > 12 {
            data.extend_from_slice(v.as_bytes());
        }
    }
    let views: Vec<u128> = picks.par_iter().map(|&i| value_views[i as usize]).collect();
    // SAFETY: views built from valid UTF-8 values following the Utf8View layout.
    unsafe { view_array(views, vec![Buffer::from_vec(data)], None) }
}

/// Draw `n` rows of placeholder values. `values[k]` and `weights[k]` belong to
/// `names[k]`. Returns a batch with one Utf8View column per placeholder.
pub fn sample_placeholders(
    names: &[String],
    values: &[Vec<String>],
    weights: &[Vec<f64>],
    n: usize,
    seed: u64,
) -> Result<RecordBatch, Error> {
    if names.len() != values.len() || names.len() != weights.len() {
        return Err(Error::Value(
            "names, values and weights must have the same length".to_string(),
        ));
    }
    let mut tables = Vec::with_capacity(names.len());
    for ((name, vals), w) in names.iter().zip(values).zip(weights) {
        if vals.len() != w.len() {
            return Err(Error::Value(format!(
                "placeholder '{name}': {} values but {} weights",
                vals.len(),
                w.len()
            )));
        }
        tables.push(Alias::new(w).map_err(|e| Error::Value(format!("placeholder '{name}': {e}")))?);
    }
    check_fits(sample::peak_bytes(n, names.len()), || {
        format!("drawing n={n} rows of {} placeholder(s)", names.len())
    })?;
    let picks = sample::draw(&tables, n, seed);
    let cols: Vec<ArrayRef> = values
        .iter()
        .zip(&picks)
        .map(|(vals, ix)| picked_column(vals, ix))
        .collect();
    let fields: Vec<Field> = names
        .iter()
        .map(|name| Field::new(name, DataType::Utf8View, false))
        .collect();
    let batch = RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        cols,
        &RecordBatchOptions::new().with_row_count(Some(n)),
    )?;
    Ok(batch)
}

// ---------------------------------------------------------------- rendering

/// Render `template` for `n` rows; `columns[k]` holds the values of `names[k]`.
/// Returns one Utf8View column whose data buffers are the rendered blocks.
pub fn render(
    template: &str,
    names: &[String],
    columns: Vec<Vec<ArrayRef>>,
    n: usize,
) -> Result<ArrayRef, Error> {
    let tpl = Template::parse(template).map_err(Error::Value)?;
    let cols = placeholder_columns(&tpl, names, columns, n)?;
    // Measured first: a block's text must fit the u32 offsets of a string view, and
    // the whole output (plus a 16-byte view per row) must fit in memory.
    let limit = physical_memory().unwrap_or(usize::MAX);
    let blocks = tpl
        .render_within(
            n,
            sample::BLOCK,
            u32::MAX as usize,
            limit.saturating_sub(n.saturating_mul(16)),
            |v, row| cols[v].bytes(row),
        )
        .map_err(|e| render_error(e, &tpl, &cols, n, limit))?;
    Ok(rendered_column(blocks, n))
}

/// The column of each placeholder of `tpl`, in its order, each `n` rows long.
fn placeholder_columns(
    tpl: &Template,
    names: &[String],
    columns: Vec<Vec<ArrayRef>>,
    n: usize,
) -> Result<Vec<StrCol>, Error> {
    let mut given: Vec<Option<StrCol>> = names.iter().map(|_| None).collect();
    for (k, c) in columns.into_iter().enumerate() {
        given[k] = Some(StrCol::new(&names[k], c, false)?);
    }
    let mut cols = Vec::with_capacity(tpl.names.len());
    for name in &tpl.names {
        let Some(k) = names.iter().position(|x| x == name) else {
            return Err(Error::Value(format!(
                "template placeholder '{{{name}}}' has no column in values (columns: {})",
                names.join(", ")
            )));
        };
        let col = given[k]
            .take()
            .ok_or_else(|| Error::Value(format!("column '{name}' given twice")))?;
        if col.len != n {
            return Err(Error::Value(format!(
                "column '{name}' has {} rows, expected {n}",
                col.len
            )));
        }
        cols.push(col);
    }
    Ok(cols)
}

/// The error a failed render shows (`limit`: this machine's memory).
fn render_error(e: RenderError, tpl: &Template, cols: &[StrCol], n: usize, limit: usize) -> Error {
    match e {
        RenderError::Null { row, var } => Error::Value(format!(
            "row {row}: placeholder '{}' is null",
            tpl.names[var]
        )),
        RenderError::InvalidUtf8 { row, var, at } => cols[var].utf8_error(row, at),
        RenderError::BlockTooLarge { lo, hi, bytes } => Error::Value(format!(
            "rows {lo}..{hi} render to {bytes} bytes; one block of rendered rows holds at \
             most 4 GiB (render fewer or shorter rows at a time)"
        )),
        RenderError::TotalTooLarge { bytes } => Error::Value(format!(
            "rendering {n} rows would need {:.1} GiB, more than this machine's {:.1} GiB of memory",
            gib(bytes),
            gib(limit)
        )),
    }
}

/// One Utf8View array of `n` rows over rendered blocks (their data become its buffers).
fn rendered_column(blocks: Vec<Block>, n: usize) -> ArrayRef {
    let mut views = Vec::with_capacity(n);
    let mut buffers = Vec::with_capacity(blocks.len());
    for (offsets, data) in blocks {
        let bi = buffers.len() as u32;
        for w in offsets.windows(2) {
            let (s, e) = (w[0] as usize, w[1] as usize);
            views.push(make_view(&data[s..e], bi, s as u32));
        }
        buffers.push(Buffer::from_vec(data));
    }
    // SAFETY: views follow the Utf8View layout over valid UTF-8 rendered text.
    unsafe { view_array(views, buffers, None) }
}
