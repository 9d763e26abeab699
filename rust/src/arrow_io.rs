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
    Array, ArrayRef, BinaryArray, BinaryViewArray, GenericByteViewArray, GenericStringArray,
    Int64Array, LargeBinaryArray, LargeStringArray, OffsetSizeTrait, RecordBatch,
    RecordBatchOptions, StringArray, StringViewArray,
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
    /// The chunks downcast once, so a row read is an index, not a downcast.
    typed: Vec<StrChunk>,
    starts: Vec<usize>,
    len: usize,
    name: String,
}

/// One chunk of a [`StrCol`] as its concrete array (clones share the buffers).
enum StrChunk {
    Utf8View(StringViewArray),
    Utf8(StringArray),
    LargeUtf8(LargeStringArray),
    BinaryView(BinaryViewArray),
    Binary(BinaryArray),
    LargeBinary(LargeBinaryArray),
    Null,
}

impl StrChunk {
    fn of(c: &ArrayRef) -> StrChunk {
        match c.data_type() {
            DataType::Utf8View => StrChunk::Utf8View(c.as_string_view().clone()),
            DataType::Utf8 => StrChunk::Utf8(c.as_string::<i32>().clone()),
            DataType::LargeUtf8 => StrChunk::LargeUtf8(c.as_string::<i64>().clone()),
            DataType::BinaryView => StrChunk::BinaryView(c.as_binary_view().clone()),
            DataType::Binary => StrChunk::Binary(c.as_binary::<i32>().clone()),
            DataType::LargeBinary => StrChunk::LargeBinary(c.as_binary::<i64>().clone()),
            _ => StrChunk::Null, // the constructor admits only these and Null
        }
    }

    #[inline]
    fn bytes(&self, i: usize) -> Option<&[u8]> {
        fn valid<A: Array>(a: &A, i: usize) -> Option<()> {
            a.nulls().is_none_or(|n| n.is_valid(i)).then_some(())
        }
        match self {
            StrChunk::Utf8View(a) => valid(a, i).map(|_| view_bytes(a, i)),
            StrChunk::Utf8(a) => valid(a, i).map(|_| offset_bytes(a, i)),
            StrChunk::LargeUtf8(a) => valid(a, i).map(|_| offset_bytes(a, i)),
            StrChunk::BinaryView(a) => valid(a, i).map(|_| a.value(i)),
            StrChunk::Binary(a) => valid(a, i).map(|_| a.value(i)),
            StrChunk::LargeBinary(a) => valid(a, i).map(|_| a.value(i)),
            StrChunk::Null => None,
        }
    }
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
            typed: chunks.iter().map(StrChunk::of).collect(),
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
        self.typed[k].bytes(i)
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
    /// Per chunk its values (None: a chunk of the Null type).
    chunks: Vec<Option<Int64Array>>,
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
            chunks: chunks
                .iter()
                .map(|c| c.as_primitive_opt::<Int64Type>().cloned())
                .collect(),
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
        let c = self.chunks[k].as_ref()?;
        if c.is_null(i) {
            return None;
        }
        Some(c.value(i).clamp(0, u32::MAX as i64) as u32)
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{
        BinaryArray, BinaryViewArray, Int32Array, LargeBinaryArray, LargeStringArray, NullArray,
        StringArray,
    };

    /// A Utf8 array that may hold bytes that are not UTF-8 (as data from outside may).
    fn utf8_raw(values: &[Option<&[u8]>]) -> ArrayRef {
        let (offsets, data, nulls) = BinaryArray::from(values.to_vec()).into_parts();
        // SAFETY: not UTF-8 on purpose; the readers here never assume it.
        Arc::new(unsafe { StringArray::new_unchecked(offsets, data, nulls) })
    }

    fn large_utf8_raw(values: &[Option<&[u8]>]) -> ArrayRef {
        let (offsets, data, nulls) = LargeBinaryArray::from(values.to_vec()).into_parts();
        // SAFETY: as in utf8_raw.
        Arc::new(unsafe { LargeStringArray::new_unchecked(offsets, data, nulls) })
    }

    fn view_raw(values: &[Option<&[u8]>]) -> ArrayRef {
        // SAFETY: as in utf8_raw.
        Arc::new(unsafe { BinaryViewArray::from(values.to_vec()).to_string_view_unchecked() })
    }

    fn utf8(values: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringArray::from(values.to_vec()))
    }

    fn view(values: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringViewArray::from(values.to_vec()))
    }

    fn all_str(c: &StrCol) -> Vec<Option<String>> {
        (0..c.len())
            .map(|r| c.str(r).expect("UTF-8").map(str::to_string))
            .collect()
    }

    /// The values of a Utf8View array, after checking its layout in full.
    fn view_values(a: &ArrayRef) -> Vec<Option<String>> {
        a.to_data().validate_full().expect("a valid Utf8View array");
        let v = a.as_string_view();
        (0..v.len())
            .map(|i| v.is_valid(i).then(|| v.value(i).to_string()))
            .collect()
    }

    const LONG: &str = "a value longer than twelve bytes";

    #[test]
    fn strings_of_every_layout_read_by_global_row() {
        let chunks: Vec<ArrayRef> = vec![
            utf8(&[Some("a"), None, Some(LONG)]),
            utf8(&[]),
            Arc::new(LargeStringArray::from(vec![Some("large"), Some("")])),
            view(&[Some("short"), Some(LONG), None, Some("twelve bytes")]),
            Arc::new(NullArray::new(2)),
            view(&[]),
            utf8(&[Some("last")]),
        ];
        let c = StrCol::new("doc", chunks, false).unwrap();
        assert_eq!((c.len(), c.name(), c.is_empty()), (12, "doc", false));
        let want: Vec<Option<String>> = [
            Some("a"),
            None,
            Some(LONG),
            Some("large"),
            Some(""),
            Some("short"),
            Some(LONG),
            None,
            Some("twelve bytes"),
            None,
            None,
            Some("last"),
        ]
        .iter()
        .map(|s| s.map(str::to_string))
        .collect();
        assert_eq!(all_str(&c), want);
        assert_eq!(c.bytes(11), Some(&b"last"[..]));
        assert_eq!(c.bytes(9), None, "a row of the Null chunk");
        // Chunk starts: empty chunks start where the next one does.
        assert_eq!(
            (0..7).map(|k| c.chunk_start(k)).collect::<Vec<_>>(),
            [0, 3, 3, 5, 9, 11, 11]
        );
    }

    #[test]
    fn no_chunks_and_empty_chunks_are_zero_rows() {
        let c = StrCol::new("x", vec![], false).unwrap();
        assert!(c.is_empty() && c.chunks().is_empty());
        let c = StrCol::new("x", vec![utf8(&[]), view(&[])], false).unwrap();
        assert_eq!(c.len(), 0);
        let i = IntCol::new("n", vec![]).unwrap();
        assert!(i.is_empty());
    }

    #[test]
    fn binary_only_where_allowed_and_other_types_never() {
        let bin: Vec<ArrayRef> = vec![
            Arc::new(BinaryArray::from(vec![Some(&b"bin"[..]), None])),
            Arc::new(LargeBinaryArray::from(vec![Some(&b"large"[..])])),
            Arc::new(BinaryViewArray::from(vec![Some(LONG.as_bytes())])),
        ];
        let c = StrCol::new("texts", bin.clone(), true).unwrap();
        assert_eq!(
            all_str(&c),
            [Some("bin"), None, Some("large"), Some(LONG)].map(|s| s.map(str::to_string))
        );
        let e = StrCol::new("names", bin, false).err().unwrap();
        assert_eq!(e.kind(), ErrorKind::Type);
        assert_eq!(
            e.to_string(),
            "column 'names' must hold strings, got Arrow type Binary"
        );
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![1]));
        let e = StrCol::new("t", vec![utf8(&[Some("ok")]), ints], true)
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "column 't' must hold strings, got Arrow type Int64"
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_name_column_row_and_byte() {
        let bad: &[u8] = b"ok\xff\xfe";
        let long_bad: &[u8] = b"fourteen bytes\xc3(";
        let c = StrCol::new(
            "doc",
            vec![
                utf8_raw(&[Some(b"fine"), Some(bad)]),
                large_utf8_raw(&[None, Some(bad)]),
                view_raw(&[Some(long_bad), Some(bad)]),
                Arc::new(BinaryArray::from(vec![Some(bad)])),
            ],
            true,
        )
        .unwrap();
        let got: Vec<_> = (0..c.len()).map(|r| c.str(r)).collect();
        assert_eq!(
            got,
            [
                Ok(Some("fine")),
                Err(2),
                Ok(None),
                Err(2),
                Err(14),
                Err(2),
                Err(2)
            ]
        );
        // Bytes are handed on as they are.
        assert_eq!(c.bytes(4), Some(long_bad));
        let e = c.utf8_error(4, 14);
        assert_eq!(e.kind(), ErrorKind::Value);
        assert_eq!(
            e.to_string(),
            "column 'doc' row 4: invalid UTF-8 at byte 14"
        );
    }

    #[test]
    fn int_columns_clamp_and_keep_nulls() {
        let chunks: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![Some(5), None, Some(-3)])),
            Arc::new(NullArray::new(1)),
            Arc::new(Int64Array::from(vec![i64::MAX, 0])),
        ];
        let c = IntCol::new("gate_min_words[q]", chunks).unwrap();
        let got: Vec<_> = (0..c.len()).map(|r| c.get(r)).collect();
        assert_eq!(got, [Some(5), None, Some(0), None, Some(u32::MAX), Some(0)]);
        let e = IntCol::new("n", vec![Arc::new(Int32Array::from(vec![1]))])
            .err()
            .unwrap();
        assert_eq!(e.kind(), ErrorKind::Type);
        assert_eq!(
            e.to_string(),
            "column 'n' must hold Int64, got Arrow type Int32"
        );
    }

    #[test]
    fn views_inline_short_values_and_point_at_long_ones() {
        let data = b"0123456789abcdefXYZ";
        let short = make_view(b"hi", 7, 9);
        assert_eq!(short as u32, 2);
        assert_eq!(&short.to_le_bytes()[4..6], b"hi");
        assert_eq!(short >> 48, 0, "nothing but the bytes inline");
        let v = make_view(&data[3..16], 1, 3);
        assert_eq!(v as u32, 13);
        assert_eq!(((v >> 32) as u32).to_le_bytes(), *b"3456");
        assert_eq!(((v >> 64) as u32, (v >> 96) as u32), (1, 3));
    }

    #[test]
    fn str_buf_builds_valid_views_own_and_foreign() {
        let input = StringViewArray::from(vec![format!("prefix {LONG} suffix")]);
        let text = input.value(0);
        let mut b = StrBuf::with_foreign(input.data_buffers().to_vec()).reserve(64);
        assert!(b.is_empty());
        b.push(Some("short"));
        b.push(None);
        b.push(Some(LONG));
        b.push(Some(""));
        let view = input.views()[0];
        let (buf, off) = ((view >> 64) as u32, (view >> 96) as u32);
        b.push_foreign(&text[7..7 + LONG.len()], buf, off + 7);
        b.push(Some("twelve bytes"));
        assert_eq!(b.len(), 6);
        let a = b.finish();
        assert_eq!(
            view_values(&a),
            [
                Some("short"),
                None,
                Some(LONG),
                Some(""),
                Some(LONG),
                Some("twelve bytes")
            ]
            .map(|s| s.map(str::to_string))
        );
        assert_eq!(a.null_count(), 1);
        // The foreign value was not copied: its view points into the input's buffer.
        let out = a.as_string_view();
        assert_eq!(
            out.data_buffers()[0].as_ptr(),
            input.data_buffers()[0].as_ptr()
        );
        assert_eq!((out.views()[4] >> 64) as u32, buf);
        // Without nulls, no null buffer at all.
        let mut b = StrBuf::default();
        b.push(Some(LONG));
        assert!(b.finish().nulls().is_none());
        assert_eq!(view_values(&StrBuf::default().finish()), []);
    }

    #[test]
    fn memory_checks_name_the_work() {
        assert_eq!(check_fits_in(Some(10), 10, || unreachable!()), Ok(()));
        let e = check_fits_in(Some(3 << 30), 2 << 30, || "drawing n=9".to_string()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "drawing n=9 would need 3.0 GiB, more than this machine's 2.0 GiB of memory"
        );
        let e = check_fits_in(None, 1 << 30, || "x".to_string()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "x would need more bytes than an address space holds, more than this machine's 1.0 GiB of memory"
        );
        assert_eq!(e.kind(), ErrorKind::Value);
        assert!(check_fits(None, || "x".to_string()).is_err());
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn dedup_over_chunked_columns_keeps_first_occurrences() {
        let cols = dedup_columns(
            &names(&["q", "d"]),
            vec![
                vec![
                    utf8(&[Some("a"), Some("b")]),
                    view(&[Some("a"), Some(LONG)]),
                ],
                vec![view(&[Some("x"), None, Some("x")]), utf8(&[Some("y")])],
            ],
        )
        .unwrap();
        let mut d = Dedup::new(false);
        assert_eq!(
            dedup_insert(&mut d, &cols).unwrap(),
            [None, None, Some(0), None]
        );
        // State persists: the next batch's rows have global indices from 4 on.
        let again = dedup_columns(
            &names(&["q", "d"]),
            vec![
                vec![utf8(&[Some(LONG), Some("b")])],
                vec![utf8(&[Some("y"), None])],
            ],
        )
        .unwrap();
        assert_eq!(dedup_insert(&mut d, &again).unwrap(), [Some(3), Some(1)]);
        assert_eq!((d.seen, d.unique()), (6, 3));
    }

    #[test]
    fn dedup_refuses_a_batch_with_bad_bytes_whole() {
        let mut d = Dedup::new(true);
        let cols = dedup_columns(
            &names(&["a", "b"]),
            vec![
                vec![utf8(&[Some("x"), Some("y"), Some("z")])],
                vec![utf8_raw(&[Some(b"ok"), Some(b"\xff"), Some(b"z\xfe")])],
            ],
        )
        .unwrap();
        let e = dedup_insert(&mut d, &cols).unwrap_err();
        assert_eq!(e.to_string(), "column 'b' row 1: invalid UTF-8 at byte 0");
        assert_eq!((d.seen, d.unique()), (0, 0), "nothing inserted");
        // Zero rows insert nothing and say so.
        let empty = dedup_columns(&names(&["a"]), vec![vec![]]).unwrap();
        assert_eq!(dedup_insert(&mut d, &empty).unwrap(), []);
    }

    #[test]
    fn dedup_inputs_that_do_not_fit_are_errors() {
        let e = dedup_columns(&names(&["a"]), vec![]).err().unwrap();
        assert_eq!(
            e.to_string(),
            "need one name per column and at least one column"
        );
        assert!(dedup_columns(&[], vec![]).is_err());
        let e = dedup_columns(
            &names(&["a", "b"]),
            vec![vec![utf8(&[Some("x")])], vec![utf8(&[Some("x"), None])]],
        )
        .err()
        .unwrap();
        assert_eq!(e.to_string(), "column 'b' has 2 rows, expected 1");
        let e = dedup_columns(
            &names(&["a"]),
            vec![vec![Arc::new(BinaryArray::from(vec![Some(&b"x"[..])]))]],
        )
        .err()
        .unwrap();
        assert_eq!(e.kind(), ErrorKind::Type);
    }

    #[test]
    fn sampled_columns_hold_the_drawn_values() {
        let vals = vec![
            vec!["x".to_string(), LONG.to_string()],
            vec!["only".to_string()],
        ];
        let w = vec![vec![1.0, 1.0], vec![2.0]];
        let b = sample_placeholders(&names(&["a", "b"]), &vals, &w, 5000, 7).unwrap();
        assert_eq!((b.num_rows(), b.num_columns()), (5000, 2));
        assert_eq!(b.schema().field(0).name(), "a");
        assert_eq!(b.schema().field(0).data_type(), &DataType::Utf8View);
        let a = view_values(b.column(0));
        let longs = a.iter().filter(|v| v.as_deref() == Some(LONG)).count();
        assert_eq!(
            a.iter().filter(|v| v.as_deref() == Some("x")).count() + longs,
            5000
        );
        assert!(
            (2000..3000).contains(&longs),
            "{longs} of 5000 at weight 1/2"
        );
        assert!(view_values(b.column(1))
            .iter()
            .all(|v| v.as_deref() == Some("only")));
        // The same seed draws the same rows; long values are stored once.
        let again = sample_placeholders(&names(&["a", "b"]), &vals, &w, 5000, 7).unwrap();
        assert_eq!(view_values(again.column(0)), a);
        assert_eq!(
            b.column(0).as_string_view().data_buffers()[0].len(),
            LONG.len()
        );
        // Zero rows, or no placeholders at all, still give a batch of the right shape.
        let none = sample_placeholders(&names(&["a", "b"]), &vals, &w, 0, 7).unwrap();
        assert_eq!((none.num_rows(), none.num_columns()), (0, 2));
        let empty = sample_placeholders(&[], &[], &[], 3, 7).unwrap();
        assert_eq!((empty.num_rows(), empty.num_columns()), (3, 0));
    }

    #[test]
    fn sample_errors_name_the_placeholder() {
        let err = |names_: &[&str], vals: Vec<Vec<String>>, w: Vec<Vec<f64>>| {
            sample_placeholders(&names(names_), &vals, &w, 3, 1)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(&["a"], vec![], vec![]),
            "names, values and weights must have the same length"
        );
        assert_eq!(
            err(&["l"], vec![vec!["v".into()]], vec![vec![1.0, 2.0]]),
            "placeholder 'l': 1 values but 2 weights"
        );
        assert!(err(&["l"], vec![vec![]], vec![vec![]]).starts_with("placeholder 'l': "));
        let e = sample_placeholders(
            &names(&["a"]),
            &[vec!["v".into()]],
            &[vec![1.0]],
            usize::MAX,
            1,
        )
        .unwrap_err();
        assert!(e.to_string().starts_with(&format!(
            "drawing n={} rows of 1 placeholder(s) would need",
            usize::MAX
        )));
    }

    #[test]
    fn render_fills_placeholders_from_chunked_columns() {
        let cols = vec![
            vec![utf8(&[Some("x")]), view(&[Some(LONG), Some("z")])],
            vec![view(&[Some("1"), Some("2"), Some("3")])],
        ];
        let a = render("<{a}|{b}> {{lit}}", &names(&["a", "b"]), cols, 3).unwrap();
        assert_eq!(
            view_values(&a),
            [
                Some("<x|1> {lit}".to_string()),
                Some(format!("<{LONG}|2> {{lit}}")),
                Some("<z|3> {lit}".to_string())
            ]
        );
        // Columns the template does not use are allowed; zero rows render to nothing.
        let a = render("{b}", &names(&["a", "b"]), vec![vec![], vec![]], 0).unwrap();
        assert_eq!(a.len(), 0);
        let a = render("no placeholders", &[], vec![], 2).unwrap();
        assert_eq!(
            view_values(&a),
            [
                Some("no placeholders".to_string()),
                Some("no placeholders".to_string())
            ]
        );
    }

    #[test]
    fn render_errors_say_which_row_and_placeholder() {
        let err = |tpl: &str, n: &[&str], cols: Vec<Vec<ArrayRef>>, rows: usize| {
            render(tpl, &names(n), cols, rows).unwrap_err()
        };
        let e = err("{a}", &["a"], vec![vec![utf8(&[Some("x"), None])]], 2);
        assert_eq!(e.to_string(), "row 1: placeholder 'a' is null");
        let e = err(
            "{a}{b}",
            &["a", "b"],
            vec![
                vec![utf8(&[Some("x"), Some("y")])],
                vec![utf8_raw(&[Some(b"ok"), Some(b"o\xff")])],
            ],
            2,
        );
        assert_eq!(e.to_string(), "column 'b' row 1: invalid UTF-8 at byte 1");
        let e = err("{zz}", &["a"], vec![vec![utf8(&[Some("x")])]], 1);
        assert_eq!(
            e.to_string(),
            "template placeholder '{zz}' has no column in values (columns: a)"
        );
        let e = err("{a}", &["a"], vec![vec![utf8(&[Some("x")])]], 2);
        assert_eq!(e.to_string(), "column 'a' has 1 rows, expected 2");
        let e = err("{a", &["a"], vec![], 0);
        assert_eq!(e.kind(), ErrorKind::Value);
        let e = err(
            "{a}",
            &["a"],
            vec![vec![Arc::new(Int64Array::from(vec![1]))]],
            1,
        );
        assert_eq!(e.kind(), ErrorKind::Type);
    }

    #[test]
    fn render_error_messages_for_sizes() {
        let tpl = Template::parse("{a}").unwrap();
        let big = RenderError::BlockTooLarge {
            lo: 0,
            hi: 4096,
            bytes: 5 << 30,
        };
        assert_eq!(
            render_error(big, &tpl, &[], 4096, 1 << 40).to_string(),
            format!(
                "rows 0..4096 render to {} bytes; one block of rendered rows holds at most 4 GiB \
                 (render fewer or shorter rows at a time)",
                5u64 << 30
            )
        );
        let total = RenderError::TotalTooLarge { bytes: 3 << 30 };
        assert_eq!(
            render_error(total, &tpl, &[], 10, 2 << 30).to_string(),
            "rendering 10 rows would need 3.0 GiB, more than this machine's 2.0 GiB of memory"
        );
    }

    #[test]
    fn error_kinds_follow_the_exception_python_raises() {
        assert_eq!(Error::Runtime("x".into()).kind(), ErrorKind::Runtime);
        assert_eq!(Error::Value("v".into()).to_string(), "v");
        assert_eq!(
            Error::rows_differ("gate_tasks", 1, 2).to_string(),
            "gate_tasks has 1 rows but texts has 2"
        );
        let e: Error = arrow_schema::ArrowError::InvalidArgumentError("bad".into()).into();
        assert_eq!(e.kind(), ErrorKind::Runtime);
        assert_eq!(index_array(vec![None, Some(3)]).null_count(), 1);
    }
}
