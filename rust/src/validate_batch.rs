//! Validation of whole Arrow batches: the row loop behind `Validator.validate`, with
//! exact dedup and the quality gate fused into the same pass, and the output columns it
//! builds. Rows are cut into blocks validated in parallel; each block writes one output
//! chunk: ok, reason, field, message, extracted, then json, the unpacked string fields
//! and keep + duplicate_of where asked for.
//!
//! The steps: [`Batch::new`] checks the inputs and plans the per-task-type maps,
//! [`Batch::run`] validates every row (no Python involved, so it runs without the GIL),
//! [`Validated::into_batches`] inserts the fused dedup hashes and builds the batches.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, RecordBatch, StringViewArray};
use arrow_buffer::Buffer;
use arrow_schema::{DataType, Field, Schema as ArrowSchema, SchemaRef};
use rayon::prelude::*;

use crate::arrow_io::{bool_array, index_array, Error, IntCol, StrBuf, StrCol};
use crate::dedup::{row_hash, Dedup};
use crate::quality::{self, FieldPlan, GateScratch, Languages, QualityConfig, RowCtx, TypePlan};
use crate::validate::{validate_row, Reason, Rejection, Schema, SchemaSet, Scratch, Sink};

// ---------------------------------------------------------------- schemas and gate

/// Task-type schemas compiled once; validate many batches with them.
pub struct Validator {
    set: SchemaSet,
    names: Vec<String>,
}

impl Validator {
    /// `schemas`: (task type, JSON Schema as JSON text). Errors name the bad schema.
    pub fn new(schemas: &[(String, String)]) -> Result<Validator, String> {
        Ok(Validator {
            set: SchemaSet::compile(schemas)?,
            names: schemas.iter().map(|s| s.0.clone()).collect(),
        })
    }

    /// The task types, in the order given.
    pub fn task_types(&self) -> &[String] {
        &self.names
    }

    /// The string fields `unpack` adds as columns (all task types, first-seen order).
    pub fn unpack_columns(&self) -> &[String] {
        &self.set.unpack_columns
    }

    /// Per task type with a schema: `map(schema)`.
    fn by_type(&self, map: impl Fn(&Schema) -> Vec<usize>) -> Vec<(String, Vec<usize>)> {
        self.names
            .iter()
            .filter_map(|t| self.set.get(t).map(|s| (t.clone(), map(s))))
            .collect()
    }
}

/// Where each of `items` sits in `within` (usize::MAX: nowhere).
fn positions(items: &[String], within: &[String]) -> Vec<usize> {
    items
        .iter()
        .map(|x| within.iter().position(|w| w == x).unwrap_or(usize::MAX))
        .collect()
}

/// A task type as the gate takes it: (name, prompt template, [(field, language part or
/// -1)]).
pub type TypeSpec = (String, String, Vec<(String, i64)>);

/// The gate's plan for one task type: `plan.fields[k]` belongs to `fields[k]`.
#[derive(Clone, Debug)]
struct TypeGate {
    task: String,
    fields: Vec<String>,
    plan: TypePlan,
}

/// Checks and per-task-type plans of the quality gate (crate::quality).
pub struct Gate {
    cfg: QualityConfig,
    types: Vec<TypeGate>,
    languages: Languages,
}

impl Gate {
    /// `checks`: (name, threshold; NaN = default) of the checks to run. `types`: per task
    /// type (name, prompt template, [(field, language part or -1)]). `language_codes`:
    /// (language name as requests give it, ISO 639-1 code), which lets wrong_language
    /// read function words before asking whatlang. Errors name the bad check.
    pub fn new(
        checks: &[(String, f64)],
        types: Vec<TypeSpec>,
        language_codes: Vec<(String, String)>,
    ) -> Result<Gate, String> {
        let cfg = QualityConfig::from_pairs(checks)?;
        let types = types
            .into_iter()
            .map(|(task, template, fields)| {
                let plans = fields
                    .iter()
                    .map(|f| FieldPlan {
                        lang_part: usize::try_from(f.1).ok(),
                    })
                    .collect();
                TypeGate {
                    plan: TypePlan::new(&template, plans, &cfg),
                    fields: fields.into_iter().map(|f| f.0).collect(),
                    task,
                }
            })
            .collect();
        Ok(Gate {
            cfg,
            types,
            languages: Languages::new(language_codes),
        })
    }

    /// The checks that run, with their thresholds.
    pub fn checks(&self) -> Vec<(&'static str, f64)> {
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

    /// The plans of the task types `set` has, their fields in the order of each schema's
    /// string properties (the order of the values the validator hands on).
    fn in_schema_order(&self, set: &SchemaSet) -> Vec<TypeGate> {
        self.types
            .iter()
            .filter_map(|t| {
                let sc = set.get(&t.task)?;
                let fields = sc
                    .string_props
                    .iter()
                    .map(|p| match t.fields.iter().position(|x| x == p) {
                        Some(k) => t.plan.fields[k].clone(),
                        None => FieldPlan { lang_part: None },
                    })
                    .collect();
                Some(TypeGate {
                    task: t.task.clone(),
                    fields: sc.string_props.clone(),
                    plan: TypePlan {
                        fields,
                        template: t.plan.template.clone(),
                    },
                })
            })
            .collect()
    }
}

// ---------------------------------------------------------------- inputs

/// The task type of the rows: one for all, or a column of them.
pub enum TaskTypes {
    One(String),
    PerRow(StrCol),
}

impl TaskTypes {
    /// A column of task types (string chunks) for `texts` rows.
    pub fn column(chunks: Vec<ArrayRef>, texts: usize) -> Result<TaskTypes, Error> {
        let col = StrCol::new("task_types", chunks, false)?;
        if col.len() != texts {
            return Err(Error::rows_differ("task_types", col.len(), texts));
        }
        Ok(TaskTypes::PerRow(col))
    }

    #[inline]
    fn get(&self, row: usize) -> Result<Option<&str>, usize> {
        match self {
            TaskTypes::One(s) => Ok(Some(s)),
            TaskTypes::PerRow(c) => c.str(row),
        }
    }
}

/// The gate's per-row inputs, each as long as the texts: the task definition each row
/// answered, the requested language(s), and per field the words the request asked for.
#[derive(Default)]
pub struct GateColumns {
    tasks: Option<StrCol>,
    languages: Option<StrCol>,
    min_words: Vec<(String, IntCol)>,
}

impl GateColumns {
    /// From Arrow chunks: `tasks` and `languages` strings, `min_words` (field, Int64).
    pub fn new(
        tasks: Option<Vec<ArrayRef>>,
        languages: Option<Vec<ArrayRef>>,
        min_words: Vec<(String, Vec<ArrayRef>)>,
        texts: usize,
    ) -> Result<GateColumns, Error> {
        let tasks = tasks
            .map(|c| StrCol::new("gate_tasks", c, false))
            .transpose()?;
        let languages = languages
            .map(|c| StrCol::new("gate_languages", c, false))
            .transpose()?;
        let min_words = min_words
            .into_iter()
            .map(|(f, c)| {
                let col = IntCol::new(&format!("gate_min_words[{f}]"), c)?;
                Ok((f, col))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let lens = tasks
            .iter()
            .map(|c| ("gate_tasks", c.len()))
            .chain(languages.iter().map(|c| ("gate_languages", c.len())))
            .chain(min_words.iter().map(|(_, c)| ("gate_min_words", c.len())));
        for (name, len) in lens {
            if len != texts {
                return Err(Error::rows_differ(name, len, texts));
            }
        }
        Ok(GateColumns {
            tasks,
            languages,
            min_words,
        })
    }
}

/// What `validate` builds besides the verdicts.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Find the JSON object inside prose or a code fence when the text is not one.
    pub extract: bool,
    /// One column per string field of the task type(s).
    pub unpack: bool,
    /// The compact JSON of accepted rows.
    pub json: bool,
    /// Fused dedup: the deduplicator's casefold when one is given (then `dedup_fields`
    /// too), else None.
    pub dedup: Option<bool>,
    pub dedup_fields: Option<Vec<String>>,
}

/// Fused dedup: per task type, where each dedup field sits among its string values.
struct DedupPlan {
    casefold: bool,
    maps: Vec<(String, Vec<usize>)>,
}

// ---------------------------------------------------------------- the batch

/// A checked and planned validation of one batch.
pub struct Batch<'a> {
    validator: &'a Validator,
    texts: StrCol,
    tasks: TaskTypes,
    extract: bool,
    json: bool,
    unpack: bool,
    /// The unpack columns: one task type's string fields, or for a column of task types
    /// the union.
    unpack_names: Vec<String>,
    /// Per task type: which unpack column each of its string values goes to.
    colmaps: Vec<(String, Vec<usize>)>,
    dedup: Option<DedupPlan>,
    gate: Option<&'a Gate>,
    gate_types: Vec<TypeGate>,
    gate_cols: GateColumns,
}

impl<'a> Batch<'a> {
    /// Check the inputs that go together and plan the per-task-type maps. `texts`: the
    /// rows (strings or binary); `gate_cols` as long as `texts` (see [`GateColumns::new`]).
    pub fn new(
        validator: &'a Validator,
        texts: StrCol,
        tasks: TaskTypes,
        opts: Options,
        gate: Option<&'a Gate>,
        gate_cols: GateColumns,
    ) -> Result<Batch<'a>, Error> {
        let set = &validator.set;
        let unpack_names: Vec<String> = match &tasks {
            TaskTypes::One(t) => set
                .get(t)
                .map(|s| s.string_props.clone())
                .unwrap_or_default(),
            TaskTypes::PerRow(_) => set.unpack_columns.clone(),
        };
        let dedup = plan_dedup(validator, &tasks, opts.dedup, opts.dedup_fields)?;
        let colmaps = validator.by_type(|s| positions(&s.string_props, &unpack_names));
        Ok(Batch {
            validator,
            texts,
            tasks,
            extract: opts.extract,
            json: opts.json,
            unpack: opts.unpack,
            unpack_names,
            colmaps,
            dedup,
            gate,
            gate_types: gate.map(|g| g.in_schema_order(set)).unwrap_or_default(),
            gate_cols,
        })
    }

    /// Validate every row, blocks in parallel.
    pub fn run(&self) -> Validated {
        let sinks = self
            .blocks(block_rows(self.texts.len()))
            .par_iter()
            .map(|&b| BlockRun::new(self, b).run())
            .collect();
        Validated {
            fields: self.output_fields(),
            sinks,
            dedup: self.dedup.is_some(),
        }
    }

    /// Blocks of at most `rows` rows. They never straddle two input chunks, so a block's
    /// unpacked values can point into its chunk's view buffers.
    fn blocks(&self, rows: usize) -> Vec<Block> {
        let mut blocks = Vec::new();
        for (k, c) in self.texts.chunks().iter().enumerate() {
            let start = self.texts.chunk_start(k);
            let mut lo = 0;
            while lo < c.len() {
                let hi = (lo + rows).min(c.len());
                blocks.push(Block {
                    chunk: k,
                    lo: start + lo,
                    hi: start + hi,
                });
                lo = hi;
            }
        }
        blocks
    }

    /// The output columns but keep and duplicate_of.
    fn output_fields(&self) -> Vec<Field> {
        let mut fields = vec![
            Field::new("ok", DataType::Boolean, false),
            Field::new("reason", DataType::Utf8View, true),
            Field::new("field", DataType::Utf8View, true),
            Field::new("message", DataType::Utf8View, true),
            Field::new("extracted", DataType::Boolean, false),
        ];
        if self.json {
            fields.push(Field::new("json", DataType::Utf8View, true));
        }
        if self.unpack {
            for c in &self.unpack_names {
                fields.push(Field::new(c, DataType::Utf8View, true));
            }
        }
        fields
    }

    /// The row's task type, and the gate's task definition and language. A value that is
    /// not UTF-8 rejects the row, naming the first such column.
    fn row_keys(&self, row: usize) -> Result<RowKeys<'_>, Rejection> {
        fn str_at(c: &Option<StrCol>, row: usize) -> Result<Option<&str>, usize> {
            c.as_ref().map_or(Ok(None), |c| c.str(row))
        }
        match (
            self.tasks.get(row),
            str_at(&self.gate_cols.tasks, row),
            str_at(&self.gate_cols.languages, row),
        ) {
            (Ok(task), Ok(gate_task), Ok(gate_language)) => Ok(RowKeys {
                task,
                gate_task,
                gate_language,
            }),
            (t, g, l) => {
                let (at, column) = [
                    (t.err(), "task_types"),
                    (g.err(), "gate_tasks"),
                    (l.err(), "gate_languages"),
                ]
                .into_iter()
                .find_map(|(e, c)| Some((e?, c)))
                .expect("one of them failed");
                Err(Rejection::invalid_utf8(at, Some(column)))
            }
        }
    }
}

/// A row's task type, and the gate's task definition and requested language(s).
struct RowKeys<'a> {
    task: Option<&'a str>,
    gate_task: Option<&'a str>,
    gate_language: Option<&'a str>,
}

/// Fused dedup's plan, when a deduplicator is given (`casefold`) with `fields`.
fn plan_dedup(
    v: &Validator,
    tasks: &TaskTypes,
    casefold: Option<bool>,
    fields: Option<Vec<String>>,
) -> Result<Option<DedupPlan>, Error> {
    let (casefold, fields) = match (casefold, fields) {
        (None, None) => return Ok(None),
        (Some(c), Some(f)) if !f.is_empty() => (c, f),
        _ => {
            return Err(Error::Value(
                "dedup and dedup_fields go together (at least one field)".to_string(),
            ))
        }
    };
    // (An unknown single task type rejects every row: nothing to check.)
    let known: Option<&[String]> = match tasks {
        TaskTypes::One(t) => v.set.get(t).map(|s| s.string_props.as_slice()),
        TaskTypes::PerRow(_) => Some(&v.set.unpack_columns),
    };
    if let Some(known) = known {
        if let Some(f) = fields.iter().find(|f| !known.contains(f)) {
            return Err(Error::Value(format!(
                "dedup field '{f}' is not a string field of the task type(s) \
                 (string fields: {known:?})"
            )));
        }
    }
    Ok(Some(DedupPlan {
        casefold,
        maps: v.by_type(|s| positions(&fields, &s.string_props)),
    }))
}

/// Rows per parallel block: enough blocks for load balance, few output chunks.
fn block_rows(n: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    n.div_ceil(threads * 8).clamp(2048, 8192)
}

/// Global rows `lo..hi`, all in input chunk `chunk`.
#[derive(Clone, Copy, Debug)]
struct Block {
    chunk: usize,
    lo: usize,
    hi: usize,
}

// ---------------------------------------------------------------- one block

/// One block's pass over its rows.
struct BlockRun<'a> {
    batch: &'a Batch<'a>,
    block: Block,
    /// The block's chunk as a string view array, if it is one (long values are then
    /// shared, not copied), and the chunk's first global row.
    views: Option<&'a StringViewArray>,
    chunk_start: usize,
    sink: ChunkSink,
    scratch: Scratch,
    gate_scratch: GateScratch,
    /// The task type whose unpack and dedup maps the sink holds.
    last_task: Option<String>,
    gate: GateRow<'a>,
}

/// The gate's inputs for the current row, kept across rows of one task type.
#[derive(Default)]
struct GateRow<'a> {
    last_task: Option<String>,
    plan: Option<&'a TypeGate>,
    /// Per field of the row's schema: the column of its minimum words.
    min_cols: Vec<Option<usize>>,
    min_words: Vec<Option<u32>>,
}

impl<'a> BlockRun<'a> {
    fn new(batch: &'a Batch<'a>, block: Block) -> Self {
        let chunk = &batch.texts.chunks()[block.chunk];
        let chunk_start = batch.texts.chunk_start(block.chunk);
        let views = (chunk.data_type() == &DataType::Utf8View).then(|| chunk.as_string_view());
        let foreign: Vec<Buffer> = views.map(|v| v.data_buffers().to_vec()).unwrap_or_default();
        let bytes: usize = views.map_or(0, |v| {
            v.views()[block.lo - chunk_start..block.hi - chunk_start]
                .iter()
                .map(|&w| w as u32 as usize)
                .sum()
        });
        let ncols = batch.unpack.then_some(batch.unpack_names.len());
        let mut sink = ChunkSink::new(batch.json, ncols, &foreign, bytes);
        sink.dedup = batch.dedup.as_ref().map(|d| FusedDedup {
            casefold: d.casefold,
            map: Vec::new(),
            norm: String::new(),
            hashes: Vec::with_capacity(block.hi - block.lo),
        });
        BlockRun {
            batch,
            block,
            views,
            chunk_start,
            sink,
            scratch: Scratch::new(!batch.json),
            gate_scratch: GateScratch::default(),
            last_task: None,
            gate: GateRow::default(),
        }
    }

    fn run(mut self) -> ChunkSink {
        for row in self.block.lo..self.block.hi {
            self.row(row);
        }
        self.sink
    }

    fn row(&mut self, row: usize) {
        let b = self.batch;
        let RowKeys {
            task,
            gate_task,
            gate_language,
        } = match b.row_keys(row) {
            Ok(keys) => keys,
            Err(rej) => return self.sink.reject(rej, false),
        };
        self.follow_task(task);
        if b.gate.is_some() {
            self.gate.follow(b, task, row);
        }
        let text = b.texts.bytes(row);
        self.sink.row = self.row_loc(row, text);
        let ctx = RowCtx {
            task: gate_task,
            language: gate_language,
            languages: b.gate.map(|g| &g.languages),
        };
        self.validate(row, text, task, ctx);
    }

    /// Point the sink's unpack columns and dedup fields at the row's task type.
    fn follow_task(&mut self, task: Option<&str>) {
        let b = self.batch;
        if !(b.unpack || self.sink.dedup.is_some()) || task == self.last_task.as_deref() {
            return;
        }
        let find = |maps: &[(String, Vec<usize>)]| {
            task.and_then(|t| maps.iter().find(|c| c.0 == t))
                .map(|c| c.1.clone())
                .unwrap_or_default()
        };
        self.sink.colmap = find(&b.colmaps);
        if let (Some(d), Some(plan)) = (&mut self.sink.dedup, &b.dedup) {
            d.map = find(&plan.maps);
        }
        self.last_task = task.map(str::to_string);
    }

    /// Where a long text lies in the chunk's view buffers (unpacked values inside it are
    /// then shared, not copied).
    fn row_loc(&self, row: usize, text: Option<&[u8]>) -> Option<RowLoc> {
        match (self.views, text) {
            (Some(v), Some(t)) if t.len() > 12 => {
                let view = v.views()[row - self.chunk_start];
                Some(RowLoc {
                    addr: t.as_ptr() as usize,
                    len: t.len(),
                    buf: (view >> 64) as u32,
                    off: (view >> 96) as u32,
                })
            }
            _ => None,
        }
    }

    /// Validate the row (and gate it when accepted); a panic becomes an internal_error
    /// rejection of this row, with fresh scratch for the next.
    fn validate(&mut self, row: usize, text: Option<&[u8]>, task: Option<&str>, ctx: RowCtx<'_>) {
        let b = self.batch;
        let schema = task.and_then(|t| b.validator.set.get(t));
        let before = self.sink.ok.len();
        let res = catch_unwind(AssertUnwindSafe(|| {
            let mut gated;
            let sink: &mut dyn Sink = match b.gate {
                Some(g) => {
                    gated = GateSink {
                        inner: &mut self.sink,
                        cfg: &g.cfg,
                        plan: self.gate.plan,
                        min_words: &self.gate.min_words,
                        ctx,
                        scratch: &mut self.gate_scratch,
                    };
                    &mut gated
                }
                None => &mut self.sink,
            };
            validate_row(text, schema, task, b.extract, &mut self.scratch, sink)
        }));
        if res.is_err() && self.sink.ok.len() == before {
            self.scratch = Scratch::new(!b.json);
            self.gate_scratch = GateScratch::default();
            self.sink.reject(
                Rejection {
                    reason: Reason::InternalError,
                    field: None,
                    message: format!("internal error while validating row {row}"),
                },
                false,
            );
        }
    }
}

impl<'a> GateRow<'a> {
    /// The plan and minimum words of the row's task type (plan looked up when it changed).
    fn follow(&mut self, b: &'a Batch<'a>, task: Option<&str>, row: usize) {
        let min = &b.gate_cols.min_words;
        if task != self.last_task.as_deref() {
            self.plan = task.and_then(|t| b.gate_types.iter().find(|p| p.task == t));
            self.min_cols = self
                .plan
                .map(|p| {
                    p.fields
                        .iter()
                        .map(|f| min.iter().position(|m| &m.0 == f))
                        .collect()
                })
                .unwrap_or_default();
            self.last_task = task.map(str::to_string);
        }
        self.min_words.clear();
        self.min_words.extend(
            self.min_cols
                .iter()
                .map(|c| c.and_then(|c| min[c].1.get(row))),
        );
    }
}

// ---------------------------------------------------------------- sinks

/// One block's output columns.
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

/// Per-block state of dedup fused into validation.
struct FusedDedup {
    casefold: bool,
    map: Vec<usize>,
    norm: String,
    hashes: Vec<Option<u128>>,
}

impl ChunkSink {
    /// `unpack`: the number of unpack columns, when asked for; `foreign`: the input
    /// chunk's view buffers, `bytes` of text in the block.
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

    /// The block's columns in the order of the output fields; `dups` yields the rows'
    /// duplicate_of (fused dedup), the block's rows taken from it.
    fn into_columns(self, dups: Option<&mut impl Iterator<Item = Option<u64>>>) -> Vec<ArrayRef> {
        let keep_dup = dups.map(|it| {
            let part: Vec<Option<u64>> = it.take(self.ok.len()).collect();
            let keep: Vec<bool> = self
                .ok
                .iter()
                .zip(&part)
                .map(|(&ok, d)| ok && d.is_none())
                .collect();
            [bool_array(keep), index_array(part)]
        });
        let mut cols: Vec<ArrayRef> = vec![
            bool_array(self.ok),
            self.reason.finish(),
            self.field.finish(),
            self.message.finish(),
            bool_array(self.extracted),
        ];
        cols.extend(self.json.map(StrBuf::finish));
        if let Some(u) = self.unpack {
            cols.extend(u.into_iter().map(StrBuf::finish));
        }
        cols.extend(keep_dup.into_iter().flatten());
        cols
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

/// Runs the quality gate on rows the validator accepts, then hands them on.
struct GateSink<'a> {
    inner: &'a mut ChunkSink,
    cfg: &'a QualityConfig,
    plan: Option<&'a TypeGate>,
    min_words: &'a [Option<u32>],
    ctx: RowCtx<'a>,
    scratch: &'a mut GateScratch,
}

impl Sink for GateSink<'_> {
    fn accept(&mut self, json: &str, extracted: bool, values: &[Option<&str>]) {
        if let Some(t) = self.plan {
            if let Some(r) = quality::check_row(
                self.cfg,
                &t.plan,
                &t.fields,
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

// ---------------------------------------------------------------- output

/// The validated blocks of a batch, before fused dedup's inserts.
pub struct Validated {
    fields: Vec<Field>,
    sinks: Vec<ChunkSink>,
    /// Whether the batch was planned with fused dedup.
    dedup: bool,
}

impl Validated {
    /// Insert the accepted rows' hashes into `dedup` in row order (every row counts as
    /// seen) when the batch fuses dedup, then build one record batch per block. `dedup`
    /// must be given exactly when the batch was planned with it.
    pub fn into_batches(
        mut self,
        dedup: Option<&mut Dedup>,
    ) -> Result<(SchemaRef, Vec<RecordBatch>), Error> {
        let dups = match (self.dedup, dedup) {
            (false, None) => None,
            (true, Some(d)) => {
                let hashes: Vec<Option<u128>> = self
                    .sinks
                    .iter_mut()
                    .flat_map(|s| s.dedup.take().map(|d| d.hashes).unwrap_or_default())
                    .collect();
                Some(d.insert_opt(&hashes))
            }
            (true, None) => {
                return Err(Error::Runtime(
                    "validate: the batch fuses dedup but no deduplicator was given".to_string(),
                ))
            }
            (false, Some(_)) => {
                return Err(Error::Runtime(
                    "validate: a deduplicator was given to a batch planned without dedup"
                        .to_string(),
                ))
            }
        };
        let mut fields = self.fields;
        if dups.is_some() {
            fields.push(Field::new("keep", DataType::Boolean, false));
            fields.push(Field::new("duplicate_of", DataType::Int64, true));
        }
        let schema = Arc::new(ArrowSchema::new(fields));
        let mut dups = dups.map(Vec::into_iter);
        let mut batches = Vec::with_capacity(self.sinks.len());
        for s in self.sinks {
            let cols = s.into_columns(dups.as_mut());
            batches.push(RecordBatch::try_new(schema.clone(), cols)?);
        }
        Ok((schema, batches))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{BinaryArray, Int64Array, StringArray};

    const TINY: &str = r#"{"type": "object", "properties": {
        "q": {"type": "string", "minLength": 1, "maxLength": 6},
        "a/b": {"type": "string", "minLength": 3},
        "opt": {"type": "string"}},
        "required": ["q", "a/b"], "additionalProperties": false}"#;
    const MOOD: &str = r#"{"type": "object", "properties": {
        "m": {"type": "string", "enum": ["happy", "sad"]},
        "t": {"type": "string", "minLength": 1}},
        "required": ["m", "t"], "additionalProperties": false}"#;
    const GOOD: &str = r#"{"q": "ab", "a/b": "abc"}"#;
    const LONG: &str = "a value longer than twelve bytes";

    fn validator() -> Validator {
        Validator::new(&[
            ("tiny".to_string(), TINY.to_string()),
            ("mood".to_string(), MOOD.to_string()),
        ])
        .unwrap()
    }

    fn utf8(values: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringArray::from(values.to_vec()))
    }

    fn view(values: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringViewArray::from(values.to_vec()))
    }

    fn texts(chunks: Vec<ArrayRef>) -> StrCol {
        StrCol::new("texts", chunks, true).unwrap()
    }

    fn one(task: &str) -> TaskTypes {
        TaskTypes::One(task.to_string())
    }

    fn opts(json: bool, unpack: bool) -> Options {
        Options {
            json,
            unpack,
            ..Options::default()
        }
    }

    /// A validated batch's output, columns read across its record batches.
    struct Out {
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    }

    impl Out {
        fn names(&self) -> Vec<&str> {
            self.schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect()
        }

        fn column(&self, name: &str) -> Vec<ArrayRef> {
            self.batches
                .iter()
                .map(|b| b.column_by_name(name).expect(name).clone())
                .collect()
        }

        fn strs(&self, name: &str) -> Vec<Option<String>> {
            let mut out = Vec::new();
            for a in self.column(name) {
                let a = a.as_string_view();
                out.extend((0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i).to_string())));
            }
            out
        }

        fn bools(&self, name: &str) -> Vec<bool> {
            let mut out = Vec::new();
            for a in self.column(name) {
                assert_eq!(a.null_count(), 0);
                let a = a.as_boolean();
                out.extend((0..a.len()).map(|i| a.value(i)));
            }
            out
        }

        fn ints(&self, name: &str) -> Vec<Option<i64>> {
            let mut out = Vec::new();
            for a in self.column(name) {
                let a = a.as_primitive::<arrow_array::types::Int64Type>();
                out.extend((0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i))));
            }
            out
        }

        fn reasons(&self) -> Vec<Option<String>> {
            self.strs("reason")
        }
    }

    fn some(v: &[Option<&str>]) -> Vec<Option<String>> {
        v.iter().map(|s| s.map(str::to_string)).collect()
    }

    fn finish(batch: &Batch<'_>, dedup: Option<&mut Dedup>) -> Out {
        let (schema, batches) = batch.run().into_batches(dedup).unwrap();
        for b in &batches {
            for c in b.columns() {
                c.to_data().validate_full().expect("valid output column");
            }
        }
        Out { schema, batches }
    }

    fn run(v: &Validator, chunks: Vec<ArrayRef>, tasks: TaskTypes, o: Options) -> Out {
        let b = Batch::new(v, texts(chunks), tasks, o, None, GateColumns::default()).unwrap();
        finish(&b, None)
    }

    fn run_one(text: &str, task: &str, extract: bool) -> Out {
        let o = Options {
            extract,
            json: true,
            ..Options::default()
        };
        run(&validator(), vec![utf8(&[Some(text)])], one(task), o)
    }

    #[test]
    fn reason_codes_and_fields_as_python_expects() {
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("not json at all", "not_json", None),
            (r#"{"q": "ab""#, "not_json", None),
            (r#"["q"]"#, "not_an_object", None),
            (r#""just a string""#, "not_an_object", None),
            (r#"{"q": "ab"}"#, "missing_field", Some("a~1b")),
            (
                r#"{"q": "ab", "a/b": "abc", "zzz": 1}"#,
                "unexpected_field",
                Some("zzz"),
            ),
            (r#"{"q": 5, "a/b": "abc"}"#, "wrong_type", Some("q")),
            (r#"{"q": "", "a/b": "abc"}"#, "empty_string", Some("q")),
            (r#"{"q": "  ", "a/b": "abc"}"#, "empty_string", Some("q")),
            (r#"{"q": "ab", "a/b": "ab"}"#, "too_short", Some("a~1b")),
            (r#"{"q": "abcdefg", "a/b": "abc"}"#, "too_long", Some("q")),
            (r#"{"q": NaN, "a/b": "abc"}"#, "not_json", None),
            (&deep, "too_deep", None),
            (r#"{"zz": "x"}"#, "unexpected_field", Some("zz")),
        ];
        for &(text, reason, field) in cases {
            let out = run_one(text, "tiny", false);
            assert_eq!(out.bools("ok"), [false], "{text}");
            assert_eq!(out.reasons(), some(&[Some(reason)]), "{text}");
            assert_eq!(out.strs("field"), some(&[field]), "{text}");
            assert!(out.strs("message")[0]
                .as_ref()
                .is_some_and(|m| !m.is_empty()));
            assert_eq!(out.strs("json"), [None]);
        }
        assert_eq!(
            run_one(r#"{"m": "happy", "t": "x"}"#, "mood", false).bools("ok"),
            [true]
        );
        let out = run_one(r#"{"m": "meh", "t": "x"}"#, "mood", false);
        assert_eq!(
            (out.reasons(), out.strs("field")),
            (some(&[Some("not_in_enum")]), some(&[Some("m")]))
        );
    }

    #[test]
    fn accepted_rows_get_compact_json_and_no_message() {
        let out = run_one(
            "{\n  \"q\": \"ab\",\n  \"a/b\": \"x\\\"y\"\n}",
            "tiny",
            false,
        );
        assert_eq!(out.bools("ok"), [true]);
        assert_eq!(out.bools("extracted"), [false]);
        assert_eq!(
            out.strs("json"),
            some(&[Some(r#"{"q":"ab","a/b":"x\"y"}"#)])
        );
        assert_eq!(out.strs("message"), [None]);
        assert_eq!(out.strs("field"), [None]);
    }

    #[test]
    fn extraction_is_opt_in_and_counted() {
        let fenced = "Sure:\n```json\n{\"q\": \"ab\", \"a/b\": \"abc\"}\n```";
        assert_eq!(
            run_one(fenced, "tiny", false).reasons(),
            some(&[Some("not_json")])
        );
        let out = run_one(fenced, "tiny", true);
        assert_eq!(
            (out.bools("ok"), out.bools("extracted")),
            (vec![true], vec![true])
        );
        let out = run_one(r#"prefix {"q": "ab"} suffix"#, "tiny", true);
        assert_eq!(out.reasons(), some(&[Some("missing_field")]));
        assert_eq!(out.bools("extracted"), [true]);
    }

    #[test]
    fn bad_rows_are_verdicts_not_errors() {
        let deep = "{".repeat(100_000);
        let rows: Vec<Option<&[u8]>> = vec![
            Some(GOOD.as_bytes()),
            Some(b"\xff\xfe{"),
            None,
            Some(&[b'x'; 100]),
            Some(deep.as_bytes()),
        ];
        let bin: ArrayRef = Arc::new(BinaryArray::from(rows));
        let out = run(&validator(), vec![bin], one("tiny"), opts(true, false));
        assert_eq!(
            out.reasons(),
            some(&[
                None,
                Some("invalid_utf8"),
                Some("null_text"),
                Some("not_json"),
                Some("too_deep")
            ])
        );
        assert_eq!(
            out.strs("message")[1].as_deref(),
            Some("invalid UTF-8 at byte 0")
        );
        let huge = format!(r#"{{"q": "ab", "a/b": "{}"}}"#, "x".repeat(17 << 20));
        assert_eq!(
            run_one(&huge, "tiny", false).reasons(),
            some(&[Some("too_large")])
        );
    }

    #[test]
    fn task_types_per_row_null_unknown_and_not_utf8() {
        let v = validator();
        let tasks =
            TaskTypes::column(vec![utf8(&[Some("tiny"), None]), utf8(&[Some("nope")])], 3).unwrap();
        let out = run(&v, vec![utf8(&[Some(GOOD); 3])], tasks, opts(false, false));
        assert_eq!(
            out.reasons(),
            some(&[None, Some("unknown_task_type"), Some("unknown_task_type")])
        );
        let msgs = out.strs("message");
        assert_eq!(msgs[1].as_deref(), Some("task type is null"));
        assert_eq!(msgs[2].as_deref(), Some("unknown task type 'nope'"));
        assert!(!out.names().contains(&"json"));

        let (offsets, data, nulls) =
            BinaryArray::from(vec![Some(&b"ti\xffny"[..]), Some(b"tiny")]).into_parts();
        // SAFETY: not UTF-8 on purpose.
        let bad: ArrayRef = Arc::new(unsafe { StringArray::new_unchecked(offsets, data, nulls) });
        let tasks = TaskTypes::column(vec![bad], 2).unwrap();
        let out = run(
            &v,
            vec![utf8(&[Some(GOOD), Some(GOOD)])],
            tasks,
            opts(false, false),
        );
        assert_eq!(out.reasons(), some(&[Some("invalid_utf8"), None]));
        assert_eq!(
            out.strs("message")[0].as_deref(),
            Some("invalid UTF-8 at byte 2 of task_types")
        );

        let e = TaskTypes::column(vec![utf8(&[Some("tiny")])], 2)
            .err()
            .unwrap();
        assert_eq!(e.to_string(), "task_types has 1 rows but texts has 2");
        let e = TaskTypes::column(vec![Arc::new(Int64Array::from(vec![1]))], 1)
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "column 'task_types' must hold strings, got Arrow type Int64"
        );
    }

    #[test]
    fn unpack_follows_each_rows_task_type() {
        let v = validator();
        assert_eq!(v.task_types(), ["tiny", "mood"]);
        assert_eq!(v.unpack_columns(), ["q", "a/b", "opt", "m", "t"]);
        let rows = [
            Some(r#"{"a/b": "abc", "q": "ab", "opt": "o"}"#),
            Some(r#"{"m": "sad", "t": "tt"}"#),
            Some("nope"),
            Some(r#"{"q": "ab", "a/b": "abc"}"#),
        ];
        let tasks = TaskTypes::column(
            vec![utf8(&[
                Some("tiny"),
                Some("mood"),
                Some("mood"),
                Some("tiny"),
            ])],
            4,
        )
        .unwrap();
        let out = run(&v, vec![view(&rows)], tasks, opts(true, true));
        assert_eq!(
            out.names(),
            [
                "ok",
                "reason",
                "field",
                "message",
                "extracted",
                "json",
                "q",
                "a/b",
                "opt",
                "m",
                "t"
            ]
        );
        assert_eq!(out.bools("ok"), [true, true, false, true]);
        assert_eq!(out.strs("q"), some(&[Some("ab"), None, None, Some("ab")]));
        assert_eq!(
            out.strs("a/b"),
            some(&[Some("abc"), None, None, Some("abc")])
        );
        assert_eq!(out.strs("opt"), some(&[Some("o"), None, None, None]));
        assert_eq!(out.strs("m"), some(&[None, Some("sad"), None, None]));
        assert_eq!(out.strs("t"), some(&[None, Some("tt"), None, None]));
        // Key order of the input is kept in the compact JSON.
        assert_eq!(
            out.strs("json")[0].as_deref(),
            Some(r#"{"a/b":"abc","q":"ab","opt":"o"}"#)
        );

        // One task type unpacks just its fields; json=false drops that column only.
        let lean = run(&v, vec![view(&rows)], one("mood"), opts(false, true));
        assert_eq!(
            lean.names(),
            ["ok", "reason", "field", "message", "extracted", "m", "t"]
        );
        assert_eq!(lean.bools("ok"), [false, true, false, false]);
        assert_eq!(lean.strs("t"), some(&[None, Some("tt"), None, None]));
        // An unknown single task type: no unpack columns, every row rejected.
        let none = run(&v, vec![view(&rows)], one("nope"), opts(false, true));
        assert_eq!(none.names().len(), 5);
        assert!(none.bools("ok").iter().all(|ok| !ok));
    }

    #[test]
    fn long_unpacked_values_share_the_input_buffers() {
        // "tiny" is a closed object of strings: its rows take the fast path, whose
        // unescaped values are slices of the row's text.
        let v = validator();
        let row = format!(r#"{{"q": "ab", "a/b": "{LONG}"}}"#);
        let escaped = r#"{"q": "ab", "a/b": "with \"escapes\" inside it"}"#;
        let input = view(&[Some(&row), Some(escaped), Some(&row)]);
        let input_buf = input.as_string_view().data_buffers()[0].as_ptr();
        let out = run(
            &v,
            vec![input, utf8(&[Some(&row)])],
            one("tiny"),
            opts(false, true),
        );
        assert_eq!(
            out.strs("a/b"),
            some(&[
                Some(LONG),
                Some("with \"escapes\" inside it"),
                Some(LONG),
                Some(LONG)
            ])
        );
        // The first block (a Utf8View chunk) points into the input but for the escaped
        // value; the Utf8 chunk's block copies.
        let cols = out.column("a/b");
        assert_eq!(cols.len(), 2, "one block per input chunk here");
        let first = cols[0].as_string_view();
        let buffer_of = |a: &StringViewArray, i: usize| {
            a.data_buffers()[(a.views()[i] >> 64) as u32 as usize].as_ptr()
        };
        assert_eq!(buffer_of(first, 0), input_buf);
        assert_ne!(buffer_of(first, 1), input_buf);
        assert_eq!(buffer_of(first, 2), input_buf);
        let second = cols[1].as_string_view();
        assert_ne!(buffer_of(second, 0), input_buf);
    }

    #[test]
    fn many_rows_in_blocks_that_never_straddle_chunks() {
        let good = r#"{"m": "sad", "t": "x"}"#;
        let mut big = Vec::new();
        for _ in 0..5000 {
            big.extend([Some(good), Some("x")]);
        }
        let chunks = vec![
            view(&big),
            utf8(&[]),
            utf8(&vec![Some(good); 3001]),
            view(&[None]),
        ];
        let out = run(&validator(), chunks, one("mood"), opts(false, true));
        let ok = out.bools("ok");
        assert_eq!(ok.len(), 13002);
        assert_eq!(ok.iter().filter(|&&x| x).count(), 8001);
        assert_eq!(ok[..6], [true, false, true, false, true, false]);
        assert_eq!(out.reasons()[13001].as_deref(), Some("null_text"));
        // Block boundaries fall on chunk boundaries (rows 10000 and 13001).
        let mut at = 0;
        let mut bounds = Vec::new();
        for b in &out.batches {
            at += b.num_rows();
            bounds.push(at);
        }
        assert!(
            bounds.contains(&10000) && bounds.contains(&13001),
            "{bounds:?}"
        );
        assert!(out.batches.iter().all(|b| b.num_rows() <= 8192));
    }

    #[test]
    fn zero_rows_give_the_schema_and_no_batches() {
        let v = validator();
        for chunks in [vec![], vec![utf8(&[]), view(&[])]] {
            let out = run(&v, chunks, one("tiny"), opts(true, true));
            assert!(out.batches.is_empty());
            assert_eq!(
                out.names(),
                [
                    "ok",
                    "reason",
                    "field",
                    "message",
                    "extracted",
                    "json",
                    "q",
                    "a/b",
                    "opt"
                ]
            );
        }
        let b = Batch::new(
            &v,
            texts(vec![]),
            one("tiny"),
            Options {
                dedup: Some(false),
                dedup_fields: Some(vec!["q".into()]),
                ..Options::default()
            },
            None,
            GateColumns::default(),
        )
        .unwrap();
        let mut d = Dedup::new(false);
        let out = finish(&b, Some(&mut d));
        assert_eq!(out.names()[5..], ["keep", "duplicate_of"]);
        assert_eq!(d.seen, 0);
    }

    fn dedup_opts(casefold: bool, fields: &[&str]) -> Options {
        Options {
            json: true,
            dedup: Some(casefold),
            dedup_fields: Some(fields.iter().map(|f| f.to_string()).collect()),
            ..Options::default()
        }
    }

    #[test]
    fn fused_dedup_keeps_first_valid_rows_and_counts_every_row() {
        let v = validator();
        let rows = [
            Some(r#"{"q": "ab", "a/b": "abc"}"#),
            Some("not json"),
            Some(r#"{"q": "ab", "a/b": "other"}"#),
            Some(r#"{"q": "AB", "a/b": "abc"}"#),
            Some(r#"{"m": "sad", "t": "one"}"#),
            Some(r#"{"m": "happy", "t": "two"}"#),
        ];
        let tasks = || {
            TaskTypes::column(
                vec![
                    utf8(&[Some("tiny"); 4]),
                    utf8(&[Some("mood"), Some("mood")]),
                ],
                6,
            )
            .unwrap()
        };
        let mut d = Dedup::new(true);
        let b = Batch::new(
            &v,
            texts(vec![utf8(&rows[..3]), view(&rows[3..])]),
            tasks(),
            dedup_opts(true, &["q"]),
            None,
            GateColumns::default(),
        )
        .unwrap();
        let out = finish(&b, Some(&mut d));
        assert_eq!(out.bools("ok"), [true, false, true, true, true, true]);
        // Casefolded "AB" repeats row 0; mood rows lack "q" and share the null key.
        assert_eq!(
            out.ints("duplicate_of"),
            [None, None, Some(0), Some(0), None, Some(4)]
        );
        assert_eq!(out.bools("keep"), [true, false, false, false, true, false]);
        assert_eq!((d.seen, d.unique()), (6, 2));
        // A second batch continues the global row numbers.
        let b = Batch::new(
            &v,
            texts(vec![utf8(&[Some(rows[0].unwrap())])]),
            one("tiny"),
            dedup_opts(true, &["q", "a/b"]),
            None,
            GateColumns::default(),
        )
        .unwrap();
        let out = finish(&b, Some(&mut d));
        assert_eq!(out.ints("duplicate_of"), [None], "a new key: q and a/b");
        assert_eq!(d.seen, 7);
    }

    #[test]
    fn dedup_arguments_that_do_not_fit() {
        let v = validator();
        let plan = |tasks: TaskTypes, o: Options| {
            Batch::new(&v, texts(vec![]), tasks, o, None, GateColumns::default())
                .err()
                .map(|e| e.to_string())
        };
        let together = Some("dedup and dedup_fields go together (at least one field)".to_string());
        let alone = Options {
            dedup: Some(false),
            ..Options::default()
        };
        assert_eq!(plan(one("tiny"), alone), together);
        let fields_only = Options {
            dedup_fields: Some(vec!["q".into()]),
            ..Options::default()
        };
        assert_eq!(plan(one("tiny"), fields_only), together);
        assert_eq!(plan(one("tiny"), dedup_opts(false, &[])), together);
        assert_eq!(
            plan(one("tiny"), dedup_opts(false, &["t"])),
            Some(
                r#"dedup field 't' is not a string field of the task type(s) (string fields: ["q", "a/b", "opt"])"#
                    .to_string()
            )
        );
        let per_row = TaskTypes::column(vec![], 0).unwrap();
        assert!(plan(per_row, dedup_opts(false, &["t"])).is_none());
        // An unknown single task type rejects every row: any field will do.
        assert!(plan(one("nope"), dedup_opts(false, &["zz"])).is_none());
    }

    #[test]
    fn the_deduplicator_goes_with_a_dedup_plan_only() {
        let v = validator();
        let plain = Batch::new(
            &v,
            texts(vec![]),
            one("tiny"),
            Options::default(),
            None,
            GateColumns::default(),
        )
        .unwrap();
        let e = plain
            .run()
            .into_batches(Some(&mut Dedup::new(false)))
            .err()
            .unwrap();
        assert_eq!(e.kind(), crate::arrow_io::ErrorKind::Runtime);
        let fused = Batch::new(
            &v,
            texts(vec![]),
            one("tiny"),
            dedup_opts(false, &["q"]),
            None,
            GateColumns::default(),
        )
        .unwrap();
        assert!(fused.run().into_batches(None).is_err());
    }

    fn gate() -> Gate {
        let checks = [
            ("degenerate".to_string(), f64::NAN),
            ("prompt_echo".to_string(), f64::NAN),
            ("too_few_words".to_string(), 0.5),
        ];
        // Fields in another order than the schema's: the batch reorders them.
        let types = vec![(
            "tiny".to_string(),
            "Answer the question below in plain words".to_string(),
            vec![("a/b".to_string(), -1), ("q".to_string(), -1)],
        )];
        Gate::new(&checks, types, vec![]).unwrap()
    }

    #[test]
    fn gate_settings_and_their_errors() {
        assert_eq!(
            gate().checks(),
            [
                ("degenerate", 0.5),
                ("prompt_echo", 8.0),
                ("too_few_words", 0.5)
            ]
        );
        let e = Gate::new(&[("prompt_eco".to_string(), f64::NAN)], vec![], vec![])
            .err()
            .unwrap();
        assert!(e.starts_with("unknown quality check 'prompt_eco'"), "{e}");
        assert!(Gate::new(&[], vec![], vec![]).unwrap().checks().is_empty());
    }

    #[test]
    fn gate_rejects_valid_rows_by_their_own_inputs() {
        let v = validator();
        let g = gate();
        let task = "write a short question about the history of rivers in europe";
        let rows = [
            r#"{"q": "ab", "a/b": "the the the the the"}"#,
            r#"{"q": "ab", "a/b": "three little words"}"#,
            r#"{"q": "ab", "a/b": "a perfectly ordinary answer here"}"#,
            r#"{"q": "ab", "a/b": "write a short question about the history of rivers please"}"#,
            r#"{"q": "ab"}"#,
            r#"{"m": "sad", "t": "the the the the the"}"#,
        ];
        let rows: Vec<Option<&str>> = rows.iter().copied().map(Some).collect();
        let tasks =
            TaskTypes::column(vec![utf8(&[Some("tiny"); 5]), utf8(&[Some("mood")])], 6).unwrap();
        let min_words: ArrayRef = Arc::new(Int64Array::from(vec![
            None,
            Some(20),
            None,
            None,
            Some(20),
            Some(20),
        ]));
        let cols = GateColumns::new(
            Some(vec![utf8(&[Some(task); 6])]),
            None,
            vec![("a/b".to_string(), vec![min_words])],
            6,
        )
        .unwrap();
        let b = Batch::new(
            &v,
            texts(vec![utf8(&rows)]),
            tasks,
            opts(true, true),
            Some(&g),
            cols,
        )
        .unwrap();
        let out = finish(&b, None);
        assert_eq!(
            out.reasons(),
            some(&[
                Some("degenerate"),
                Some("too_few_words"),
                None,
                Some("prompt_echo"),
                Some("missing_field"),
                None // the gate has no plan for mood
            ])
        );
        assert_eq!(
            out.strs("field")[..4],
            some(&[Some("a~1b"), Some("a~1b"), None, Some("a~1b")])[..]
        );
        assert!(out.strs("message")[1]
            .as_deref()
            .is_some_and(|m| m.contains("words where the request asked for 20")));
        // Gated rows are rejected rows: no json, no unpacked values.
        assert_eq!(out.strs("json")[..2], [None, None]);
        assert_eq!(
            out.strs("a/b")[..3],
            some(&[None, None, Some("a perfectly ordinary answer here")])[..]
        );
    }

    #[test]
    fn gate_inputs_that_are_not_utf8_reject_their_row() {
        let v = validator();
        let g = gate();
        let (offsets, data, nulls) =
            BinaryArray::from(vec![Some(&b"English"[..]), Some(b"Fran\xe7ais")]).into_parts();
        // SAFETY: not UTF-8 on purpose.
        let langs: ArrayRef = Arc::new(unsafe { StringArray::new_unchecked(offsets, data, nulls) });
        let cols = GateColumns::new(None, Some(vec![langs]), vec![], 2).unwrap();
        let b = Batch::new(
            &v,
            texts(vec![utf8(&[Some(GOOD); 2])]),
            one("tiny"),
            opts(false, false),
            Some(&g),
            cols,
        )
        .unwrap();
        let out = finish(&b, None);
        assert_eq!(out.reasons(), some(&[None, Some("invalid_utf8")]));
        assert_eq!(
            out.strs("message")[1].as_deref(),
            Some("invalid UTF-8 at byte 4 of gate_languages")
        );
    }

    #[test]
    fn gate_columns_must_match_the_texts() {
        let e = GateColumns::new(Some(vec![utf8(&[Some("t")])]), None, vec![], 2)
            .err()
            .unwrap();
        assert_eq!(e.to_string(), "gate_tasks has 1 rows but texts has 2");
        let e = GateColumns::new(None, Some(vec![]), vec![], 1)
            .err()
            .unwrap();
        assert_eq!(e.to_string(), "gate_languages has 0 rows but texts has 1");
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
        let e = GateColumns::new(None, None, vec![("q".into(), vec![ints])], 2)
            .err()
            .unwrap();
        assert_eq!(e.to_string(), "gate_min_words has 3 rows but texts has 2");
        let e = GateColumns::new(None, None, vec![("q".into(), vec![utf8(&[Some("1")])])], 1)
            .err()
            .unwrap();
        assert_eq!(e.kind(), crate::arrow_io::ErrorKind::Type);
        assert_eq!(
            e.to_string(),
            "column 'gate_min_words[q]' must hold Int64, got Arrow type Utf8"
        );
        // Types are checked before lengths, in argument order.
        let e = GateColumns::new(
            Some(vec![utf8(&[Some("t")])]),
            Some(vec![Arc::new(Int64Array::from(vec![1]))]),
            vec![],
            5,
        )
        .err()
        .unwrap();
        assert_eq!(e.kind(), crate::arrow_io::ErrorKind::Type);
    }
}
