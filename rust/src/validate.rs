//! Validation of raw LLM output against the JSON Schema of its task type.
//!
//! Every row gets a verdict: ok, or a reason code plus the offending field. The
//! general path parses with `serde_json` and validates with the `jsonschema` crate,
//! mapping its error kinds to our reason codes. Schemas that are a closed object of
//! string fields (all six built-in task types) also get a single-pass scanner that
//! accepts the common, valid case without building a `Value` tree; anything it does
//! not accept outright goes through the general path, which then explains the rejection.

use std::collections::HashMap;

use serde_json::Value;

/// Deeper nesting than this is rejected (`too_deep`) before parsing.
pub const MAX_DEPTH: usize = 64;
/// Rows larger than this are rejected (`too_large`) without parsing.
pub const MAX_TEXT_BYTES: usize = 16 << 20;

/// Why a row was rejected. The string codes are part of the public API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    // Order = precedence when one row has several schema errors.
    NotAnObject,
    UnexpectedField,
    MissingField,
    WrongType,
    EmptyString,
    TooShort,
    TooLong,
    NotInEnum,
    PatternMismatch,
    OutOfRange,
    BadFormat,
    SchemaViolation,
    // Row-level failures (never compete with each other).
    NullText,
    InvalidUtf8,
    TooLarge,
    TooDeep,
    NotJson,
    UnknownTaskType,
    InternalError,
    // Quality gate (crate::quality), in its precedence order; only valid rows get them.
    FormatResidue,
    Degenerate,
    PromptEcho,
    TooFewWords,
    WrongLanguage,
    NotATask,
}

impl Reason {
    pub fn code(self) -> &'static str {
        match self {
            Reason::NotAnObject => "not_an_object",
            Reason::UnexpectedField => "unexpected_field",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::EmptyString => "empty_string",
            Reason::TooShort => "too_short",
            Reason::TooLong => "too_long",
            Reason::NotInEnum => "not_in_enum",
            Reason::PatternMismatch => "pattern_mismatch",
            Reason::OutOfRange => "out_of_range",
            Reason::BadFormat => "bad_format",
            Reason::SchemaViolation => "schema_violation",
            Reason::NullText => "null_text",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::TooLarge => "too_large",
            Reason::TooDeep => "too_deep",
            Reason::NotJson => "not_json",
            Reason::UnknownTaskType => "unknown_task_type",
            Reason::InternalError => "internal_error",
            Reason::FormatResidue => "format_residue",
            Reason::Degenerate => "degenerate",
            Reason::PromptEcho => "prompt_echo",
            Reason::TooFewWords => "too_few_words",
            Reason::WrongLanguage => "wrong_language",
            Reason::NotATask => "not_a_task",
        }
    }

    pub const ALL: [Reason; 25] = [
        Reason::NotAnObject,
        Reason::UnexpectedField,
        Reason::MissingField,
        Reason::WrongType,
        Reason::EmptyString,
        Reason::TooShort,
        Reason::TooLong,
        Reason::NotInEnum,
        Reason::PatternMismatch,
        Reason::OutOfRange,
        Reason::BadFormat,
        Reason::SchemaViolation,
        Reason::NullText,
        Reason::InvalidUtf8,
        Reason::TooLarge,
        Reason::TooDeep,
        Reason::NotJson,
        Reason::UnknownTaskType,
        Reason::InternalError,
        Reason::FormatResidue,
        Reason::Degenerate,
        Reason::PromptEcho,
        Reason::TooFewWords,
        Reason::WrongLanguage,
        Reason::NotATask,
    ];
}

/// A rejection: code, offending field (JSON pointer without the leading `/`), message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub field: Option<String>,
    pub message: String,
}

impl Rejection {
    fn new(reason: Reason, field: Option<String>, message: impl Into<String>) -> Self {
        Self {
            reason,
            field,
            message: message.into(),
        }
    }

    /// Bytes that are not UTF-8, the first bad one at offset `at` of the row's text or,
    /// when given, of its value in `column`.
    pub fn invalid_utf8(at: usize, column: Option<&str>) -> Self {
        let message = match column {
            None => format!("invalid UTF-8 at byte {at}"),
            Some(c) => format!("invalid UTF-8 at byte {at} of {c}"),
        };
        Self::new(Reason::InvalidUtf8, None, message)
    }
}

/// `bytes` as text, or the offset of the first byte that is not UTF-8. SIMD-checked
/// (simdutf8): on the same cache-hot row this costs little next to parsing it.
#[inline]
pub fn utf8(bytes: &[u8]) -> Result<&str, usize> {
    simdutf8::basic::from_utf8(bytes).map_err(|_| {
        // Only on failure: where the first bad byte is.
        simdutf8::compat::from_utf8(bytes).map_or_else(|e| e.valid_up_to(), |_| 0)
    })
}

/// Is `c` whitespace for our purposes (Unicode White_Space, as `char::is_whitespace`).
#[inline]
pub fn is_ws(c: char) -> bool {
    c.is_whitespace()
}

/// A string schema property as the fast scanner needs it.
#[derive(Debug, Clone)]
struct FastProp {
    name: String,
    min: u64,
    max: u64,
    required: bool,
}

/// One compiled task-type schema.
pub struct Schema {
    validator: jsonschema::Validator,
    /// minLength per top-level property (for the whitespace-only = empty rule).
    min_len: HashMap<String, u64>,
    /// Present when the schema is a closed object of string fields.
    fast: Option<Vec<FastProp>>,
    /// Top-level string properties, in schema order (the unpack columns).
    pub string_props: Vec<String>,
}

fn json_str_plain(s: &str) -> bool {
    !s.is_empty() && !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\')
}

fn as_u64(v: Option<&Value>) -> Option<u64> {
    v.and_then(Value::as_u64)
}

impl Schema {
    /// Compile a JSON Schema given as JSON text. The error names what is wrong.
    pub fn compile(schema_json: &str) -> Result<Schema, String> {
        let value: Value =
            serde_json::from_str(schema_json).map_err(|e| format!("schema is not JSON: {e}"))?;
        let validator =
            jsonschema::validator_for(&value).map_err(|e| format!("invalid JSON Schema: {e}"))?;
        let mut min_len = HashMap::new();
        let mut string_props = Vec::new();
        if let Some(props) = value.get("properties").and_then(Value::as_object) {
            for (name, p) in props {
                if let Some(m) = as_u64(p.get("minLength")) {
                    min_len.insert(name.clone(), m);
                }
                if p.get("type").and_then(Value::as_str) == Some("string") {
                    string_props.push(name.clone());
                }
            }
        }
        let fast = fast_props(&value);
        Ok(Schema {
            validator,
            min_len,
            fast,
            string_props,
        })
    }

    /// Validate a parsed instance. Returns the chosen (highest-precedence) rejection.
    pub fn check(&self, instance: &Value) -> Option<Rejection> {
        let mut found: Vec<Rejection> = Vec::new();
        for err in self.validator.iter_errors(instance) {
            map_error(&err, &mut found);
        }
        // Strictness beyond JSON Schema: a required-non-empty string that is only
        // whitespace is empty for our purposes.
        if let Some(obj) = instance.as_object() {
            for (k, v) in obj {
                if let (Some(s), Some(&m)) = (v.as_str(), self.min_len.get(k)) {
                    if m >= 1 && !s.is_empty() && s.chars().all(is_ws) {
                        found.push(Rejection::new(
                            Reason::EmptyString,
                            Some(escape_pointer_token(k)),
                            format!("field '{k}' is only whitespace"),
                        ));
                    }
                }
            }
        }
        found
            .into_iter()
            .min_by(|a, b| (a.reason, &a.field).cmp(&(b.reason, &b.field)))
    }
}

/// Recognise `{"type":"object","properties":{name:{"type":"string",minLength?,maxLength?}},
/// "required":[...],"additionalProperties":false}` (annotation keywords allowed).
fn fast_props(schema: &Value) -> Option<Vec<FastProp>> {
    const ANNOT: [&str; 6] = [
        "$schema",
        "$id",
        "$comment",
        "title",
        "description",
        "examples",
    ];
    let obj = schema.as_object()?;
    for k in obj.keys() {
        if !ANNOT.contains(&k.as_str())
            && !["type", "properties", "required", "additionalProperties"].contains(&k.as_str())
        {
            return None;
        }
    }
    if obj.get("type")?.as_str()? != "object"
        || obj.get("additionalProperties")? != &Value::Bool(false)
    {
        return None;
    }
    let required: Vec<&str> = match obj.get("required") {
        None => vec![],
        Some(r) => r
            .as_array()?
            .iter()
            .map(Value::as_str)
            .collect::<Option<Vec<_>>>()?,
    };
    let props = obj.get("properties")?.as_object()?;
    if props.is_empty() || props.len() > 64 {
        return None;
    }
    let mut out = Vec::new();
    for (name, p) in props {
        if !json_str_plain(name) {
            return None;
        }
        let p = p.as_object()?;
        for k in p.keys() {
            if !ANNOT.contains(&k.as_str())
                && !["type", "minLength", "maxLength"].contains(&k.as_str())
            {
                return None;
            }
        }
        if p.get("type")?.as_str()? != "string" {
            return None;
        }
        let min = match p.get("minLength") {
            None => 0,
            Some(v) => v.as_u64()?,
        };
        let max = match p.get("maxLength") {
            None => u64::MAX,
            Some(v) => v.as_u64()?,
        };
        out.push(FastProp {
            name: name.clone(),
            min,
            max,
            required: required.contains(&name.as_str()),
        });
    }
    // Every required name must be a property, or the fast path could accept wrongly.
    if required.iter().any(|r| !props.contains_key(*r)) {
        return None;
    }
    Some(out)
}

fn escape_pointer_token(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

fn pointer_field(path: &str) -> Option<String> {
    path.strip_prefix('/').map(str::to_string)
}

fn join_field(path: &str, name: &str) -> String {
    let tok = escape_pointer_token(name);
    match pointer_field(path) {
        Some(p) => format!("{p}/{tok}"),
        None => tok,
    }
}

fn map_error(err: &jsonschema::ValidationError<'_>, out: &mut Vec<Rejection>) {
    use jsonschema::error::ValidationErrorKind as K;
    let path = err.instance_path().as_str();
    let field = pointer_field(path);
    let msg = err.to_string();
    let r = |reason| Rejection::new(reason, field.clone(), msg.clone());
    match err.kind() {
        K::AdditionalProperties { unexpected } | K::UnevaluatedProperties { unexpected } => {
            for name in unexpected {
                out.push(Rejection::new(
                    Reason::UnexpectedField,
                    Some(join_field(path, name)),
                    format!("unexpected field '{name}'"),
                ));
            }
        }
        K::Required { property } => {
            let name = property
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| property.to_string());
            out.push(Rejection::new(
                Reason::MissingField,
                Some(join_field(path, &name)),
                format!("missing required field '{name}'"),
            ));
        }
        K::Type { .. } => {
            if path.is_empty() && !err.instance().is_object() {
                out.push(r(Reason::NotAnObject));
            } else {
                out.push(r(Reason::WrongType));
            }
        }
        K::MinLength { .. } => {
            let empty = err
                .instance()
                .as_str()
                .is_some_and(|s| s.chars().all(is_ws));
            out.push(r(if empty {
                Reason::EmptyString
            } else {
                Reason::TooShort
            }));
        }
        K::MaxLength { .. } => out.push(r(Reason::TooLong)),
        K::Enum { .. } | K::Constant { .. } => out.push(r(Reason::NotInEnum)),
        K::Pattern { .. } => out.push(r(Reason::PatternMismatch)),
        K::Minimum { .. }
        | K::Maximum { .. }
        | K::ExclusiveMinimum { .. }
        | K::ExclusiveMaximum { .. } => out.push(r(Reason::OutOfRange)),
        K::Format { .. } => out.push(r(Reason::BadFormat)),
        _ => out.push(r(Reason::SchemaViolation)),
    }
}

/// Nesting depth of `text` (arrays and objects), ignoring brackets inside strings.
/// Stops counting once `limit` is exceeded.
pub fn nesting_depth(text: &[u8], limit: usize) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let mut in_str = false;
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        if in_str {
            match b {
                b'\\' => i += 1,
                b'"' => in_str = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_str = true,
                b'{' | b'[' => {
                    depth += 1;
                    if depth > max {
                        max = depth;
                        if max > limit {
                            return max;
                        }
                    }
                }
                b'}' | b']' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        i += 1;
    }
    max
}

fn trim_json_ws(s: &str) -> &str {
    s.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'))
}

/// Candidates for a JSON object inside prose, in the order they are tried:
/// the body of the first ``` fence (language tag line skipped), then the first
/// balanced `{...}` span (string-aware).
pub fn extraction_candidates(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    if let Some(start) = text.find("```") {
        let after = &text[start + 3..];
        // The rest of the opening line is the language tag (e.g. `json`).
        let body_start = after.find('\n').map(|n| n + 1).unwrap_or(after.len());
        let body = &after[body_start..];
        if let Some(end) = body.find("```") {
            out.push(trim_json_ws(&body[..end]));
        }
    }
    if let Some(open) = text.find('{') {
        let bytes = text.as_bytes();
        let (mut depth, mut in_str, mut i) = (0usize, false, open);
        while i < bytes.len() {
            let b = bytes[i];
            if in_str {
                match b {
                    b'\\' => i += 1,
                    b'"' => in_str = false,
                    _ => {}
                }
            } else {
                match b {
                    b'"' => in_str = true,
                    b'{' => depth += 1,
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            out.push(&text[open..=i]);
                            break;
                        }
                    }
                    _ => {}
                }
            }
            i += 1;
        }
    }
    out
}

/// Parse `text` as one JSON value, with the depth guard.
fn parse(text: &str) -> Result<Value, Rejection> {
    if nesting_depth(text.as_bytes(), MAX_DEPTH) > MAX_DEPTH {
        return Err(Rejection::new(
            Reason::TooDeep,
            None,
            format!("nesting deeper than {MAX_DEPTH} levels"),
        ));
    }
    serde_json::from_str(text)
        .map_err(|e| Rejection::new(Reason::NotJson, None, format!("not JSON: {e}")))
}

/// Where a row's output goes (one sink per chunk of rows, no per-row allocation).
pub trait Sink {
    /// The row was accepted: compact JSON and the unpacked string fields (schema order).
    fn accept(&mut self, json: &str, extracted: bool, values: &[Option<&str>]);
    fn accept_owned(&mut self, json: &str, extracted: bool, values: &[Option<String>]) {
        let v: Vec<Option<&str>> = values.iter().map(|o| o.as_deref()).collect();
        self.accept(json, extracted, &v);
    }
    fn reject(&mut self, rej: Rejection, extracted: bool);
}

/// Scratch space reused across rows of one chunk.
#[derive(Default)]
pub struct Scratch {
    /// Skip building the compact JSON of accepted rows (the sink gets "").
    pub skip_json: bool,
    json: String,
    spans: Vec<(usize, usize, bool)>,
    values: Vec<String>,
}

impl Scratch {
    pub fn new(skip_json: bool) -> Self {
        Scratch {
            skip_json,
            ..Default::default()
        }
    }
}

/// Row-level checks before the text is read: null text, unknown task type, size.
fn precheck<'s>(
    len: Option<usize>,
    schema: Option<&'s Schema>,
    task_type: Option<&str>,
) -> Result<&'s Schema, Rejection> {
    let Some(len) = len else {
        return Err(Rejection::new(Reason::NullText, None, "text is null"));
    };
    let Some(schema) = schema else {
        let msg = match task_type {
            Some(t) => format!("unknown task type '{t}'"),
            None => "task type is null".to_string(),
        };
        return Err(Rejection::new(Reason::UnknownTaskType, None, msg));
    };
    if len > MAX_TEXT_BYTES {
        return Err(Rejection::new(
            Reason::TooLarge,
            None,
            format!("text is {len} bytes (limit {MAX_TEXT_BYTES})"),
        ));
    }
    Ok(schema)
}

/// Validate one row's bytes (a string or binary value; UTF-8 checked here) and send the
/// verdict to `sink`. String columns are checked too: Arrow data from outside may hold
/// any bytes.
pub fn validate_row(
    text: Option<&[u8]>,
    schema: Option<&Schema>,
    task_type: Option<&str>,
    extract: bool,
    scratch: &mut Scratch,
    sink: &mut dyn Sink,
) {
    let schema = match precheck(text.map(<[u8]>::len), schema, task_type) {
        Ok(s) => s,
        Err(rej) => return sink.reject(rej, false),
    };
    match utf8(text.unwrap_or_default()) {
        Ok(text) => validate_str(text, schema, extract, scratch, sink),
        Err(at) => sink.reject(Rejection::invalid_utf8(at, None), false),
    }
}

/// The parse + schema part of validation, for text known to be UTF-8.
pub fn validate_str(
    text: &str,
    schema: &Schema,
    extract: bool,
    scratch: &mut Scratch,
    sink: &mut dyn Sink,
) {
    if let Some(props) = &schema.fast {
        if fast_scan(text, props, scratch) {
            let vals = unpack_fast(text, &scratch.spans, &mut scratch.values);
            sink.accept(&scratch.json, false, &vals);
            return;
        }
    }
    let trimmed = trim_json_ws(text);
    let (value, extracted) = match parse(trimmed) {
        Ok(v) => (v, false),
        Err(first) => {
            let mut got = None;
            if extract {
                for cand in extraction_candidates(text) {
                    if let Ok(v) = parse(cand) {
                        got = Some(v);
                        break;
                    }
                }
            }
            match got {
                Some(v) => (v, true),
                None => return sink.reject(first, false),
            }
        }
    };
    if let Some(rej) = schema.check(&value) {
        return sink.reject(rej, extracted);
    }
    let json = if scratch.skip_json {
        String::new()
    } else {
        serde_json::to_string(&value).expect("serialising a Value cannot fail")
    };
    let vals: Vec<Option<String>> = schema
        .string_props
        .iter()
        .map(|p| value.get(p).and_then(Value::as_str).map(str::to_string))
        .collect();
    sink.accept_owned(&json, extracted, &vals);
}

#[inline]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// Scan a JSON string body starting after its opening quote. Returns (index of the
/// closing quote, number of escapes) or None when the string needs the general path
/// (`\u`, `\/`, control chars, bad escapes).
#[inline]
fn scan_string(text: &str, start: usize) -> Option<(usize, u64)> {
    let b = text.as_bytes();
    let mut i = start;
    let mut escapes = 0u64;
    loop {
        let rel = memchr::memchr2(b'"', b'\\', &b[i..])?;
        i += rel;
        if b[i] == b'"' {
            break;
        }
        match b.get(i + 1)? {
            b'"' | b'\\' | b'n' | b'r' | b't' | b'b' | b'f' => {
                escapes += 1;
                i += 2;
            }
            _ => return None,
        }
    }
    let body = &b[start..i];
    // Control characters are invalid inside JSON strings (vectorised, no early exit).
    let ctrl = body
        .chunks(64)
        .any(|c| c.iter().fold(false, |acc, &x| acc | (x < 0x20)));
    if ctrl {
        return None;
    }
    Some((i, escapes))
}

/// Code points of a scanned string body (escapes count as one).
#[inline]
fn char_count(body: &[u8], escapes: u64) -> u64 {
    let starts: u64 = body
        .chunks(64)
        .map(|c| c.iter().map(|&x| ((x as i8) >= -64) as u64).sum::<u64>())
        .sum();
    starts - escapes
}

/// Is the string body only whitespace (after unescaping)?
#[inline]
fn body_all_ws(text: &str, start: usize, end: usize) -> bool {
    // The first non-ws char usually comes at once. Both ends sit at ASCII quotes, so
    // this is a char-boundary slice.
    let s = &text[start..end];
    let mut chs = s.chars();
    while let Some(c) = chs.next() {
        if c == '\\' {
            // escaped char: \n \r \t \f are whitespace; \b \" \\ are not.
            match chs.next() {
                Some('n' | 'r' | 't' | 'f') => continue,
                _ => return false,
            }
        }
        if !is_ws(c) {
            return false;
        }
    }
    true
}

/// The fast path: accept a valid closed object of strings and write its compact JSON to
/// `scratch.json` (and value spans to `scratch.spans`). False = take the general path.
fn fast_scan(text: &str, props: &[FastProp], scratch: &mut Scratch) -> bool {
    let b = text.as_bytes();
    let want_json = !scratch.skip_json;
    let json = &mut scratch.json;
    json.clear();
    scratch.spans.clear();
    scratch.spans.resize(props.len(), (0, 0, false));
    let mut seen = 0u64;
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return false;
    }
    i = skip_ws(b, i + 1);
    if want_json {
        json.push('{');
    }
    loop {
        if b.get(i) != Some(&b'"') {
            return false;
        }
        let Some(kend) = memchr::memchr2(b'"', b'\\', &b[i + 1..]).map(|r| i + 1 + r) else {
            return false;
        };
        if b[kend] != b'"' {
            return false;
        }
        let key = &b[i + 1..kend];
        let Some(pi) = props.iter().position(|p| p.name.as_bytes() == key) else {
            return false;
        };
        if seen & (1 << pi) != 0 {
            return false; // duplicate key: let serde decide (last one wins)
        }
        seen |= 1 << pi;
        i = skip_ws(b, kend + 1);
        if b.get(i) != Some(&b':') {
            return false;
        }
        i = skip_ws(b, i + 1);
        if b.get(i) != Some(&b'"') {
            return false;
        }
        let Some((send, escapes)) = scan_string(text, i + 1) else {
            return false;
        };
        let p = &props[pi];
        let esc = escapes > 0;
        let body = &b[i + 1..send];
        // chars <= bytes - escapes <= 4 * chars: count only when the bounds can't decide.
        let upper = body.len() as u64 - escapes;
        if upper > p.max || (p.min > 1 && upper < 4 * p.min) {
            let chars = char_count(body, escapes);
            if chars < p.min || chars > p.max {
                return false;
            }
        }
        if p.min >= 1 && (upper == 0 || body_all_ws(text, i + 1, send)) {
            return false;
        }
        if want_json {
            if json.len() > 1 {
                json.push(',');
            }
            json.push('"');
            json.push_str(&p.name);
            json.push_str("\":\"");
            json.push_str(&text[i + 1..send]); // between ASCII quotes: char boundaries
            json.push('"');
        }
        scratch.spans[pi] = (i + 1, send, esc);
        i = skip_ws(b, send + 1);
        match b.get(i) {
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => {
                i = skip_ws(b, i + 1);
                break;
            }
            _ => return false,
        }
    }
    if i != b.len() {
        return false;
    }
    let required: u64 = props
        .iter()
        .enumerate()
        .filter(|(_, p)| p.required)
        .fold(0, |m, (k, _)| m | (1 << k));
    if seen & required != required {
        return false;
    }
    if want_json {
        json.push('}');
    }
    // Record which props were seen (span end 0 = absent).
    for (k, s) in scratch.spans.iter_mut().enumerate() {
        if seen & (1 << k) == 0 {
            *s = (0, 0, false);
        }
    }
    true
}

/// Unescape a JSON string body that only has the escapes the fast path allows.
pub fn unescape_simple(body: &str, out: &mut String) {
    out.clear();
    let mut rest = body;
    while let Some(pos) = memchr::memchr(b'\\', rest.as_bytes()) {
        out.push_str(&rest[..pos]);
        let c = rest.as_bytes()[pos + 1];
        out.push(match c {
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            other => other as char,
        });
        rest = &rest[pos + 2..];
    }
    out.push_str(rest);
}

/// Values of the fast path's fields (schema order; the fast schema's props are exactly
/// its string properties), unescaped into `values` only where needed.
fn unpack_fast<'a>(
    text: &'a str,
    spans: &[(usize, usize, bool)],
    values: &'a mut Vec<String>,
) -> Vec<Option<&'a str>> {
    if values.len() < spans.len() {
        values.resize(spans.len(), String::new());
    }
    for (k, &(s, e, esc)) in spans.iter().enumerate() {
        if esc && e > 0 {
            unescape_simple(&text[s..e], &mut values[k]);
        }
    }
    let values = &*values;
    spans
        .iter()
        .enumerate()
        .map(|(k, &(s, e, esc))| {
            if e == 0 {
                None
            } else if esc {
                Some(values[k].as_str())
            } else {
                Some(&text[s..e])
            }
        })
        .collect()
}

/// A compiled set of task-type schemas.
pub struct SchemaSet {
    schemas: HashMap<String, Schema>,
    /// Union of the string properties of all schemas, in first-seen order.
    pub unpack_columns: Vec<String>,
}

impl SchemaSet {
    /// Compile named schemas (JSON text each). Errors name the schema.
    pub fn compile(named: &[(String, String)]) -> Result<SchemaSet, String> {
        let mut schemas = HashMap::new();
        let mut cols: Vec<String> = Vec::new();
        for (name, text) in named {
            let s = Schema::compile(text).map_err(|e| format!("schema '{name}': {e}"))?;
            for p in &s.string_props {
                if !cols.contains(p) {
                    cols.push(p.clone());
                }
            }
            schemas.insert(name.clone(), s);
        }
        Ok(SchemaSet {
            schemas,
            unpack_columns: cols,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Schema> {
        self.schemas.get(name)
    }

    /// Column index in `unpack_columns` of each string property of `schema`.
    pub fn column_map(&self, schema: &Schema) -> Vec<usize> {
        schema
            .string_props
            .iter()
            .map(|p| {
                self.unpack_columns
                    .iter()
                    .position(|c| c == p)
                    .expect("union has it")
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (reason, field, extracted, json, unpacked values)
    type Row = (
        Option<Reason>,
        Option<String>,
        bool,
        Option<String>,
        Vec<Option<String>>,
    );

    #[derive(Default, Debug)]
    struct Rows {
        out: Vec<Row>,
    }

    impl Sink for Rows {
        fn accept(&mut self, json: &str, extracted: bool, values: &[Option<&str>]) {
            self.out.push((
                None,
                None,
                extracted,
                Some(json.to_string()),
                values.iter().map(|v| v.map(str::to_string)).collect(),
            ));
        }
        fn reject(&mut self, rej: Rejection, extracted: bool) {
            self.out
                .push((Some(rej.reason), rej.field, extracted, None, vec![]));
        }
    }

    const SCHEMA: &str = r#"{"type":"object","properties":{
        "q":{"type":"string","minLength":1,"maxLength":10},
        "d":{"type":"string","minLength":1}},
        "required":["q","d"],"additionalProperties":false}"#;

    fn run(text: &str, extract: bool) -> Row {
        let s = Schema::compile(SCHEMA).unwrap();
        assert!(s.fast.is_some());
        let mut rows = Rows::default();
        let mut sc = Scratch::default();
        validate_row(
            Some(text.as_bytes()),
            Some(&s),
            Some("t"),
            extract,
            &mut sc,
            &mut rows,
        );
        // The general path alone must give the same verdict.
        let mut slow = Schema::compile(SCHEMA).unwrap();
        slow.fast = None;
        let mut rows2 = Rows::default();
        validate_row(
            Some(text.as_bytes()),
            Some(&slow),
            Some("t"),
            extract,
            &mut sc,
            &mut rows2,
        );
        assert_eq!(
            rows.out, rows2.out,
            "fast and general paths disagree on {text:?}"
        );
        rows.out.pop().unwrap()
    }

    #[test]
    fn accepts_and_compacts() {
        let r = run("{ \"q\" : \"hi\",\n \"d\": \"a\\nb \\\"c\\\"\" }", false);
        assert_eq!(r.0, None);
        assert_eq!(r.3.as_deref(), Some(r#"{"q":"hi","d":"a\nb \"c\""}"#));
        assert_eq!(r.4, vec![Some("hi".into()), Some("a\nb \"c\"".into())]);
    }

    #[test]
    fn reasons() {
        assert_eq!(run("nope", false).0, Some(Reason::NotJson));
        assert_eq!(run("[1]", false).0, Some(Reason::NotAnObject));
        let r = run(r#"{"q":"x"}"#, false);
        assert_eq!(
            (r.0, r.1.as_deref()),
            (Some(Reason::MissingField), Some("d"))
        );
        let r = run(r#"{"q":"x","d":"y","z":1}"#, false);
        assert_eq!(
            (r.0, r.1.as_deref()),
            (Some(Reason::UnexpectedField), Some("z"))
        );
        let r = run(r#"{"q":3,"d":"y"}"#, false);
        assert_eq!((r.0, r.1.as_deref()), (Some(Reason::WrongType), Some("q")));
        let r = run(r#"{"q":"","d":"y"}"#, false);
        assert_eq!(
            (r.0, r.1.as_deref()),
            (Some(Reason::EmptyString), Some("q"))
        );
        let r = run(r#"{"q":" \n ","d":"y"}"#, false);
        assert_eq!(
            (r.0, r.1.as_deref()),
            (Some(Reason::EmptyString), Some("q"))
        );
        let r = run(r#"{"q":"12345678901","d":"y"}"#, false);
        assert_eq!((r.0, r.1.as_deref()), (Some(Reason::TooLong), Some("q")));
        // maxLength counts code points, not bytes
        assert_eq!(run(r#"{"q":"éééééééééé","d":"y"}"#, false).0, None);
        assert_eq!(
            run("{\"q\":\"a\u{1}\",\"d\":\"y\"}", false).0,
            Some(Reason::NotJson)
        );
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert_eq!(run(&deep, false).0, Some(Reason::TooDeep));
    }

    #[test]
    fn duplicate_keys_last_wins() {
        let r = run(r#"{"q":"a","d":"y","q":"b"}"#, false);
        assert_eq!(r.3.as_deref(), Some(r#"{"q":"b","d":"y"}"#));
    }

    #[test]
    fn escapes_go_general_path() {
        let r = run(r#"{"q":"\u00e9\/","d":"y"}"#, false);
        assert_eq!(r.3.as_deref(), Some(r#"{"q":"é/","d":"y"}"#));
    }

    #[test]
    fn extraction() {
        let text = "Sure! Here it is:\n```json\n{\"q\":\"a\",\"d\":\"b\"}\n```\nBye";
        assert_eq!(run(text, false).0, Some(Reason::NotJson));
        let r = run(text, true);
        assert_eq!((r.0, r.2), (None, true));
        let r = run("blah {\"q\":\"a\",\"d\":\"b}\"} trailing", true);
        assert_eq!((r.0, r.2, r.4[1].as_deref()), (None, true, Some("b}")));
        // extracted but invalid: reason from the schema, still flagged extracted
        let r = run("x {\"q\":\"a\"} y", true);
        assert_eq!((r.0, r.2), (Some(Reason::MissingField), true));
    }

    #[test]
    fn row_level() {
        let s = Schema::compile(SCHEMA).unwrap();
        let mut rows = Rows::default();
        let mut sc = Scratch::default();
        validate_row(None, Some(&s), Some("t"), false, &mut sc, &mut rows);
        validate_row(
            Some(b"{\xff}"),
            Some(&s),
            Some("t"),
            false,
            &mut sc,
            &mut rows,
        );
        validate_row(Some(b"{}"), None, Some("nope"), false, &mut sc, &mut rows);
        let reasons: Vec<_> = rows.out.iter().map(|r| r.0).collect();
        assert_eq!(
            reasons,
            vec![
                Some(Reason::NullText),
                Some(Reason::InvalidUtf8),
                Some(Reason::UnknownTaskType)
            ]
        );
    }

    /// Malformed UTF-8 anywhere in a row (a value, a key, prose around an extractable
    /// object) is that row's rejection naming the first bad byte, on both paths.
    #[test]
    fn invalid_utf8_is_rejected_at_its_byte() {
        /// The verdict on the last row (Ok = accepted).
        struct Last(Option<Result<(), Rejection>>);
        impl Sink for Last {
            fn accept(&mut self, _: &str, _: bool, _: &[Option<&str>]) {
                self.0 = Some(Ok(()));
            }
            fn reject(&mut self, rej: Rejection, _: bool) {
                self.0 = Some(Err(rej));
            }
        }
        let cases: [(&[u8], usize); 11] = [
            (b"{\"q\":\"a\xc3\",\"d\":\"y\"}", 7), // truncated 2-byte sequence
            (b"{\"q\":\"\xe6\x97\",\"d\":\"y\"}", 6), // truncated 3-byte
            (b"{\"q\":\"\xf0\x9f\x98\",\"d\":\"y\"}", 6), // truncated 4-byte
            (b"{\"q\":\"\xc0\xaf\",\"d\":\"y\"}", 6), // overlong '/'
            (b"{\"q\":\"\xe0\x80\xaf\",\"d\":\"y\"}", 6), // overlong, 3 bytes
            (b"{\"q\":\"\xed\xa0\x80\",\"d\":\"y\"}", 6), // UTF-16 surrogate D800
            (b"{\"q\":\"ok\",\"d\":\"\xff\"}", 15), // 0xFF
            (b"{\"q\":\"\xc3\xa9\x80\",\"d\":\"y\"}", 8), // stray continuation byte
            (b"{\"q\xff\":\"a\",\"d\":\"y\"}", 3), // in a key
            (b"x \xf4\x90\x80\x80 {\"q\":\"a\",\"d\":\"y\"}", 2), // above U+10FFFF
            (b"{\"q\":\"a\",\"d\":\"y\"}\xc3", 17), // cut at the very end
        ];
        let fast = Schema::compile(SCHEMA).unwrap();
        let mut slow = Schema::compile(SCHEMA).unwrap();
        slow.fast = None;
        let mut sc = Scratch::default();
        for (bytes, at) in cases {
            assert_eq!(utf8(bytes), Err(at), "{bytes:?}");
            for schema in [&fast, &slow] {
                let mut last = Last(None);
                validate_row(
                    Some(bytes),
                    Some(schema),
                    Some("t"),
                    true,
                    &mut sc,
                    &mut last,
                );
                let rej = last.0.unwrap().expect_err("invalid UTF-8 accepted");
                assert_eq!(rej.reason, Reason::InvalidUtf8, "{bytes:?}");
                assert_eq!(rej.message, format!("invalid UTF-8 at byte {at}"));
            }
        }
        // Valid multibyte text of every length passes.
        assert_eq!(utf8("é日😀".as_bytes()), Ok("é日😀"));
        let mut last = Last(None);
        let ok = "{\"q\":\"é日😀\",\"d\":\"y\"}";
        validate_row(
            Some(ok.as_bytes()),
            Some(&fast),
            Some("t"),
            false,
            &mut sc,
            &mut last,
        );
        assert_eq!(last.0, Some(Ok(())));
    }

    #[test]
    fn bad_schema_is_an_error() {
        assert!(Schema::compile("{").is_err());
        assert!(Schema::compile(r#"{"type": 12}"#).is_err());
    }

    #[test]
    fn depth_ignores_strings() {
        assert_eq!(nesting_depth(br#"{"a":"[[[[{{{"}"#, 10), 1);
        assert_eq!(nesting_depth(br#"[[{"a":[]}]]"#, 10), 4);
    }
}
