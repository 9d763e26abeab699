//! The quality gate: checks that an answer which is valid JSON of the right shape is also
//! usable training text. It runs inside the fused validate pass on the unpacked values of
//! each accepted row, so an answer is read once.
//!
//! Checks, in precedence order (the first that fires is the row's reason):
//!
//! | code             | knob (default)           | fires when                                        |
//! |------------------|--------------------------|---------------------------------------------------|
//! | `format_residue` | symbol share (0.5)       | an unfilled/invented placeholder (`{language}`,   |
//! |                  |                          | `[X]`, `%s`, `{{`), a JSON fragment (a bare       |
//! |                  |                          | `{...}`; a `"key":` of the answer's own fields,   |
//! |                  |                          | an answer wrapper or with no value), a stand-in   |
//! |                  |                          | value ("string", "N/A", lorem ipsum in its first  |
//! |                  |                          | words), or more than the knob's share of the      |
//! |                  |                          | field's characters are ASCII digits or            |
//! |                  |                          | punctuation. In a field that looks like code      |
//! |                  |                          | (CODE_TOKENS, `a.b(`) and in inline code spans,   |
//! |                  |                          | braces, `%d` and `"key":` are text; `arr[N]` is   |
//! |                  |                          | indexing                                          |
//! | `degenerate`     | top-word share (0.5)     | one word is more than the knob's share of the     |
//! |                  |                          | field's words, distinct words are fewer than      |
//! |                  |                          | (1 - knob) of them, the words repeat with a       |
//! |                  |                          | period (12+ words), or a field of under 4 words   |
//! |                  |                          | has fewer than 4 distinct bytes in 10+            |
//! | `prompt_echo`    | span in words (8)        | the field shares a span of that many words with   |
//! |                  |                          | the task type's template or the row's task, or    |
//! |                  |                          | the whole field (4+ words) occurs in either       |
//! | `too_few_words`  | ratio (0.5)              | fewer words than ratio x the words the request    |
//! |                  |                          | asked for (per-row minimum, given by the caller)  |
//! | `wrong_language` | min confidence (0.5)     | whatlang names another language than requested    |
//! |                  |                          | for a field (its first LANG_WINDOW_BYTES) with at |
//! |                  |                          | least that confidence (it abstains below, on text |
//! |                  |                          | of few letters and on languages it does not know) |
//! |                  |                          | and the field's stop words did not already show   |
//! |                  |                          | the requested language (see `stopwords_show`); in |
//! |                  |                          | Latin and Cyrillic script whatlang is asked only  |
//! |                  |                          | when other languages' stop words outscore the     |
//! |                  |                          | requested one's (`outscoring_languages`), and to  |
//! |                  |                          | choose between those and the requested one        |
//!
//! Words are runs of ASCII alphanumerics, `_` and non-ASCII bytes, compared with ASCII
//! case folded. Per-word checks (echo spans, word shares) read a bounded window of each
//! field (its first [`WINDOW_WORDS`] words), the symbol share its first
//! [`SYMBOL_WINDOW_BYTES`]; word counts and placeholders read all of it. This keeps the
//! gate's cost flat in document length: the gate must cost little next to the fused pass.
//!
//! [`task_problem`] is the `not_a_task` check of brainstormed task definitions.

use std::collections::HashSet;
use std::sync::LazyLock;

use memchr::memmem;

use crate::text_scan::{any_residue_byte, count_words_upto, symbol_counts, word_mask_at};
use crate::validate::{Reason, Rejection};

/// Words per field read by the per-word checks.
pub const WINDOW_WORDS: usize = 12;
/// Bytes per field whose characters the symbol share is taken over.
pub const SYMBOL_WINDOW_BYTES: usize = 128;
/// Bytes per field (char-aligned) handed to language identification.
pub const LANG_WINDOW_BYTES: usize = 160;
/// Letters a language part needs before language identification is trusted.
pub const LANG_MIN_LETTERS: usize = 24;
/// Shortest field (in words) that counts as echoed when it occurs whole in the prompt.
pub const ECHO_MIN_WHOLE: usize = 4;

/// Which checks run, with their thresholds (`None` = off).
#[derive(Clone, Debug, PartialEq)]
pub struct QualityConfig {
    /// Reject a shared span of at least this many words (>= ECHO_MIN_WHOLE; smaller = stricter).
    pub prompt_echo: Option<usize>,
    /// Max share of ASCII digits + punctuation among non-space characters (smaller = stricter).
    pub format_residue: Option<f64>,
    /// Minimum share of the requested words (larger = stricter).
    pub too_few_words: Option<f64>,
    /// Max share of the most frequent word (in [0.25, 1]; smaller = stricter).
    pub degenerate: Option<f64>,
    /// Confidence at which a detected language counts (smaller = stricter).
    pub wrong_language: Option<f64>,
}

impl Default for QualityConfig {
    fn default() -> Self {
        QualityConfig {
            prompt_echo: Some(8),
            format_residue: Some(0.5),
            too_few_words: Some(0.5),
            degenerate: Some(0.5),
            wrong_language: Some(0.5),
        }
    }
}

/// Names of the checks as `QualityConfig::from_pairs` takes them (precedence order).
pub const CHECKS: [&str; 5] = [
    "format_residue",
    "degenerate",
    "prompt_echo",
    "too_few_words",
    "wrong_language",
];

impl QualityConfig {
    /// All checks off.
    pub fn off() -> Self {
        QualityConfig {
            prompt_echo: None,
            format_residue: None,
            too_few_words: None,
            degenerate: None,
            wrong_language: None,
        }
    }

    /// Checks given as (name, threshold); a NaN threshold means "on, default threshold".
    /// Checks not named are off. Errors name the bad entry.
    pub fn from_pairs(pairs: &[(String, f64)]) -> Result<Self, String> {
        let d = QualityConfig::default();
        let mut c = QualityConfig::off();
        for (name, v) in pairs {
            let v = *v;
            let given = !v.is_nan();
            let range = |lo: f64, hi: f64| -> Result<f64, String> {
                if !(lo..=hi).contains(&v) {
                    Err(format!(
                        "quality check {name}: threshold {v} is outside [{lo}, {hi}]"
                    ))
                } else {
                    Ok(v)
                }
            };
            match name.as_str() {
                "prompt_echo" => {
                    c.prompt_echo = if given {
                        if v.fract() != 0.0 {
                            return Err(format!(
                                "quality check prompt_echo: threshold {v} must be a whole number of words"
                            ));
                        }
                        Some(range(ECHO_MIN_WHOLE as f64, 64.0)? as usize)
                    } else {
                        d.prompt_echo
                    }
                }
                "format_residue" => {
                    c.format_residue = if given {
                        Some(range(0.0, 1.0)?)
                    } else {
                        d.format_residue
                    }
                }
                "too_few_words" => {
                    c.too_few_words = if given {
                        Some(range(0.0, 1.0)?)
                    } else {
                        d.too_few_words
                    }
                }
                "degenerate" => {
                    c.degenerate = if given {
                        Some(range(0.25, 1.0)?)
                    } else {
                        d.degenerate
                    }
                }
                "wrong_language" => {
                    c.wrong_language = if given {
                        Some(range(0.0, 1.0)?)
                    } else {
                        d.wrong_language
                    }
                }
                other => {
                    return Err(format!(
                        "unknown quality check '{other}' (known: {})",
                        CHECKS.join(", ")
                    ))
                }
            }
        }
        Ok(c)
    }

    pub fn any(&self) -> bool {
        self.prompt_echo.is_some()
            || self.format_residue.is_some()
            || self.too_few_words.is_some()
            || self.degenerate.is_some()
            || self.wrong_language.is_some()
    }
}

// ------------------------------------------------------------------------------ words

#[inline]
fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Case folding as the word hash applies it: `| 0x20` on every byte (ASCII letters to
/// lower case; it also folds some Latin-1 pairs, harmless for matching).
const FOLD: u64 = 0x2020_2020_2020_2020;

/// The word hash from a word's length and its first 16 bytes, folded and zero past the
/// word (`lo`, `hi`), plus `rest`: 0, or a fold of the bytes past the 16th. Two products
/// that do not wait on each other; never 0 (0 = empty slot).
#[inline(always)]
fn mix_word(len: usize, lo: u64, hi: u64, rest: u64) -> u64 {
    let a =
        (lo ^ (len as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let b = (hi ^ rest).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    (a ^ b.rotate_left(32)).rotate_left(29) | 1
}

/// Hash of the word `b[start..end]` (see `mix_word`) through a copy of its first 16
/// bytes: the reference form, and the path of words longer than 16 bytes and of texts
/// shorter than 16. `hash_word_short` and `hash_word_end` give the same value where they
/// apply.
fn hash_word(b: &[u8], start: usize, end: usize) -> u64 {
    let word = &b[start..end];
    let mut head = [0u8; 16];
    head[..word.len().min(16)].copy_from_slice(&word[..word.len().min(16)]);
    let mask = |k: usize| LOW_BYTES[k.min(8)];
    let n = word.len();
    let lo = (u64::from_le_bytes(head[..8].try_into().expect("8 bytes")) | FOLD) & mask(n);
    let hi = (u64::from_le_bytes(head[8..].try_into().expect("8 bytes")) | FOLD)
        & mask(n.saturating_sub(8));
    let rest = word
        .get(16..)
        .unwrap_or_default()
        .chunks(8)
        .fold(0u64, |acc, c| {
            let mut x = [0u8; 8];
            x[..c.len()].copy_from_slice(c);
            let x = u64::from_le_bytes(x) | (FOLD & LOW_BYTES[c.len()]);
            (acc ^ x)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .rotate_left(29)
        });
    mix_word(n, lo, hi, rest)
}

/// Masks of the low k bytes of a u64, k = 0..=8.
const LOW_BYTES: [u64; 9] = {
    let mut t = [0u64; 9];
    let mut k = 1;
    while k <= 8 {
        t[k] = u64::MAX >> (64 - 8 * k);
        k += 1;
    }
    t
};

/// Masks of the low k bytes of 16, k = 0..=16.
const LOW_BYTES_16: [[u8; 16]; 17] = {
    let mut t = [[0u8; 16]; 17];
    let mut k = 0;
    while k <= 16 {
        let mut i = 0;
        while i < k {
            t[k][i] = 0xFF;
            i += 1;
        }
        k += 1;
    }
    t
};

/// `hash_word` of a word of at most 16 bytes with 16 bytes readable from `start`: one
/// load of them, folded and masked to the word as a vector, so neither the word's
/// length nor its bytes cost a branch.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn hash_word_short(b: &[u8], start: usize, end: usize) -> u64 {
    use std::arch::x86_64::*;
    let len = end - start;
    let head: &[u8; 16] = b[start..start + 16].try_into().expect("16 bytes");
    let mask = &LOW_BYTES_16[len.min(16)];
    // SAFETY: SSE2 is part of the x86_64 baseline; both loads are of 16-byte arrays.
    let (lo, hi) = unsafe {
        let v = _mm_loadu_si128(head.as_ptr() as *const __m128i);
        let v = _mm_and_si128(
            _mm_or_si128(v, _mm_set1_epi8(0x20)),
            _mm_loadu_si128(mask.as_ptr() as *const __m128i),
        );
        (
            _mm_cvtsi128_si64(v) as u64,
            _mm_cvtsi128_si64(_mm_unpackhi_epi64(v, v)) as u64,
        )
    };
    mix_word(len, lo, hi, 0)
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn hash_word_short(b: &[u8], start: usize, end: usize) -> u64 {
    let len = end - start;
    let head: &[u8; 16] = b[start..start + 16].try_into().expect("16 bytes");
    let lo = u64::from_le_bytes(head[..8].try_into().expect("8 bytes")) | FOLD;
    let hi = u64::from_le_bytes(head[8..].try_into().expect("8 bytes")) | FOLD;
    mix_word(
        len,
        lo & LOW_BYTES[len.min(8)],
        hi & LOW_BYTES[len.saturating_sub(8).min(8)],
        0,
    )
}

/// `hash_word` of a word of at most 16 bytes that ends at least 16 bytes into the text
/// (the last words of a text, where 16 bytes from its start would run past the end):
/// the 16 bytes that end with it, shifted down to it.
#[inline(always)]
fn hash_word_end(b: &[u8], start: usize, end: usize) -> u64 {
    let len = end - start;
    let tail = u128::from_le_bytes(b[end - 16..end].try_into().expect("16 bytes"));
    let w = tail >> (8 * (16 - len));
    let lo = (w as u64 | FOLD) & LOW_BYTES[len.min(8)];
    let hi = ((w >> 64) as u64 | FOLD) & LOW_BYTES[len.saturating_sub(8).min(8)];
    mix_word(len, lo, hi, 0)
}

/// The hash of the word `b[s..e]`, by the cheapest path that is safe.
#[inline(always)]
fn hash_at(b: &[u8], s: usize, e: usize) -> u64 {
    if e - s <= 16 && s + 16 <= b.len() {
        hash_word_short(b, s, e)
    } else if e - s <= 16 && e >= 16 {
        hash_word_end(b, s, e)
    } else {
        hash_word(b, s, e)
    }
}

/// Hashes of the words of `text`, at most `limit`; returns whether the text had more.
/// Word boundaries come from 64-byte masks of word bytes: the bits where a word starts
/// and where one ends, taken in order (one block's masks serve the ~10 words in it).
fn words_into(text: &str, limit: usize, out: &mut Vec<u64>) -> bool {
    out.clear();
    let b = text.as_bytes();
    let mut open = None; // the start of a word that runs on past the block
    let mut carry = 0u64; // the last byte of the previous block is a word byte
    let mut base = 0;
    while base < b.len() {
        let m = word_mask_at(b, base);
        let prev = m << 1 | carry;
        carry = m >> 63;
        let (mut starts, mut ends) = (m & !prev, !m & prev);
        if let Some(s) = open {
            if ends == 0 {
                base += 64; // the open word fills the block
                continue;
            }
            out.push(hash_at(b, s, base + ends.trailing_zeros() as usize));
            ends &= ends - 1;
            open = None;
        }
        while ends != 0 {
            if out.len() == limit {
                return true;
            }
            let (s, e) = (starts.trailing_zeros(), ends.trailing_zeros());
            out.push(hash_at(b, base + s as usize, base + e as usize));
            starts &= starts - 1;
            ends &= ends - 1;
        }
        if starts != 0 {
            // A word starts here and ends in a later block (or with the text).
            if out.len() == limit {
                return true;
            }
            open = Some(base + starts.trailing_zeros() as usize);
        }
        base += 64;
    }
    if let Some(s) = open {
        out.push(hash_at(b, s, b.len()));
    }
    false
}

#[cfg(test)]
fn word_hash(w: &str) -> u64 {
    let mut v = Vec::new();
    words_into(w, 1, &mut v);
    v[0]
}

const P: u64 = 0x9E37_79B9_7F4A_7C15;

/// Hash of a word sequence (order-sensitive; polynomial, so windows of a fixed length
/// roll), with its length mixed in.
#[inline]
fn span_hash(words: &[u64]) -> u64 {
    let mut h = 0u64;
    for &w in words {
        h = h.wrapping_mul(P).wrapping_add(w);
    }
    h ^ (words.len() as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93)
}

/// Whether any window of `n` words has its hash in `hit` (rolling: O(words)).
#[inline(always)]
fn any_window(words: &[u64], n: usize, mut hit: impl FnMut(u64) -> bool) -> bool {
    if n == 0 || words.len() < n {
        return false;
    }
    let top = P.wrapping_pow(n as u32 - 1);
    let salt = (n as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    let mut h = 0u64;
    for &w in &words[..n] {
        h = h.wrapping_mul(P).wrapping_add(w);
    }
    if hit(h ^ salt) {
        return true;
    }
    for i in n..words.len() {
        h = h
            .wrapping_sub(words[i - n].wrapping_mul(top))
            .wrapping_mul(P)
            .wrapping_add(words[i]);
        if hit(h ^ salt) {
            return true;
        }
    }
    false
}

/// The values are hashes already: use them as they are.
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | b as u64;
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

type IdSet = HashSet<u64, std::hash::BuildHasherDefault<IdHasher>>;

/// Word spans of a prompt: every span of exactly `n` words, and (for the whole-field
/// rule) every span of ECHO_MIN_WHOLE..n words.
#[derive(Default, Debug, Clone)]
pub struct SpanSet {
    set: IdSet,
    /// Two bits per hash (two runs of its bits), ~32 bits per span: nearly every window
    /// of a field misses the set, and this answers that without probing it (a probe in
    /// 250 gets past it, where one bit in 16 let 1 in 16 through).
    bloom: Vec<u64>,
}

impl SpanSet {
    fn add_text(&mut self, text: &str, n: usize, buf: &mut Vec<u64>) {
        words_into(text, usize::MAX, buf);
        for k in ECHO_MIN_WHOLE..=n {
            for w in buf.windows(k) {
                self.set.insert(span_hash(w));
            }
        }
        let bits = (32 * self.set.len()).next_power_of_two().max(64);
        self.bloom = vec![0; bits / 64];
        for &h in &self.set {
            for i in self.bloom_bits(h) {
                self.bloom[i / 64] |= 1 << (i % 64);
            }
        }
    }

    #[inline(always)]
    fn bloom_bits(&self, h: u64) -> [usize; 2] {
        let mask = self.bloom.len() * 64 - 1;
        [(h >> 40) as usize & mask, (h >> 12) as usize & mask]
    }

    /// The literal text of a `{name}` template: placeholders split it into segments (a
    /// span never crosses one: its words depend on the row), `{{`/`}}` are braces.
    pub fn from_template(template: &str, n: usize) -> SpanSet {
        let mut s = SpanSet::default();
        let mut buf = Vec::new();
        let mut seg = String::new();
        let mut rest = template;
        while let Some(i) = rest.find(['{', '}']) {
            seg.push_str(&rest[..i]);
            let r = &rest[i..];
            if r.starts_with("{{") || r.starts_with("}}") {
                seg.push(' ');
                rest = &r[2..];
            } else if r.starts_with('{') {
                s.add_text(&seg, n, &mut buf);
                seg.clear();
                rest = match r.find('}') {
                    Some(j) => &r[j + 1..],
                    None => "",
                };
            } else {
                seg.push(' ');
                rest = &r[1..];
            }
        }
        seg.push_str(rest);
        s.add_text(&seg, n, &mut buf);
        s
    }

    #[inline(always)]
    fn has(&self, h: u64) -> bool {
        if self.bloom.is_empty() {
            return false;
        }
        let [i, j] = self.bloom_bits(h);
        self.bloom[i / 64] >> (i % 64) & 1 == 1
            && self.bloom[j / 64] >> (j % 64) & 1 == 1
            && self.set.contains(&h)
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }
}

/// The task definition a row answered, as the echo check reads it: the hashes of its
/// words and of its n-word windows, kept while rows answer the same task. Each synthetic
/// row usually answers a task of its own, so this is rebuilt for nearly every row: no
/// set of every span length (a field is checked against spans of its own length only,
/// a short one by a scan of the task's words), no allocation once the buffers have grown.
#[derive(Default)]
struct TaskWords {
    key: String,
    n: usize,
    words: Vec<u64>,
    /// With a 256-bit filter of their top byte: nearly every window of a field misses
    /// them, and the filter says so without a search. Sorted when there are more than
    /// SORTED_FROM of them (a long task), else searched in order (a sort per row costs
    /// more than the few searches that get past the filter).
    windows: Vec<u64>,
    filter: [u64; 4],
}

impl TaskWords {
    const SORTED_FROM: usize = 64;

    /// Point at `task`, with windows of `n` words.
    fn follow(&mut self, task: &str, n: usize) -> &TaskWords {
        if self.key != task || self.n != n {
            self.key.clear();
            self.key.push_str(task);
            self.n = n;
            words_into(task, usize::MAX, &mut self.words);
            self.windows.clear();
            any_window(&self.words, n, |h| {
                self.windows.push(h);
                false
            });
            if self.windows.len() > Self::SORTED_FROM {
                self.windows.sort_unstable();
            }
            self.filter = [0; 4];
            for &h in &self.windows {
                self.filter[(h >> 62) as usize] |= 1 << (h >> 56 & 63);
            }
        }
        self
    }

    /// Whether the window hash `h` (as `any_window` makes it, n words) is one of the task's.
    #[inline(always)]
    fn has_window(&self, h: u64) -> bool {
        self.filter[(h >> 62) as usize] >> (h >> 56 & 63) & 1 == 1
            && if self.windows.len() > Self::SORTED_FROM {
                self.windows.binary_search(&h).is_ok()
            } else {
                self.windows.contains(&h)
            }
    }

    /// Whether the words `w` occur in the task, in a row.
    fn has_span(&self, w: &[u64]) -> bool {
        let h = span_hash(w);
        any_window(&self.words, w.len(), |x| x == h)
    }
}

/// A char-aligned prefix of at most `max` bytes.
#[inline]
fn prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

// ------------------------------------------------------------------------------ residue

const STAND_INS: [&str; 19] = [
    "string",
    "a string",
    "text",
    "null",
    "nil",
    "nan",
    "none",
    "n/a",
    "na",
    "undefined",
    "todo",
    "tbd",
    "...",
    "…",
    "example",
    "placeholder",
    "your text here",
    "insert text here",
    "lorem ipsum",
];

fn is_ident(s: &str) -> bool {
    let mut cs = s.chars();
    matches!(cs.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && cs.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A placeholder or template/format fragment in `s`, described.
pub fn residue(s: &str) -> Option<String> {
    static LOREM: LazyLock<memmem::Finder<'static>> =
        LazyLock::new(|| memmem::Finder::new(b"orem ipsum"));
    // "Lorem ipsum" or "lorem ipsum", without lowercasing a copy.
    residue_but_filler(s, &[]).or_else(|| {
        LOREM
            .find(prefix(s, 96).as_bytes())
            .map(|_| "lorem ipsum filler".into())
    })
}

/// Whether the word hashes `words` hold "lorem ipsum" (the gate's filler check, on the
/// words it has already hashed).
fn lorem_ipsum_in(words: &[u64]) -> bool {
    static LOREM_IPSUM: LazyLock<[u64; 2]> = LazyLock::new(|| {
        let mut w = Vec::new();
        words_into("lorem ipsum", 2, &mut w);
        [w[0], w[1]]
    });
    let [lorem, ipsum] = *LOREM_IPSUM;
    words.windows(2).any(|p| p[0] == lorem && p[1] == ipsum)
}

/// Substrings that show a field holds source code, a shell line or a JSON example, where
/// braces, `%d`, `"key":` and `{{.Name}}` are the text itself rather than template residue.
const CODE_TOKENS: [&str; 24] = [
    "```",
    "();",
    "){",
    ") {",
    "=>",
    "==",
    "!=",
    "+=",
    "${",
    "$(",
    "::",
    "{{.",
    "#include",
    "def ",
    "return ",
    "function ",
    "import ",
    "print(",
    "printf(",
    "console.",
    "SELECT ",
    "</",
    "/>",
    "JSON",
];

/// Whether `s` looks like code (see CODE_TOKENS), or calls a method (`text.count(`).
/// Only asked once a residue candidate was found, so prose pays nothing for it.
fn looks_like_code(s: &str) -> bool {
    let b = s.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    CODE_TOKENS
        .iter()
        .any(|t| memmem::find(b, t.as_bytes()).is_some())
        || memchr::memchr_iter(b'(', b).any(|i| {
            let name = b[..i].iter().rev().take_while(|&&c| word(c)).count();
            let dot = i - name;
            name > 0 && dot >= 2 && b[dot - 1] == b'.' && word(b[dot - 2])
        })
}

/// Keys that wrap an answer's text when a model writes an object instead of the text.
const WRAPPER_KEYS: [&str; 6] = ["text", "content", "answer", "output", "response", "result"];

/// Whether `b[i]` lies in a Markdown inline code span: an odd number of backticks
/// before it on its line and one after it there.
fn in_inline_code(b: &[u8], i: usize) -> bool {
    let line_start = memchr::memrchr(b'\n', &b[..i]).map_or(0, |p| p + 1);
    let line_end = memchr::memchr(b'\n', &b[i..]).map_or(b.len(), |p| i + p);
    memchr::memchr_iter(b'`', &b[line_start..i]).count() % 2 == 1
        && memchr::memchr(b'`', &b[i..line_end]).is_some()
}

/// Whether the text after a key's colon holds no value: an empty string, null/None,
/// or nothing before the next `,` or `}`.
fn empty_value(after: &str) -> bool {
    let v = after.trim_start();
    v.is_empty()
        || ["\"\"", "''", "null", "None", ",", "}"]
            .iter()
            .any(|e| v.starts_with(e))
}

/// `residue` without the lorem-ipsum filler check. `answer_keys` are the field names
/// of the answer the text belongs to. In a field that looks like code
/// (`looks_like_code`), and inside a Markdown inline code span, braces, format
/// specifiers and quoted keys are text; `[N]` right after a name or a closing bracket
/// is indexing (`arr[N]`), not a placeholder. In prose, a JSON object with keys of its
/// own and values is an example the text gives; a key of the answer itself (or one
/// that wraps an answer's text, "text", "output"...) or a key with no value is the
/// answer's structure spilled into it.
fn residue_but_filler(s: &str, answer_keys: &[String]) -> Option<String> {
    let b = s.as_bytes();
    // Whether the field is code, and whether the mark at `i` is quoted as inline code:
    // asked only where a mark would fire, so prose pays nothing for them.
    let mut code: Option<bool> = None;
    let mut is_code = || *code.get_or_insert_with(|| looks_like_code(s));
    let mut backticks: Option<bool> = None;
    let mut quoted = |i: usize| {
        *backticks.get_or_insert_with(|| memchr::memchr(b'`', b).is_some()) && in_inline_code(b, i)
    };
    // Most values start and end with a visible ASCII byte: nothing to trim.
    let visible = |c: Option<&u8>| c.is_some_and(|&c| c > b' ' && c < 0x80);
    let t = if visible(b.first()) && visible(b.last()) {
        s
    } else {
        s.trim()
    };
    if t.len() <= 24 {
        let low = t
            .trim_matches(|c: char| c == '.' || c == '"' || c == '\'')
            .to_lowercase();
        let low = if low.is_empty() { t.to_string() } else { low };
        if STAND_INS.contains(&low.as_str()) {
            return Some(format!("stand-in value {t:?}"));
        }
    }
    if (t.starts_with('{') && t.ends_with('}')) || (t.starts_with('[') && t.ends_with(']')) {
        return Some(format!("bare JSON/template fragment {:?}", prefix(t, 40)));
    }
    // A whole value that is a snake_case identifier or a lone markup tag is a name or a
    // formatting token the model wrote instead of text ("the_positive_doc", "<pre>").
    if t.len() <= 64 && t.contains('_') && is_ident(t) {
        return Some(format!("identifier {t:?} instead of text"));
    }
    if t.len() <= 32
        && t.starts_with('<')
        && t.ends_with('>')
        && is_ident(t[1..t.len() - 1].trim_matches('/'))
    {
        return Some(format!("markup tag {t:?} instead of text"));
    }
    if !any_residue_byte(b) {
        return None; // no brace, bracket, percent sign or colon to judge
    }
    for i in memchr::memchr3_iter(b'{', b'[', b'%', b) {
        let rest = &s[i + 1..];
        match b[i] {
            b'{' => {
                if rest.trim_start().starts_with('{') {
                    if is_code() || quoted(i) {
                        continue;
                    }
                    return Some("template brace '{{'".into());
                }
                if let Some(j) = rest.find('}') {
                    let inner = &rest[..j];
                    if j <= 40
                        && (inner.is_empty()
                            || inner.bytes().all(|c| c.is_ascii_digit())
                            || is_ident(inner))
                        && !is_code()
                        && !quoted(i)
                    {
                        return Some(format!("unfilled placeholder {{{inner}}}"));
                    }
                }
            }
            b'[' => {
                let after_name = i > 0
                    && matches!(b[i - 1], b'0'..=b'9' | b'A'..=b'Z' | b'a'..=b'z' | b'_' | b']' | b')');
                if after_name {
                    continue;
                }
                if let Some(j) = rest.find(']') {
                    let inner = rest[..j].trim();
                    let low = inner.to_ascii_lowercase();
                    let caps = !inner.is_empty()
                        && inner.len() <= 3
                        && inner.bytes().all(|c| c.is_ascii_uppercase());
                    let dots = inner.is_empty() || inner == "..." || inner == "…";
                    let words = j <= 60
                        && [
                            "insert",
                            "your ",
                            "enter ",
                            "add ",
                            "placeholder",
                            "name of",
                        ]
                        .iter()
                        .any(|p| low.starts_with(p));
                    if (caps || dots || words) && !quoted(i) {
                        return Some(format!("template placeholder [{inner}]"));
                    }
                }
            }
            _ => {
                let next = rest.as_bytes().first().copied();
                if matches!(next, Some(b's' | b'd' | b'i' | b'f' | b'r' | b'x' | b'('))
                    && !rest
                        .as_bytes()
                        .get(1)
                        .is_some_and(|c| c.is_ascii_alphabetic())
                    && !is_code()
                    && !quoted(i)
                {
                    return Some(format!("format specifier %{}", next.unwrap() as char));
                }
            }
        }
    }
    // `"key":` with an identifier key, or Python's `{'key':` / `, 'key':` (quotes are
    // common in prose, so only after an object's `{` or `,`). Colons are rare, so one
    // pass for them finds both kinds.
    for i in memchr::memchr_iter(b':', b) {
        let quote = match i.checked_sub(1).map(|q| b[q]) {
            Some(b'"') => '"',
            Some(b'\'') => '\'',
            _ => continue,
        };
        let head = &s[..i - 1];
        let Some(q) = head.rfind(quote) else {
            continue;
        };
        let key = &head[q + 1..];
        let opens = quote == '"' || head[..q].trim_end().ends_with(['{', ',']);
        if !opens || !is_ident(key) || quoted(i) || is_code() {
            continue;
        }
        let of_answer = answer_keys.iter().any(|k| k == key) || WRAPPER_KEYS.contains(&key);
        if of_answer || empty_value(&s[i + 1..]) {
            let why = if of_answer {
                "a key of the answer"
            } else {
                "a key with no value"
            };
            return Some(format!("object fragment {quote}{key}{quote}: ({why})"));
        }
    }
    None
}

// ------------------------------------------------------------------------------ languages

/// whatlang's language for an e5x language name (English name), if it knows it.
pub fn lang_of_name(name: &str) -> Option<whatlang::Lang> {
    use whatlang::Lang;
    let alias = match name {
        "Chinese" => Some(Lang::Cmn),
        "Slovenian" => Some(Lang::Slv),
        "Norwegian" => Some(Lang::Nob),
        "Sinhala" => Some(Lang::Sin),
        "Persian" | "Farsi" => Some(Lang::Pes),
        "Odia" => Some(Lang::Ori),
        _ => None,
    };
    alias.or_else(|| {
        Lang::all()
            .iter()
            .copied()
            .find(|l| l.eng_name().eq_ignore_ascii_case(name))
    })
}

/// Languages whatlang cannot reliably tell apart: detecting one when another of the same
/// group was asked for is not evidence of a wrong language.
fn same_group(a: whatlang::Lang, b: whatlang::Lang) -> bool {
    use whatlang::Lang::*;
    const GROUPS: [&[whatlang::Lang]; 7] = [
        &[Dan, Nob, Swe],
        &[Nld, Afr],
        &[Hrv, Srp, Slv, Mkd, Bul],
        &[Ces, Slk],
        &[Hin, Mar, Nep],
        &[Ind, Jav],
        &[Rus, Ukr, Bel],
    ];
    a == b || GROUPS.iter().any(|g| g.contains(&a) && g.contains(&b))
}

/// Languages outside whatlang's set that it mistakes for one inside it.
fn unknown_lookalike(name: &str, got: whatlang::Lang) -> bool {
    use whatlang::Lang::*;
    match name {
        "Malay" => got == Ind,
        "Galician" => matches!(got, Por | Spa),
        "Bosnian" => matches!(got, Hrv | Srp | Slv),
        "Western Frisian" => got == Nld,
        _ => false,
    }
}

// ------------------------------------------------------------------------------ stop words

/// Languages with a stop-word list (the stop-words crate: NLTK's list where it has one,
/// else Stopwords ISO), as ISO 639-1 codes; a language is one bit of a u64.
pub const STOPWORD_LANGS: [&str; 61] = [
    "af", "ar", "az", "bg", "bn", "br", "ca", "cs", "da", "de", "el", "en", "eo", "es", "et", "eu",
    "fa", "fi", "fr", "ga", "gl", "gu", "ha", "he", "hi", "hr", "hu", "hy", "id", "it", "ja", "kk",
    "ko", "ku", "la", "lt", "lv", "mr", "ms", "ne", "nl", "no", "pl", "pt", "ro", "ru", "sk", "sl",
    "so", "st", "sv", "sw", "tg", "th", "tl", "tr", "uk", "ur", "vi", "yo", "zh",
];

/// Stop-word lists of languages that share most of their function words: a hit in a
/// sibling's list is not evidence against the language asked for.
const STOPWORD_SIBLINGS: [&[&str]; 8] = [
    &["da", "no", "sv"],
    &["nl", "af"],
    &["hr", "sl"],
    &["cs", "sk"],
    &["hi", "mr", "ne"],
    &["id", "ms", "tl"],
    &["ru", "uk", "kk", "tg", "bg"],
    &["es", "gl", "pt", "ca"],
];

/// Stop-word score (see stopword_scores) the requested language needs in a field's first
/// words to count as shown, and how many times any other language's it must be.
pub const STOPWORD_MIN: f32 = 1.5;
/// Scores are sums of shares 1/k in fixed point (integer adds: exact, and free of the
/// float conversions a per-word mask would need): one whole is SHARE_ONE.
const SHARE_ONE: u32 = 1 << 24;
const STOPWORD_MIN_FIXED: u32 = (STOPWORD_MIN * SHARE_ONE as f32) as u32;
/// Words read for stop words when the first WINDOW_WORDS do not settle the language.
pub const STOPWORD_WORDS: usize = 32;
pub const STOPWORD_MARGIN: f32 = 1.25;

/// Word hash (as `words_into` makes it) -> the languages whose list holds the word: a
/// table where each word has exactly one slot, found without probing ("hash and
/// displace": the words fall into small groups, and each group gets the displacement
/// that puts its words in free slots). Text mixes stop words and other words at random,
/// so a lookup whose path depends on which it is (probe on, stop at an empty slot) costs
/// a mispredicted branch every word or two; here every lookup is the same few
/// instructions and one load of the slot. A slot keeps a 32-bit fold of the word's hash:
/// another word reads as this one with odds of ~2^-32.
struct StopTable {
    /// Per group of words, the displacement of its slots.
    disp: Vec<u16>,
    slots: Vec<StopSlot>,
    /// 64 - log2(disp.len()), 64 - log2(slots.len()).
    group_shift: u32,
    slot_shift: u32,
}

#[derive(Clone, Copy, Default, Debug, PartialEq)]
#[repr(C, align(16))]
struct StopSlot {
    /// A fold of the word hash, low bit set (0 = empty).
    key: u32,
    /// 1 / how many languages hold the word, in SHARE_ONE units.
    share: u32,
    /// The languages (bits of STOPWORD_LANGS) whose list holds the word.
    langs: u64,
}

/// 1 / `k` in SHARE_ONE units (0 for 0).
#[inline]
fn share_of(k: u32) -> u32 {
    SHARE_ONE.checked_div(k).unwrap_or(0)
}

impl StopTable {
    /// A table of the words `langs` (word hash -> languages): slots for all of them
    /// rounded up to a power of two (about 0.9 full for the ~15k stop words, 256 KB, so
    /// it stays in cache; twice as many when no displacement of some group fits), about
    /// four words a group.
    fn build(langs: &std::collections::HashMap<u64, u64>) -> StopTable {
        let n = langs.len().max(1);
        let groups = (n / 4).next_power_of_two().max(2);
        let mut slots = n.next_power_of_two();
        loop {
            let mut t = StopTable {
                disp: vec![0; groups],
                slots: vec![StopSlot::default(); slots],
                group_shift: 64 - groups.trailing_zeros(),
                slot_shift: 64 - slots.trailing_zeros(),
            };
            let mut members: Vec<Vec<u64>> = vec![Vec::new(); groups];
            for &h in langs.keys() {
                members[t.group(h)].push(h);
            }
            // Largest groups first, while the most slots are free; ties by first hash,
            // so the table is the same on every run.
            members.iter_mut().for_each(|m| m.sort_unstable());
            let mut order: Vec<usize> = (0..groups).collect();
            order.sort_by_key(|&g| {
                (
                    std::cmp::Reverse(members[g].len()),
                    members[g].first().copied(),
                )
            });
            let placed = order.iter().all(|&g| {
                let fits = |d: u16, t: &StopTable| {
                    let mut at: Vec<usize> = members[g].iter().map(|&h| t.slot(h, d)).collect();
                    let free = at.iter().all(|&i| t.slots[i].key == 0);
                    at.sort_unstable();
                    at.dedup();
                    free && at.len() == members[g].len()
                };
                let Some(d) = (0..=u16::MAX).find(|&d| fits(d, &t)) else {
                    return false;
                };
                t.disp[g] = d;
                for &h in &members[g] {
                    let l = langs[&h];
                    let i = t.slot(h, d);
                    t.slots[i] = StopSlot {
                        key: StopTable::key(h),
                        share: share_of(l.count_ones()),
                        langs: l,
                    };
                }
                true
            });
            if placed {
                return t;
            }
            slots *= 2;
        }
    }

    #[inline(always)]
    fn key(h: u64) -> u32 {
        (h ^ (h >> 32)) as u32 | 1
    }

    /// The word's group: top bits of one product of its hash (a word hash's own low bits
    /// mostly reflect its first bytes: "the", "then", "there").
    #[inline(always)]
    fn group(&self, h: u64) -> usize {
        (h.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> self.group_shift) as usize
    }

    /// The word's slot under displacement `d`: a start and an odd step from two more
    /// products, `d` steps on (words of one group part ways as `d` grows).
    #[inline(always)]
    fn slot(&self, h: u64, d: u16) -> usize {
        let start = h.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        let step = h.wrapping_mul(0xD6E8_FEB8_6659_FD93) | 1;
        (start.wrapping_add((d as u64).wrapping_mul(step)) >> self.slot_shift) as usize
    }

    /// The languages of `h` (0: in no list) and the share of each (see `share_of`).
    #[inline(always)]
    fn get(&self, h: u64) -> (u64, u32) {
        let s = &self.slots[self.slot(h, self.disp[self.group(h)])];
        s.if_key(StopTable::key(h))
    }
}

impl StopSlot {
    /// (langs, share) if the slot holds `key`, else (0, 0).
    #[cfg(any(test, not(target_arch = "x86_64")))]
    #[inline(always)]
    fn if_key_scalar(&self, key: u32) -> (u64, u32) {
        if self.key == key {
            (self.langs, self.share)
        } else {
            (0, 0)
        }
    }

    /// `if_key_scalar` as an SSE2 mask: written out because the compiler makes the scalar
    /// form a branch, which mispredicts as often as stop words and other words alternate.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn if_key(&self, key: u32) -> (u64, u32) {
        use std::arch::x86_64::*;
        // SAFETY: SSE2 is part of the x86_64 baseline; a slot is 16 bytes, 16-aligned.
        unsafe {
            let v = _mm_load_si128(self as *const StopSlot as *const __m128i);
            let hit = _mm_shuffle_epi32(_mm_cmpeq_epi32(v, _mm_cvtsi32_si128(key as i32)), 0);
            let v = _mm_and_si128(v, hit);
            let langs = _mm_cvtsi128_si64(_mm_unpackhi_epi64(v, v)) as u64;
            let share = _mm_cvtsi128_si32(_mm_shuffle_epi32(v, 1)) as u32;
            (langs, share)
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    #[inline(always)]
    fn if_key(&self, key: u32) -> (u64, u32) {
        self.if_key_scalar(key)
    }
}

static STOPWORDS: LazyLock<StopTable> = LazyLock::new(|| {
    let mut langs = std::collections::HashMap::new();
    let mut buf = Vec::new();
    for (bit, code) in STOPWORD_LANGS.iter().enumerate() {
        for w in stop_words::lookup(code).unwrap_or_default().iter() {
            // Entries of two words ("don't" is "don" + "t" here) cannot match one word.
            if !words_into(w, 1, &mut buf) && buf.len() == 1 {
                *langs.entry(buf[0]).or_insert(0u64) |= 1u64 << bit;
            }
        }
    }
    StopTable::build(&langs)
});

/// Bit of `code` in STOPWORD_LANGS.
fn stopword_bit(code: &str) -> Option<u8> {
    STOPWORD_LANGS
        .iter()
        .position(|c| *c == code)
        .map(|i| i as u8)
}

/// Per language bit: its bit and its siblings' (see STOPWORD_SIBLINGS).
static SIBLING_MASKS: LazyLock<[u64; 64]> = LazyLock::new(|| {
    let mut masks = [0u64; 64];
    for (bit, code) in STOPWORD_LANGS.iter().enumerate() {
        masks[bit] = STOPWORD_SIBLINGS
            .iter()
            .filter(|g| g.contains(code))
            .flat_map(|g| g.iter())
            .filter_map(|c| stopword_bit(c))
            .fold(1u64 << bit, |m, b| m | 1u64 << b);
    }
    masks
});

/// Language names (as requests name them) that have a stop-word list, with its bit.
#[derive(Default, Debug, Clone)]
pub struct Languages {
    bits: std::collections::HashMap<String, u8>,
}

impl Languages {
    /// From (language name, ISO 639-1 code) pairs; codes without a list are left out.
    pub fn new<I: IntoIterator<Item = (String, String)>>(names_codes: I) -> Languages {
        let bits = names_codes
            .into_iter()
            .filter_map(|(name, code)| stopword_bit(&code).map(|b| (name, b)))
            .collect();
        Languages { bits }
    }

    fn bit(&self, name: &str) -> Option<u8> {
        self.bits.get(name).copied()
    }
}

/// Languages of the word `w` that count against the requested language (bit mask `me`,
/// 0 for a language without a list) outside `siblings` (which hold `me`), whether the
/// requested language is one of its languages, and the share of its weight each of them
/// gets, `1 / (others + mine)` (0: the word is in none of them).
#[inline(always)]
fn stopword_share(table: &StopTable, w: u64, me: u64, siblings: u64) -> (u64, u32, u32) {
    let (langs, share) = table.get(w);
    let others = langs & !siblings;
    let is_mine = (langs & me != 0) as u32;
    // Mostly no sibling holds the word: then the holders are all its languages, and the
    // share is the table's (no popcount instruction in the x86_64 baseline, no division).
    let near = langs & siblings & !me;
    if near == 0 {
        return (others, is_mine, share);
    }
    (
        others,
        is_mine,
        share_of(langs.count_ones() - near.count_ones()),
    )
}

/// Stop-word scores of `words` for the requested language (`me`, see stopword_share), and
/// for each language outside `siblings` into `scores` (by bit) with the best of them:
/// each word that is a stop word adds 1/k to each of the k languages whose list holds
/// it, so words many languages share count little.
fn stopword_scores(words: &[u64], me: u64, siblings: u64, scores: &mut [u32; 64]) -> (u32, u32) {
    let table = &*STOPWORDS;
    *scores = [0; 64];
    let (mut mine, mut best_other) = (0u32, 0u32);
    for &w in words {
        let (others, is_mine, share) = stopword_share(table, w, me, siblings);
        if share == 0 {
            continue; // a word in no list, or in the siblings' lists only
        }
        mine += is_mine * share;
        let mut rest = others;
        while rest != 0 {
            let b = rest.trailing_zeros() as usize;
            scores[b] += share;
            best_other = best_other.max(scores[b]);
            rest &= rest - 1;
        }
    }
    (mine, best_other)
}

/// Whether `words` (hashes of a field's first words) show the language of `bit` by its
/// stop words (see stopword_scores): a score of at least STOPWORD_MIN, and STOPWORD_MARGIN
/// times any other language's. Function words are what a text cannot avoid, so this is
/// strong evidence for the language; its absence is no evidence against it (the caller
/// then asks whatlang).
fn stopwords_show(words: &[u64], bit: u8) -> bool {
    // First the score of `bit` and a bound on every other language's: the shares of all
    // words that count for some other language (a sum over a superset of each language's
    // words, so never below its score). Most fields settle here without scoring each
    // language.
    let (table, siblings) = (&*STOPWORDS, SIBLING_MASKS[bit as usize & 63]);
    let me = 1u64 << (bit & 63);
    let (mut mine, mut bound) = (0u32, 0u32);
    for &w in words {
        // No branch on whether the word is a stop word (a coin flip per word in prose):
        // a word in no list has a share of 0.
        let (others, is_mine, share) = stopword_share(table, w, me, siblings);
        mine += is_mine * share;
        bound += (others != 0) as u32 * share;
    }
    let beats = |mine: u32, other: u32| mine as f64 >= STOPWORD_MARGIN as f64 * other as f64;
    if mine < STOPWORD_MIN_FIXED {
        return false;
    }
    if beats(mine, bound) {
        return true;
    }
    let (mine, other) = stopword_scores(words, me, siblings, &mut [0; 64]);
    beats(mine, other)
}

/// The languages (bits of STOPWORD_LANGS) other than `bit`'s (its siblings included; any
/// language when the requested one has no list, `bit` None) whose stop words in `words`
/// score at least STOPWORD_MIN (twice that over more than WINDOW_WORDS words: chance hits
/// in the large lists grow with the words read) and above the requested language: the
/// evidence a text is in another language, which whatlang is then asked to confirm.
fn outscoring_languages(words: &[u64], bit: Option<u8>) -> u64 {
    let me = bit.map_or(0, |b| 1u64 << (b & 63));
    let mut scores = [0u32; 64];
    let (mine, best) = stopword_scores(words, me, me, &mut scores);
    let min = STOPWORD_MIN_FIXED << (words.len() > WINDOW_WORDS) as u32;
    if best < min || best <= mine {
        return 0;
    }
    (0..64)
        .filter(|&b| scores[b] >= min && scores[b] > mine)
        .fold(0, |m, b| m | 1u64 << b)
}

/// whatlang's language of each stop-word list (by bit), where whatlang knows it.
static STOPWORD_WHATLANG: LazyLock<[Option<whatlang::Lang>; 64]> = LazyLock::new(|| {
    use whatlang::Lang::*;
    #[rustfmt::skip]
    const KNOWN: [(&str, whatlang::Lang); 48] = [
        ("af", Afr), ("ar", Ara), ("az", Aze), ("bg", Bul), ("bn", Ben), ("ca", Cat),
        ("cs", Ces), ("da", Dan), ("de", Deu), ("el", Ell), ("en", Eng), ("eo", Epo),
        ("es", Spa), ("et", Est), ("fa", Pes), ("fi", Fin), ("fr", Fra), ("gu", Guj),
        ("he", Heb), ("hi", Hin), ("hr", Hrv), ("hu", Hun), ("hy", Hye), ("id", Ind),
        ("it", Ita), ("ja", Jpn), ("ko", Kor), ("la", Lat), ("lt", Lit), ("lv", Lav),
        ("mr", Mar), ("ne", Nep), ("nl", Nld), ("no", Nob), ("pl", Pol), ("pt", Por),
        ("ro", Ron), ("ru", Rus), ("sk", Slk), ("sl", Slv), ("sv", Swe), ("th", Tha),
        ("tl", Tgl), ("tr", Tur), ("uk", Ukr), ("ur", Urd), ("vi", Vie), ("zh", Cmn),
    ];
    let mut langs = [None; 64];
    for (code, lang) in KNOWN {
        if let Some(bit) = stopword_bit(code) {
            langs[bit as usize] = Some(lang);
        }
    }
    langs
});

/// The whatlang detector for a field of `want` (known to whatlang) outscored by the
/// languages `outscoring`: one that chooses among them and `want` only, five to ten times
/// cheaper than weighing every language of the script, or None (every language) when
/// whatlang does not know one of them.
fn detector_between(want: Option<whatlang::Lang>, outscoring: u64) -> Option<whatlang::Detector> {
    let mut allow = vec![want?];
    let mut rest = outscoring;
    while rest != 0 {
        allow.push(STOPWORD_WHATLANG[rest.trailing_zeros() as usize]?);
        rest &= rest - 1;
    }
    Some(whatlang::Detector::with_allowlist(allow))
}

// ------------------------------------------------------------------------------ the gate

/// What the gate knows about one field of a task type.
#[derive(Clone, Debug)]
pub struct FieldPlan {
    /// Index into the row's language parts ("English-French" -> 0 English, 1 French);
    /// None = the prompt does not fix this field's language.
    pub lang_part: Option<usize>,
}

/// One task type's plan: a field plan per schema string property, and its template spans.
#[derive(Clone, Debug)]
pub struct TypePlan {
    pub fields: Vec<FieldPlan>,
    pub template: SpanSet,
}

impl TypePlan {
    pub fn new(template: &str, fields: Vec<FieldPlan>, cfg: &QualityConfig) -> TypePlan {
        TypePlan {
            fields,
            template: match cfg.prompt_echo {
                Some(n) => SpanSet::from_template(template, n),
                None => SpanSet::default(),
            },
        }
    }
}

/// Per-row inputs of the gate besides the values.
#[derive(Default, Clone, Copy)]
pub struct RowCtx<'a> {
    /// The task definition the row answered (echo check).
    pub task: Option<&'a str>,
    /// Requested language(s), parts joined with '-' (bitext: "English-French").
    pub language: Option<&'a str>,
    /// Which language names have stop-word lists (None: whatlang alone).
    pub languages: Option<&'a Languages>,
}

/// Reusable buffers of one thread.
#[derive(Default)]
pub struct GateScratch {
    /// Window word hashes per field, and whether the field had more words.
    words: Vec<(Vec<u64>, bool)>,
    task: TaskWords,
    /// The row's language parts, as (name, stop-word bit), for `lang_key`.
    lang_key: String,
    lang_parts: Vec<(String, Option<u8>)>,
    /// (field, language part) of fields whose stop words did not show their language.
    unsettled: Vec<(usize, usize)>,
    longer_window: Vec<u64>,
    degenerate_clear: DegenerateClear,
}

/// Per window length n (0..=WINDOW_WORDS), the fewest distinct words that clear a
/// window of the degenerate check at a top-word share: more than half the words, more
/// than the fewest repeats that fire leave room for, and (1 - share) of them. Kept for
/// the last share asked (the thresholds are per row otherwise).
#[derive(Default)]
struct DegenerateClear {
    share_bits: Option<u64>,
    min: [u32; WINDOW_WORDS + 1],
}

impl DegenerateClear {
    fn get(&mut self, top_share: f64) -> &[u32; WINDOW_WORDS + 1] {
        if self.share_bits != Some(top_share.to_bits()) {
            for (n, min) in self.min.iter_mut().enumerate() {
                let n = n as f64;
                // Fewest repeats that fire (floor of share x n, plus one).
                let top_min = (top_share * n) as usize as f64 + 1.0;
                let clears =
                    |d: f64| d > n / 2.0 && d >= n - top_min + 2.0 && d >= (1.0 - top_share) * n;
                *min = (0..=64u32).find(|&d| clears(d as f64)).unwrap_or(u32::MAX);
            }
            self.share_bits = Some(top_share.to_bits());
        }
        &self.min
    }
}

/// (distinct words, count of the most frequent) of a window of word hashes: an
/// open-addressing table on the stack (the window is at most WINDOW_WORDS long).
fn count_words(words: &[u64]) -> (usize, u32) {
    const CAP: usize = (2 * WINDOW_WORDS).next_power_of_two();
    let mut keys = [0u64; CAP];
    let mut counts = [0u32; CAP];
    let (mut distinct, mut top) = (0usize, 0u32);
    for &w in words.iter().take(WINDOW_WORDS) {
        let mut i = (w >> 48) as usize & (CAP - 1); // high bits: the low one is always 1
        while keys[i] != 0 && keys[i] != w {
            i = (i + 1) & (CAP - 1);
        }
        if keys[i] == 0 {
            keys[i] = w;
            distinct += 1;
        }
        counts[i] += 1;
        top = top.max(counts[i]);
    }
    (distinct, top)
}

/// Fewer than 4 distinct bytes among the first 64 non-space bytes (at least 10 of them).
/// Bytes, not characters: a repeated multibyte character has its 2-4 bytes, still few.
#[inline]
fn few_distinct_bytes(b: &[u8]) -> bool {
    let mut seen = [0u64; 4];
    let mut n = 0;
    for &x in b.iter().filter(|&&x| x > b' ').take(64) {
        seen[(x >> 6) as usize] |= 1 << (x & 63);
        n += 1;
    }
    n >= 10 && seen.iter().map(|w| w.count_ones()).sum::<u32>() < 4
}

fn rej(reason: Reason, field: &str, message: String) -> Option<Rejection> {
    Some(Rejection {
        reason,
        field: Some(field.replace('~', "~0").replace('/', "~1")),
        message,
    })
}

/// Run the gate on one accepted row. `names[k]`, `values[k]` and `min_words[k]` belong
/// to the k-th string property of the row's schema. None = keep.
pub fn check_row(
    cfg: &QualityConfig,
    plan: &TypePlan,
    names: &[String],
    values: &[Option<&str>],
    min_words: &[Option<u32>],
    ctx: RowCtx<'_>,
    sc: &mut GateScratch,
) -> Option<Rejection> {
    let present = || {
        names
            .iter()
            .zip(values)
            .enumerate()
            .filter_map(|(k, (n, v))| v.map(|v| (k, n.as_str(), v)))
    };
    // The first words of each field, hashed once for every word-level check.
    if sc.words.len() < values.len() {
        sc.words.resize_with(values.len(), Default::default);
    }
    // Every check but too_few_words (which counts whitespace tokens itself) reads them.
    let reads_words = cfg.format_residue.is_some()
        || cfg.degenerate.is_some()
        || cfg.prompt_echo.is_some()
        || cfg.wrong_language.is_some();
    if reads_words {
        for (k, _, v) in present() {
            let (w, more) = &mut sc.words[k];
            *more = words_into(v, WINDOW_WORDS, w);
        }
    }
    if let Some(max_share) = cfg.format_residue {
        for (k, name, v) in present() {
            if let Some(what) = residue_but_filler(v, names) {
                return rej(Reason::FormatResidue, name, format!("{name}: {what}"));
            }
            if lorem_ipsum_in(&sc.words[k].0) {
                return rej(
                    Reason::FormatResidue,
                    name,
                    format!("{name}: lorem ipsum filler"),
                );
            }
            let (nonspace, symbols) = symbol_counts(prefix(v, SYMBOL_WINDOW_BYTES).as_bytes());
            if nonspace >= 4 && symbols as f64 > max_share * nonspace as f64 {
                return rej(
                    Reason::FormatResidue,
                    name,
                    format!("{name}: {symbols} of {nonspace} characters are digits or punctuation"),
                );
            }
        }
    }
    if let Some(top_share) = cfg.degenerate {
        for (k, name, v) in present() {
            let words = &sc.words[k].0;
            let n = words.len();
            // Few distinct characters hide in few words ("zzzzzz zzzzzz", "ababab...").
            if n < 4 && few_distinct_bytes(v.as_bytes()) {
                return rej(
                    Reason::Degenerate,
                    name,
                    format!("{name}: fewer than 4 distinct characters"),
                );
            }
            // A lower bound on the distinct words (their hashes' top bits, as a set of
            // 64) settles ordinary text at once: a period or a dominant word needs few
            // distinct words. Only text this cannot clear is counted exactly.
            let seen = words.iter().fold(0u64, |m, &w| m | 1 << (w >> 58));
            if seen.count_ones() >= sc.degenerate_clear.get(top_share)[n.min(WINDOW_WORDS)] {
                continue;
            }
            if n >= 12 {
                if let Some(p) =
                    (1..=n / 2).find(|&p| words[p..].iter().zip(words).all(|(a, b)| a == b))
                {
                    return rej(
                        Reason::Degenerate,
                        name,
                        format!("{name}: its first {n} words repeat every {p}"),
                    );
                }
            }
            if n >= 4 {
                let (distinct, top) = count_words(words);
                if top as f64 > top_share * n as f64 {
                    return rej(
                        Reason::Degenerate,
                        name,
                        format!("{name}: one word is {top} of its {n} words"),
                    );
                }
                if n >= 12 && (distinct as f64) < (1.0 - top_share) * n as f64 {
                    return rej(
                        Reason::Degenerate,
                        name,
                        format!("{name}: only {distinct} distinct words in {n}"),
                    );
                }
            }
        }
    }
    if let Some(n) = cfg.prompt_echo {
        let task = ctx.task.map(|t| sc.task.follow(t, n));
        for (k, name, _) in present() {
            let (w, more) = (&sc.words[k].0, sc.words[k].1);
            let whole = !more
                && w.len() >= ECHO_MIN_WHOLE
                && w.len() < n
                && (plan.template.has(span_hash(w)) || task.is_some_and(|t| t.has_span(w)));
            let span = any_window(w, n, |h| {
                plan.template.has(h) || task.is_some_and(|t| t.has_window(h))
            });
            if whole || span {
                let what = if whole {
                    "the whole field".to_string()
                } else {
                    format!("a span of {n}+ words")
                };
                return rej(
                    Reason::PromptEcho,
                    name,
                    format!("{name}: {what} is copied from the prompt (template or task)"),
                );
            }
        }
    }
    if let Some(ratio) = cfg.too_few_words {
        for (k, name, v) in present() {
            if let Some(Some(asked)) = min_words.get(k) {
                let x = ratio * *asked as f64;
                let need = x as usize + ((x as usize as f64) < x) as usize; // ceil, no libm call
                let got = count_words_upto(v.as_bytes(), need);
                if got < need {
                    return rej(
                        Reason::TooFewWords,
                        name,
                        format!("{name}: {got} words where the request asked for {asked}"),
                    );
                }
            }
        }
    }
    if let (Some(conf), Some(lang)) = (cfg.wrong_language, ctx.language) {
        if sc.lang_key != lang || sc.lang_parts.is_empty() {
            sc.lang_parts = lang
                .split('-')
                .map(str::trim)
                .map(|p| (p.to_string(), ctx.languages.and_then(|l| l.bit(p))))
                .collect();
            sc.lang_key.clear();
            sc.lang_key.push_str(lang);
        }
        // Fields whose function words show their language need no whatlang; a short
        // field (one window of words) that does not is left alone when a sibling field
        // of the same language part did, as language ID on a few words is noise.
        let mut shown = 0u64; // bit p: a field of language part p showed its language
        let mut unsettled = std::mem::take(&mut sc.unsettled);
        unsettled.clear();
        let short = |k: usize| !sc.words[k].1 && sc.words[k].0.len() < WINDOW_WORDS;
        // Longer fields first: a short one whose sibling showed needs no scoring at all.
        for short_pass in [false, true] {
            for (k, _, _) in present() {
                if short(k) != short_pass {
                    continue;
                }
                let Some(p) = plan.fields.get(k).and_then(|f| f.lang_part) else {
                    continue;
                };
                let Some((_, bit)) = sc.lang_parts.get(p) else {
                    continue;
                };
                if short_pass && shown >> p.min(63) & 1 == 1 {
                    continue;
                }
                let (window, more) = (&sc.words[k].0, sc.words[k].1);
                // A window that does not settle it gets a longer one, where the text has it.
                let show = |b: u8, longer: &mut Vec<u64>| {
                    stopwords_show(window, b)
                        || more && {
                            words_into(values[k].unwrap_or_default(), STOPWORD_WORDS, longer);
                            stopwords_show(longer, b)
                        }
                };
                if bit.is_some_and(|b| show(b, &mut sc.longer_window)) {
                    shown |= 1u64 << p.min(63);
                } else {
                    unsettled.push((k, p));
                }
            }
        }
        unsettled.sort_unstable(); // the first field in schema order is the one named
        let mut verdict = None;
        for &(k, p) in &unsettled {
            let (name, v) = (names[k].as_str(), values[k].unwrap_or_default());
            let (window, more) = (&sc.words[k].0, sc.words[k].1);
            if !more && window.len() < WINDOW_WORDS && shown >> p.min(63) & 1 == 1 {
                continue;
            }
            let (want, bit) = (sc.lang_parts[p].0.as_str(), sc.lang_parts[p].1);
            let text = prefix(v, LANG_WINDOW_BYTES);
            if text.chars().filter(|c| c.is_alphabetic()).count() < LANG_MIN_LETTERS {
                continue;
            }
            // In Latin and Cyrillic script whatlang weighs trigrams of every language of
            // the script (~50 µs a field in Latin, the cost of 30 rows of the whole pass):
            // it is asked only when other languages' stop words outscore the requested
            // one's, the evidence a model drifted into them (the usual drift is into
            // English or a neighbour), and then to choose between those languages and the
            // requested one. Without that evidence the field is left alone. (Without
            // stop-word lists, `ctx.languages` None, whatlang alone decides.)
            let mut detector = None;
            if ctx.languages.is_some()
                && matches!(
                    whatlang::detect_script(text),
                    Some(whatlang::Script::Latin | whatlang::Script::Cyrillic)
                )
            {
                let mut outscoring = outscoring_languages(window, bit);
                if outscoring == 0 && more {
                    words_into(v, STOPWORD_WORDS, &mut sc.longer_window);
                    outscoring = outscoring_languages(&sc.longer_window, bit);
                }
                if outscoring == 0 {
                    continue;
                }
                detector = detector_between(lang_of_name(want), outscoring);
            }
            let found = match &detector {
                Some(d) => d.detect(text),
                None => whatlang::detect(text),
            };
            let Some(info) = found else {
                continue;
            };
            if info.confidence() < conf {
                continue;
            }
            let got = info.lang();
            let wrong = match lang_of_name(want) {
                Some(w) => !same_group(w, got),
                // Languages whatlang does not know: only a confident English is evidence
                // (the usual drift of a model that ignores the request).
                None => got == whatlang::Lang::Eng && !unknown_lookalike(want, got),
            };
            if wrong {
                verdict = rej(
                    Reason::WrongLanguage,
                    name,
                    format!(
                        "{name}: written in {} (confidence {:.2}), {want} was requested",
                        got.eng_name(),
                        info.confidence()
                    ),
                );
                break;
            }
        }
        sc.unsettled = unsettled;
        if verdict.is_some() {
            return verdict;
        }
    }
    None
}

/// Why `task` is not a usable task definition (None = it is one). `min_words` words of
/// letters are needed; identifier-style tokens (snake_case, camelCase, a mix of letters
/// and digits) must be fewer than half of the tokens; no template or format residue.
pub fn task_problem(task: &str, min_words: usize) -> Option<String> {
    let mut tokens = 0usize;
    let mut idents = 0usize;
    let mut letter_words = 0usize;
    for tok in task
        .split(|c: char| c.is_whitespace())
        .map(|t| t.trim_matches(|c: char| !is_word_char(c)))
        .filter(|t| !t.is_empty())
    {
        tokens += 1;
        let has_alpha = tok.chars().any(char::is_alphabetic);
        if has_alpha {
            letter_words += 1;
        }
        let inner_underscore = tok.trim_matches('_').contains('_');
        let camel = tok
            .as_bytes()
            .windows(2)
            .any(|w| w[0].is_ascii_lowercase() && w[1].is_ascii_uppercase());
        let mixed = has_alpha
            && tok.chars().any(|c| c.is_ascii_digit())
            && tok.chars().all(|c| c.is_ascii_alphanumeric());
        if inner_underscore || camel || mixed {
            idents += 1;
        }
    }
    if letter_words < min_words {
        return Some(format!(
            "{letter_words} word(s); a task definition is a sentence of at least {min_words}"
        ));
    }
    if idents * 2 >= tokens {
        return Some(format!(
            "{idents} of its {tokens} tokens are identifiers (snake_case, camelCase, ...)"
        ));
    }
    residue(task).map(|what| format!("format residue: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text_scan::WORD_BYTE;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    const TEMPLATE: &str =
        "Write one example for this task as a JSON object with exactly these keys:\n\
        - \"q\": a string, a query that a real user could send for the task; it is {len} long.\n\
        - \"d\": a document.\nRules:\n- Write the query and both documents in {language}.";

    fn plan(cfg: &QualityConfig) -> TypePlan {
        TypePlan::new(
            TEMPLATE,
            vec![
                FieldPlan { lang_part: Some(0) },
                FieldPlan { lang_part: Some(0) },
            ],
            cfg,
        )
    }

    fn check(
        cfg: &QualityConfig,
        q: &str,
        d: &str,
        min: [Option<u32>; 2],
        ctx: RowCtx<'_>,
    ) -> Option<(Reason, String)> {
        let p = plan(cfg);
        check_row(
            cfg,
            &p,
            &names(&["q", "d"]),
            &[Some(q), Some(d)],
            &min,
            ctx,
            &mut GateScratch::default(),
        )
        .map(|r| (r.reason, r.field.unwrap()))
    }

    const DOC: &str = "Photosynthesis converts light energy into chemical energy stored in \
        glucose. Plants absorb sunlight through chlorophyll in their leaves, take in carbon \
        dioxide from the air and water from the soil, and release oxygen as a by-product.";

    static LANGS: LazyLock<Languages> = LazyLock::new(|| {
        Languages::new(
            [
                ("English", "en"),
                ("German", "de"),
                ("French", "fr"),
                ("Spanish", "es"),
                ("Swahili", "sw"),
            ]
            .map(|(n, c)| (n.to_string(), c.to_string())),
        )
    });

    fn en() -> RowCtx<'static> {
        RowCtx {
            task: Some("Given a biology question, retrieve passages that explain the answer."),
            language: Some("English"),
            languages: Some(&LANGS),
        }
    }

    #[test]
    fn good_row_is_kept() {
        let c = QualityConfig::default();
        assert_eq!(
            check(
                &c,
                "how do plants make sugar",
                DOC,
                [Some(5), Some(30)],
                en()
            ),
            None
        );
    }

    #[test]
    fn each_check_fires() {
        let c = QualityConfig::default();
        let r = |q: &str, d: &str| check(&c, q, d, [None, None], en()).map(|x| x.0);
        assert_eq!(
            r("query about {language}", DOC),
            Some(Reason::FormatResidue)
        );
        assert_eq!(r("what is [X]", DOC), Some(Reason::FormatResidue));
        assert_eq!(r("find %s now", DOC), Some(Reason::FormatResidue));
        assert_eq!(r("string", DOC), Some(Reason::FormatResidue));
        for junk in [
            "the_positive_doc",
            "<pre>",
            "</div>",
            "nil",
            "{ { 'Sentence': 'The most similar text is S3.",
            "{'answer': 'yes'} was the reply",
        ] {
            assert!(residue(junk).is_some(), "{junk:?}");
        }
        for fine in [
            "Paris",
            "snake_case is a naming style",
            "a < b and c > d",
            "It's: fine",
            "He said 'answer': yes",
        ] {
            assert_eq!(residue(fine), None, "{fine:?}");
        }
        assert_eq!(
            r("12.5 / 3.1 = 4.03 (±0.2)", DOC),
            Some(Reason::FormatResidue)
        );
        assert_eq!(
            r("plants", "{\"d\": \"a document\"}"),
            Some(Reason::FormatResidue)
        );
        assert_eq!(
            r("spam spam spam spam spam eggs", DOC),
            Some(Reason::Degenerate)
        );
        assert_eq!(r("aaaaaaaaaaaaaaaaaa", DOC), Some(Reason::Degenerate));
        assert_eq!(
            r(
                "photosynthesis",
                "a query that a real user could send for the task and more"
            ),
            Some(Reason::PromptEcho)
        );
        // whole short field found in the task
        assert_eq!(
            r("retrieve passages that explain the answer", DOC),
            Some(Reason::PromptEcho)
        );
        let short = check(&c, "plants", "Plants make sugar.", [None, Some(50)], en());
        assert_eq!(short, Some((Reason::TooFewWords, "d".into())));
        let de = "Die Photosynthese wandelt Lichtenergie in chemische Energie um, die in \
                  Glukose gespeichert wird. Pflanzen nehmen Sonnenlicht über das Chlorophyll auf.";
        assert_eq!(
            check(&c, "wie machen Pflanzen Zucker", de, [None, None], en()),
            // the query has too few letters to judge; the document is checked
            Some((Reason::WrongLanguage, "d".into()))
        );
        let ger = RowCtx {
            language: Some("German"),
            ..en()
        };
        assert_eq!(
            check(&c, "wie machen Pflanzen Zucker", de, [None, None], ger),
            None
        );
    }

    #[test]
    fn off_and_thresholds() {
        let off = QualityConfig::off();
        assert_eq!(check(&off, "{x}", "[X]", [Some(9), Some(9)], en()), None);
        let mut c = QualityConfig::off();
        c.too_few_words = Some(1.0);
        assert!(check(&c, "a b c d", DOC, [Some(5), None], en()).is_some());
        c.too_few_words = Some(0.8);
        assert!(check(&c, "a b c d", DOC, [Some(5), None], en()).is_none());
    }

    #[test]
    fn bitext_checks_each_side() {
        // whatlang's confidence on one sentence is low (0.1 for this French one). In
        // Latin script whatlang is asked only when another language's stop words
        // outscore the requested one's: the French sentence has enough of them.
        let c = QualityConfig {
            wrong_language: Some(0.05),
            ..QualityConfig::default()
        };
        let p = TypePlan::new(
            "{x}",
            vec![
                FieldPlan { lang_part: Some(0) },
                FieldPlan { lang_part: Some(1) },
            ],
            &c,
        );
        let en = "The committee approved the new budget after a long debate on Tuesday.";
        let fr = "Le comité a approuvé le budget dans la soirée et nous avons voté pour ce plan avec les élus.";
        let run = |a: &str, b: &str, with_lists: bool| {
            check_row(
                &c,
                &p,
                &names(&["S1", "S2"]),
                &[Some(a), Some(b)],
                &[None, None],
                RowCtx {
                    task: None,
                    language: Some("English-French"),
                    languages: with_lists.then_some(&*LANGS),
                },
                &mut GateScratch::default(),
            )
            .map(|r| r.field.unwrap())
        };
        for with_lists in [false, true] {
            assert_eq!(run(en, fr, with_lists), None);
            assert_eq!(run(en, en, with_lists).as_deref(), Some("S2"));
            assert_eq!(run(fr, fr, with_lists).as_deref(), Some("S1"));
        }
    }

    #[test]
    fn every_stopword_language_has_a_list() {
        assert!(STOPWORD_LANGS.len() <= 64);
        for code in STOPWORD_LANGS {
            let words = stop_words::lookup(code).unwrap_or_default();
            assert!(words.len() >= 20, "{code}: {} stop words", words.len());
        }
        assert!(STOPWORD_SIBLINGS
            .iter()
            .flat_map(|g| g.iter())
            .all(|c| stopword_bit(c).is_some()));
    }

    fn window(text: &str) -> Vec<u64> {
        let mut w = Vec::new();
        words_into(text, WINDOW_WORDS, &mut w);
        w
    }

    #[test]
    fn stop_words_show_the_language() {
        let bit = |c| stopword_bit(c).unwrap();
        let en = window("The committee approved the new budget after a long debate on Tuesday.");
        // Dense technical prose can hold too few function words in its first words: no
        // evidence, so whatlang decides.
        assert!(!stopwords_show(&window(DOC), bit("en")));
        let nl = window("Het comité keurde de nieuwe begroting goed na een lang debat op dinsdag.");
        let ru = window("Комитет одобрил новый бюджет после долгих дебатов во вторник и в среду.");
        let fr =
            window("Le comité a approuvé le nouveau budget après un long débat mardi dernier.");
        let all = [
            "en", "fr", "es", "de", "it", "pt", "pl", "nl", "ro", "ru", "sv",
        ];
        for (words, lang) in [(&en, "en"), (&nl, "nl"), (&ru, "ru")] {
            assert!(stopwords_show(words, bit(lang)), "{lang}");
        }
        // Never evidence for a language the text is not in.
        for (words, lang) in [(&en, "en"), (&nl, "nl"), (&ru, "ru"), (&fr, "fr")] {
            for other in all.iter().filter(|o| **o != lang) {
                assert!(
                    !stopwords_show(words, bit(other)),
                    "{lang} text shown as {other}"
                );
            }
        }
        // Few words, or words of no list: no evidence either way.
        assert!(!stopwords_show(
            &window("photosynthesis chlorophyll glucose"),
            bit("en")
        ));
    }

    #[test]
    fn echo_follows_each_rows_task() {
        // One scratch over rows of different tasks, as the fused pass runs them.
        let c = QualityConfig::default();
        let p = plan(&c);
        let mut sc = GateScratch::default();
        let mut row = |task: &str, q: &str| {
            let ctx = RowCtx {
                task: Some(task),
                ..en()
            };
            let values = [Some(q), Some(DOC)];
            check_row(
                &c,
                &p,
                &names(&["q", "d"]),
                &values,
                &[None, None],
                ctx,
                &mut sc,
            )
            .map(|r| r.reason)
        };
        let a = "Find recipes that use seasonal vegetables from a farmers market in late autumn.";
        let b = "Retrieve legal opinions on tenant rights when a landlord withholds a deposit.";
        // Eight words of the task in a row, inside a longer query; seven are not enough.
        let eight = "which recipes use seasonal vegetables from a farmers market in late today";
        let seven = "which recipes use seasonal vegetables from a farmers stall in late today";
        assert_eq!(row(a, eight), Some(Reason::PromptEcho));
        assert_eq!(row(a, seven), None);
        // The next row's task replaces the last one's spans.
        assert_eq!(row(b, eight), None);
        assert_eq!(
            row(b, "tenant rights when a landlord withholds a deposit"),
            Some(Reason::PromptEcho)
        );
        // A whole short field (4 to 7 words) found anywhere in the task, and one that is not.
        assert_eq!(
            row(b, "when a landlord withholds"),
            Some(Reason::PromptEcho)
        );
        assert_eq!(row(b, "when a landlord keeps"), None);
        assert_eq!(row(a, "when a landlord withholds"), None);
        // A long task (its windows searched sorted): a span from its middle, and not.
        // Words of letters ("kaa", "kab", ...): digits would trip format_residue first.
        let word = |i: u8| format!("k{}{}", (b'a' + i / 26) as char, (b'a' + i % 26) as char);
        let long: String = (0..120).map(|i| word(i) + " ").collect();
        let span = |last: u8| {
            let inner: Vec<String> = (60..67).chain([last]).map(word).collect();
            format!("so {} then", inner.join(" "))
        };
        assert_eq!(row(&long, &span(67)), Some(Reason::PromptEcho));
        assert_eq!(row(&long, &span(69)), None);
    }

    #[test]
    fn whatlang_is_asked_when_another_language_outscores() {
        let words = |t: &str| {
            let mut w = Vec::new();
            words_into(t, STOPWORD_WORDS, &mut w);
            w
        };
        let (english_bit, fr) = (stopword_bit("en"), stopword_bit("fr"));
        let english = words(DOC);
        assert!(outscoring_languages(&english, fr) != 0);
        assert_eq!(outscoring_languages(&english, english_bit), 0);
        let by = outscoring_languages(&english, fr);
        assert_ne!(
            by & 1 << english_bit.unwrap(),
            0,
            "English is among the languages that outscore French"
        );
        // whatlang then chooses between French and those languages, and finds English;
        // a language whatlang does not know among them (Swahili) leaves it every language.
        let french = lang_of_name("French");
        let between = detector_between(french, by).expect("whatlang knows each of them");
        assert_eq!(
            between.detect(DOC).map(|i| i.lang()),
            Some(whatlang::Lang::Eng)
        );
        assert!(detector_between(french, 1 << stopword_bit("sw").unwrap()).is_none());
        assert!(detector_between(None, by).is_none());
        let known = STOPWORD_WHATLANG.iter().flatten().count();
        assert_eq!(known, 48, "each list whatlang knows has its language");
        // A language without a list: any language's stop words are another's.
        assert!(outscoring_languages(&english, None) != 0);
        // Two English-only stop words outscore French in a window of 12 words, not in 32
        // (the bar doubles over the longer window).
        let filler = |n: usize| {
            (0..n)
                .map(|i| format!("xq{i}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let two_in = |n: usize| words(&format!("which that {}", filler(n - 2)));
        assert_eq!(two_in(WINDOW_WORDS).len(), WINDOW_WORDS);
        assert!(outscoring_languages(&two_in(WINDOW_WORDS), fr) != 0);
        assert_eq!(two_in(STOPWORD_WORDS).len(), STOPWORD_WORDS);
        assert_eq!(outscoring_languages(&two_in(STOPWORD_WORDS), fr), 0);
        let no_function_words = words("photosynthesis chlorophyll glucose sunlight leaves");
        assert_eq!(outscoring_languages(&no_function_words, None), 0);
        assert_eq!(outscoring_languages(&no_function_words, fr), 0);

        // Uzbek has no list: English drift is still caught (its stop words outscore,
        // whatlang names it); Uzbek text, whose few words in other lists ("esa", "har")
        // score no language that high, is kept without whatlang's trigram pass.
        let c = QualityConfig::default();
        let uz = RowCtx {
            language: Some("Uzbek"),
            ..en()
        };
        let uzbek = "Toshkent shahrida yangi kutubxona ochildi. Kutubxonada o'n ming kitob \
                     bor, kitobxonlar esa har kuni kelishadi. Shahar hokimi marosimda nutq so'zladi.";
        assert_eq!(outscoring_languages(&words(uzbek), None), 0);
        assert_eq!(
            check(&c, "kutubxona Toshkent", uzbek, [None, None], uz),
            None
        );
        assert_eq!(
            check(&c, "kutubxona Toshkent", DOC, [None, None], uz),
            Some((Reason::WrongLanguage, "d".into()))
        );
    }

    #[test]
    fn short_field_rides_on_a_sibling_that_shows_the_language() {
        // A short English query whatlang might misread is not judged when the document
        // of the same row shows English by its function words; a document that does not
        // is still judged (and rejected) by whatlang.
        let c = QualityConfig::default();
        let query = "photosynthesis chlorophyll glucose sugar energy leaves";
        assert_eq!(check(&c, query, DOC, [None, None], en()), None);
        let de = "Die Photosynthese wandelt Lichtenergie in chemische Energie um, die in \
                  Glukose gespeichert wird. Pflanzen nehmen Sonnenlicht über das Chlorophyll auf.";
        assert_eq!(
            check(
                &c,
                "how plants make sugar from light",
                de,
                [None, None],
                en()
            ),
            Some((Reason::WrongLanguage, "d".into()))
        );
        // Without lists (no Languages given) the result is whatlang's alone.
        let bare = RowCtx {
            languages: None,
            ..en()
        };
        assert_eq!(check(&c, query, DOC, [None, None], bare), None);
    }

    #[test]
    fn language_names_map() {
        for n in [
            "English",
            "Chinese",
            "Persian",
            "Norwegian",
            "Japanese",
            "Swahili",
        ] {
            let got = lang_of_name(n);
            assert_eq!(got.is_some(), n != "Swahili", "{n}");
        }
    }

    #[test]
    fn tasks() {
        assert!(task_problem("Retrieve scientific papers that support a claim.", 4).is_none());
        assert!(task_problem("semantic_search_task", 4).is_some());
        assert!(task_problem("retrieval", 4).is_some());
        assert!(task_problem("textRetrieval dataRetrieval for query", 4).is_some());
        assert!(task_problem("Classify {input} into categories by topic", 4).is_some());
        // one identifier in a real sentence is fine
        assert!(task_problem(
            "Given a Python name like parse_args, find its documentation",
            4
        )
        .is_none());
    }

    #[test]
    fn rolling_windows_match_span_hash() {
        let mut w = Vec::new();
        words_into("a b c d e f g h i j k l m n o", 100, &mut w);
        for n in 1..8 {
            for target in w.windows(n) {
                let h = span_hash(target);
                assert!(any_window(&w, n, |x| x == h), "n={n}");
            }
            assert!(!any_window(&w, n, |x| x == span_hash(&w[..n + 1])));
        }
        assert_eq!(count_words_upto(b"  two words\nand x", 100), 4);
        assert!(count_words_upto(b"  two words\nand x", 2) >= 2);
        assert_eq!(count_words_upto("日本語の文章".as_bytes(), 100), 3);
        assert_eq!(symbol_counts(b"ab 1,"), (4, 2));
    }

    /// The byte-at-a-time tokeniser the block masks must agree with.
    fn words_reference(text: &str, limit: usize) -> (Vec<u64>, bool) {
        let (b, mut out, mut i) = (text.as_bytes(), Vec::new(), 0);
        while i < b.len() {
            while i < b.len() && !WORD_BYTE[b[i] as usize] {
                i += 1;
            }
            if i == b.len() {
                break;
            }
            if out.len() == limit {
                return (out, true);
            }
            let start = i;
            while i < b.len() && WORD_BYTE[b[i] as usize] {
                i += 1;
            }
            out.push(hash_word(b, start, i));
        }
        (out, false)
    }

    #[test]
    fn block_tokeniser_matches_byte_loop_on_random_text() {
        const PIECES: [&str; 16] = [
            " ", "  ", "\n", "a", "Zq", "_", "9", "@", "[", "`", "{", "é", "日本", "—", "x_1", ".",
        ];
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut out = Vec::new();
        for _ in 0..2000 {
            let len = next() % 200;
            let text: String = (0..len).map(|_| PIECES[(next() % 16) as usize]).collect();
            for limit in [0, 1, 12, 32, usize::MAX] {
                let more = words_into(&text, limit, &mut out);
                assert_eq!(
                    (out.clone(), more),
                    words_reference(&text, limit),
                    "{text:?}"
                );
            }
        }
    }

    #[test]
    fn code_is_not_template_residue() {
        for code in [
            "Use a dict comprehension: counts = {w: text.count(w) for w in words}; start from counts = {}.",
            "In Python, print(f\"Hello {name}, you are {age}\") prints both values.",
            "The C call printf(\"%d items\\n\", n) prints the count; use %s for strings.",
            "Index the array with arr[i] and the matrix with m[i][j]; arr[N] is out of bounds.",
            "In a shell script, echo ${HOME} prints your home directory.",
            "Go templates use {{.Name}} to print a field of the data passed to Execute.",
            "The JSON body {\"name\": \"Ada\", \"age\": 36} creates a user.",
            "```js\nconst total = items.reduce((a, b) => a + b, 0);\n```",
        ] {
            assert_eq!(residue(code), None, "{code}");
        }
        // The same marks in prose are still residue.
        for (prose, what) in [
            (
                "Write a query about {topic} in {language}.",
                "unfilled placeholder {topic}",
            ),
            (
                "The user asked about %s and the answer is %d.",
                "format specifier %s",
            ),
            (
                "[X] is a common cause of [Y] on servers.",
                "template placeholder [X]",
            ),
            (
                "Vitamin D trials. \"hard_negative_document\": \"x\"",
                "object fragment",
            ),
            ("Die Kopfhörer {{ Produkt }} sind kaputt.", "template brace"),
            (
                "The museum {} will {} be {} open.",
                "unfilled placeholder {}",
            ),
            (
                "The summary is {\"text\": \"a fine summary of the trial\"} here.",
                "object fragment \"text\": (a key of the answer)",
            ),
            (
                "The service replied {\"status\": \"\", \"code\": 3} at once.",
                "object fragment \"status\": (a key with no value)",
            ),
        ] {
            let keys = names(&["user_query", "positive_document", "hard_negative_document"]);
            let got = residue_but_filler(prose, &keys).unwrap_or_default();
            assert!(got.starts_with(what), "{prose}: {got}");
        }
    }

    #[test]
    fn examples_in_prose_are_not_template_residue() {
        let keys = names(&["user_query", "positive_document", "hard_negative_document"]);
        for prose in [
            // A JSON object with keys and values of its own: an example the text gives.
            "The endpoint answers {\"status\": \"ok\", \"count\": 3} for each request.",
            "Send {'city': 'Lyon', 'days': 2} as the body and the forecast comes back.",
            // Marks quoted as Markdown inline code are named, not left unfilled.
            "In C, the `%d` specifier prints an integer and `%s` a string.",
            "Write the name as `{first}_{last}` and the date as `[YYYY-MM-DD]`.",
        ] {
            assert_eq!(residue_but_filler(prose, &keys), None, "{prose}");
        }
        // Outside the code span the same marks still count.
        let got = residue_but_filler("Use `%d` for numbers and %s for text.", &keys);
        assert!(got.is_some_and(|g| g.starts_with("format specifier %s")));
    }

    #[test]
    fn lorem_ipsum_is_found_among_the_first_words() {
        let mut w = Vec::new();
        words_into(
            "Lorem ipsum dolor sit amet, consectetur",
            WINDOW_WORDS,
            &mut w,
        );
        assert!(lorem_ipsum_in(&w));
        words_into("ipsum lorem is not the filler", WINDOW_WORDS, &mut w);
        assert!(!lorem_ipsum_in(&w));
        let c = QualityConfig::default();
        let r = check(
            &c,
            "A boy rides a bike.",
            "Lorem ipsum dolor sit amet, elit.",
            [None, None],
            en(),
        );
        assert_eq!(r, Some((Reason::FormatResidue, "d".to_string())));
    }

    #[test]
    fn every_stop_word_has_its_own_slot() {
        let t = &*STOPWORDS;
        let mut buf = Vec::new();
        let mut n = 0;
        for (bit, code) in STOPWORD_LANGS.iter().enumerate() {
            for w in stop_words::lookup(code).unwrap_or_default() {
                if words_into(w, 1, &mut buf) || buf.len() != 1 {
                    continue;
                }
                let (langs, share) = t.get(buf[0]);
                assert_eq!(langs >> bit & 1, 1, "{w} ({code}) is missing");
                assert_eq!(share, SHARE_ONE / langs.count_ones(), "{w}");
                n += 1;
            }
        }
        assert!(n > 10_000, "{n} entries");
        let used = t.slots.iter().filter(|s| s.key != 0).count();
        assert!(
            used * 4 > t.slots.len(),
            "{used} of {} slots",
            t.slots.len()
        );
        // Words in no list: found nowhere, share 0.
        for w in ["protein", "zxqv", "e5x", "photosynthesis"] {
            assert_eq!(t.get(word_hash(w)), (0, 0), "{w}");
        }
    }

    #[test]
    fn slot_mask_matches_its_scalar_form() {
        let slot = StopSlot {
            key: 0x8000_0001,
            share: SHARE_ONE / 4,
            langs: u64::MAX << 60 | 0xF,
        };
        for key in [0x8000_0001, 1, 0, u32::MAX] {
            assert_eq!(slot.if_key(key), slot.if_key_scalar(key), "{key}");
        }
        assert_eq!(
            slot.if_key(0x8000_0001),
            (u64::MAX << 60 | 0xF, SHARE_ONE / 4)
        );
    }

    #[test]
    fn stop_table_places_every_word_of_a_crowded_build() {
        // Many words to few slots: displacements (and, when none fits, more slots) still
        // give each word a slot of its own.
        let words: std::collections::HashMap<u64, u64> = (0..5000u64)
            .map(|k| (word_hash(&format!("w{k}")), 1 << (k % 64) | 1))
            .collect();
        let t = StopTable::build(&words);
        for (&h, &l) in &words {
            assert_eq!(t.get(h), (l, SHARE_ONE / l.count_ones()));
        }
        assert_eq!(t.get(word_hash("absent")), (0, 0));
    }

    #[test]
    fn template_spans_do_not_cross_placeholders() {
        let s = SpanSet::from_template("one two three {x} four five six seven", 4);
        assert!(s.has(span_hash(&["four", "five", "six", "seven"].map(word_hash))));
        assert!(!s.has(span_hash(&["two", "three", "four", "five"].map(word_hash))));
    }

    #[test]
    fn never_panics_on_odd_text() {
        let c = QualityConfig::default();
        for t in [
            "",
            " ",
            "{",
            "[",
            "%",
            "\"",
            "\":",
            "é{",
            "[é",
            "%é",
            "{{}}",
            "日本語の文章です",
        ] {
            let _ = check(&c, t, t, [Some(3), Some(u32::MAX)], en());
            let _ = task_problem(t, 4);
        }
    }
}
