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
    #[allow(clippy::type_complexity)]
    fn row_keys(
        &self,
        row: usize,
    ) -> Result<(Option<&str>, Option<&str>, Option<&str>), Rejection> {
        fn str_at(c: &Option<StrCol>, row: usize) -> Result<Option<&str>, usize> {
            c.as_ref().map_or(Ok(None), |c| c.str(row))
        }
        match (
            self.tasks.get(row),
            str_at(&self.gate_cols.tasks, row),
            str_at(&self.gate_cols.languages, row),
        ) {
            (Ok(t), Ok(g), Ok(l)) => Ok((t, g, l)),
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
        let (task, gate_task, gate_lang) = match b.row_keys(row) {
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
            language: gate_lang,
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
