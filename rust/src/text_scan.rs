//! Byte scans of a text, 64 bytes at a time: which bytes belong to words, how many
//! characters are digits or punctuation, how many whitespace-separated tokens there are,
//! whether any byte could start template residue. The quality gate runs them on every
//! field of every row, so each has an SSE2 form (the x86_64 baseline) and, for the scans
//! that read a whole field, an AVX2 form chosen at run time; a scalar form defines each
//! and the tests hold the others to it.

/// Bytes that belong to words: ASCII alphanumerics, `_`, and every byte of a non-ASCII
/// character (so a word is a run of them; non-ASCII punctuation is rare enough in the
/// places this looks that joining across it does not matter).
#[cfg(any(test, not(target_arch = "x86_64")))]
pub(crate) const WORD_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80;
        i += 1;
    }
    t
};

/// Bit i set = `b[i]` is a word byte (WORD_BYTE), for the 64 bytes of `b` (zero-padded).
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline]
fn word_mask_scalar(b: &[u8]) -> u64 {
    b.iter()
        .take(64)
        .enumerate()
        .fold(0u64, |m, (i, &x)| m | (WORD_BYTE[x as usize] as u64) << i)
}

/// Bytes of `v` in `lo..=lo + span` (unsigned), as `min(v - lo, span) == v - lo`.
#[cfg(target_arch = "x86_64")]
#[inline]
fn in_range(v: std::arch::x86_64::__m128i, lo: u8, span: u8) -> std::arch::x86_64::__m128i {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is part of the x86_64 baseline.
    unsafe {
        let t = _mm_sub_epi8(v, _mm_set1_epi8(lo as i8));
        _mm_cmpeq_epi8(_mm_min_epu8(t, _mm_set1_epi8(span as i8)), t)
    }
}

/// `word_mask_scalar` of a full 64-byte block, 16 bytes per step with SSE2 (baseline
/// on x86_64): `x | 0x20` in `a..=z` is a letter, then digits, `_` and bytes >= 0x80.
#[cfg(target_arch = "x86_64")]
#[inline]
fn word_mask_64(b: &[u8; 64]) -> u64 {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is part of the x86_64 baseline; loads are unaligned and in bounds.
    unsafe {
        let mut m = 0u64;
        for k in 0..4 {
            let x = _mm_loadu_si128(b.as_ptr().add(16 * k) as *const __m128i);
            let letter = in_range(_mm_or_si128(x, _mm_set1_epi8(0x20)), b'a', 25);
            let digit = in_range(x, b'0', 9);
            let under = _mm_cmpeq_epi8(x, _mm_set1_epi8(b'_' as i8));
            let word = _mm_or_si128(_mm_or_si128(letter, digit), _mm_or_si128(under, x));
            m |= (_mm_movemask_epi8(word) as u32 as u64) << (16 * k);
        }
        m
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn word_mask_64(b: &[u8; 64]) -> u64 {
    word_mask_scalar(b)
}

/// The 64 bytes of `b` from `base`, zero-padded (in `pad`) past its end.
#[inline]
fn block<'a>(b: &'a [u8], base: usize, pad: &'a mut [u8; 64]) -> &'a [u8; 64] {
    match b.get(base..base + 64) {
        Some(full) => full.try_into().expect("64 bytes"),
        None => {
            *pad = [0; 64];
            copy_short(&b[base..], pad);
            pad
        }
    }
}

/// Copy `src` (under 64 bytes) to the start of `dst` by at most two overlapping copies
/// of a fixed size: the gate reaches the short end of nearly every field it scans, where
/// a memcpy call costs more than the scan of the block.
#[inline(always)]
fn copy_short(src: &[u8], dst: &mut [u8; 64]) {
    let n = src.len();
    let mut two = |k: usize| {
        dst[..k].copy_from_slice(&src[..k]);
        dst[n - k..n].copy_from_slice(&src[n - k..]);
    };
    match n {
        32.. => two(32),
        16..=31 => two(16),
        8..=15 => two(8),
        4..=7 => two(4),
        _ => dst[..n].copy_from_slice(src),
    }
}

/// Word-byte bits of `b[base..base + 64]`; bits past the end of `b` are 0.
#[inline]
pub(crate) fn word_mask_at(b: &[u8], base: usize) -> u64 {
    word_mask_64(block(b, base, &mut [0; 64]))
}

/// (non-space, digit or punctuation) bits of a 64-byte block: non-space = ASCII
/// non-space bytes + UTF-8 lead bytes.
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline]
fn symbol_masks_scalar(b: &[u8; 64]) -> (u64, u64) {
    b.iter().enumerate().fold((0, 0), |(n, s), (i, &x)| {
        let nonspace = ((x > b' ') & (x < 0x80)) | (x >= 0xC0);
        let symbol = x.is_ascii_digit() | x.is_ascii_punctuation();
        (n | (nonspace as u64) << i, s | (symbol as u64) << i)
    })
}

/// (non-space, digit or punctuation) counts of a 64-byte block, from its masks.
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline]
fn symbol_block_counts_scalar(b: &[u8; 64]) -> (u32, u32) {
    let (n, s) = symbol_masks_scalar(b);
    (n.count_ones(), s.count_ones())
}

/// Sum of the 16 bytes of `v`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn byte_sum(v: std::arch::x86_64::__m128i) -> u32 {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is part of the x86_64 baseline.
    unsafe {
        let s = _mm_sad_epu8(v, _mm_setzero_si128());
        (_mm_cvtsi128_si32(s) + _mm_cvtsi128_si32(_mm_unpackhi_epi64(s, s))) as u32
    }
}

/// `symbol_block_counts_scalar` with SSE2, counted in byte lanes (subtracting a compare's
/// -1 adds one per match) and summed once: no mask to count bits of (the x86_64 baseline
/// has no popcount).
/// Digits and punctuation are the ranges 0x21..=0x40, 0x5B..=0x60 and 0x7B..=0x7E.
#[cfg(target_arch = "x86_64")]
#[inline]
fn symbol_block_counts(b: &[u8; 64]) -> (u32, u32) {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is part of the x86_64 baseline; loads are unaligned and in bounds.
    unsafe {
        let (mut nonspace, mut symbols) = (_mm_setzero_si128(), _mm_setzero_si128());
        for k in 0..4 {
            let x = _mm_loadu_si128(b.as_ptr().add(16 * k) as *const __m128i);
            let ascii = in_range(x, 0x21, 0x7F - 0x21);
            let lead = _mm_cmpeq_epi8(_mm_max_epu8(x, _mm_set1_epi8(0xC0u8 as i8)), x);
            let sym = _mm_or_si128(
                in_range(x, 0x21, 0x40 - 0x21),
                _mm_or_si128(
                    in_range(x, 0x5B, 0x60 - 0x5B),
                    in_range(x, 0x7B, 0x7E - 0x7B),
                ),
            );
            nonspace = _mm_sub_epi8(nonspace, _mm_or_si128(ascii, lead));
            symbols = _mm_sub_epi8(symbols, sym);
        }
        (byte_sum(nonspace), byte_sum(symbols))
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn symbol_block_counts(b: &[u8; 64]) -> (u32, u32) {
    symbol_block_counts_scalar(b)
}

/// `symbol_counts`, 64 bytes at a time with SSE2 (or the scalar masks elsewhere).
#[inline]
fn symbol_counts_sse2(b: &[u8]) -> (usize, usize) {
    let (mut nonspace, mut symbols) = (0usize, 0usize);
    for base in (0..b.len()).step_by(64) {
        let (n, s) = symbol_block_counts(block(b, base, &mut [0; 64])); // 0: neither
        nonspace += n as usize;
        symbols += s as usize;
    }
    (nonspace, symbols)
}

/// (whitespace or control byte `<= b' '`, UTF-8 lead byte of 3) bits of a 64-byte block.
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline]
fn space_lead3_masks_scalar(b: &[u8; 64]) -> (u64, u64) {
    b.iter().enumerate().fold((0, 0), |(s, l), (i, &x)| {
        (
            s | ((x <= b' ') as u64) << i,
            l | (((x & 0xF0) == 0xE0) as u64) << i,
        )
    })
}

/// (token starts, 3-byte lead bytes, whether the last byte is a space) of a 64-byte
/// block whose previous byte was a space or not (see `count_words_upto`).
#[cfg(any(test, not(target_arch = "x86_64")))]
#[inline]
fn token_block_counts_scalar(b: &[u8; 64], prev_space: bool) -> (u32, u32, bool) {
    let (space, l3) = space_lead3_masks_scalar(b);
    let starts = !space & (space << 1 | prev_space as u64);
    (starts.count_ones(), l3.count_ones(), space >> 63 == 1)
}

/// `token_block_counts_scalar` with SSE2, counted in byte lanes like
/// `symbol_block_counts`; a byte's predecessor is the vector shifted by one byte, with
/// the last byte of the vector before it.
#[cfg(target_arch = "x86_64")]
#[inline]
fn token_block_counts(b: &[u8; 64], prev_space: bool) -> (u32, u32, bool) {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is part of the x86_64 baseline; loads are unaligned and in bounds.
    unsafe {
        let mut prev = _mm_set1_epi8(-(prev_space as i8));
        let (mut starts, mut lead3) = (_mm_setzero_si128(), _mm_setzero_si128());
        for k in 0..4 {
            let x = _mm_loadu_si128(b.as_ptr().add(16 * k) as *const __m128i);
            let space = _mm_cmpeq_epi8(_mm_min_epu8(x, _mm_set1_epi8(b' ' as i8)), x);
            let before = _mm_or_si128(_mm_slli_si128(space, 1), _mm_srli_si128(prev, 15));
            starts = _mm_sub_epi8(starts, _mm_andnot_si128(space, before));
            let hi = _mm_and_si128(x, _mm_set1_epi8(0xF0u8 as i8));
            lead3 = _mm_sub_epi8(lead3, _mm_cmpeq_epi8(hi, _mm_set1_epi8(0xE0u8 as i8)));
            prev = space;
        }
        let last_space = _mm_movemask_epi8(prev) >> 15 & 1 == 1;
        (byte_sum(starts), byte_sum(lead3), last_space)
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn token_block_counts(b: &[u8; 64], prev_space: bool) -> (u32, u32, bool) {
    token_block_counts_scalar(b, prev_space)
}

/// `count_words_upto`, 64 bytes at a time with SSE2 (or the scalar masks elsewhere).
#[inline]
fn count_words_upto_sse2(b: &[u8], need: usize) -> usize {
    let (mut tokens, mut lead3) = (0usize, 0usize);
    let mut prev_space = true; // before the text
    for base in (0..b.len()).step_by(64) {
        // Zero padding reads as spaces: no lead bytes, no token starts.
        let (t, l3, last) = token_block_counts(block(b, base, &mut [0; 64]), prev_space);
        prev_space = last;
        tokens += t as usize;
        lead3 += l3 as usize;
        if tokens.max(lead3 / 2) >= need {
            break;
        }
    }
    tokens.max(lead3 / 2)
}

/// Whether this CPU runs the AVX2 forms (std checks once, then it is a load).
#[cfg(target_arch = "x86_64")]
#[inline]
fn avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("popcnt")
}

/// (non-space characters, ASCII digits + punctuation) of `b`: non-space = ASCII
/// non-space bytes + UTF-8 lead bytes.
#[inline]
pub(crate) fn symbol_counts(b: &[u8]) -> (usize, usize) {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2 and POPCNT.
        return unsafe { symbol_counts_avx2(b) };
    }
    symbol_counts_sse2(b)
}

/// Words of `b` as too_few_words counts them: whitespace-separated tokens, or half the
/// characters of unspaced scripts (3-byte UTF-8: CJK, kana, Thai), whichever is more.
/// Stops once `need` is reached (the answer is then `>= need`). A token starts at a
/// non-space byte after a space byte (or at the start).
#[inline]
pub(crate) fn count_words_upto(b: &[u8], need: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2 and POPCNT.
        return unsafe { count_words_upto_avx2(b, need) };
    }
    count_words_upto_sse2(b, need)
}

/// Whether `b` holds a byte the residue checks look at: `{`, `[`, `%` or `:`. Prose
/// mostly has none, and then the checks that find and judge them need not run.
#[inline]
pub(crate) fn any_residue_byte(b: &[u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: the CPU has AVX2.
        return unsafe { any_residue_byte_avx2(b) };
    }
    any_residue_byte_memchr(b)
}

/// `any_residue_byte` by two memchr searches (SSE2 on x86_64 without AVX2).
#[inline]
fn any_residue_byte_memchr(b: &[u8]) -> bool {
    memchr::memchr3(b'{', b'[', b'%', b).is_some() || memchr::memchr(b':', b).is_some()
}

/// The residue bytes among the 32 of `x` (`| 0x20` maps `[` to `{` and nothing else
/// there).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn residue_bytes_32(x: std::arch::x86_64::__m256i) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    // SAFETY: inlined only into functions compiled with AVX2 (`any_residue_byte_avx2`).
    unsafe {
        let brace = _mm256_or_si256(x, _mm256_set1_epi8(0x20));
        _mm256_or_si256(
            _mm256_cmpeq_epi8(brace, _mm256_set1_epi8(b'{' as i8)),
            _mm256_or_si256(
                _mm256_cmpeq_epi8(x, _mm256_set1_epi8(b'%' as i8)),
                _mm256_cmpeq_epi8(x, _mm256_set1_epi8(b':' as i8)),
            ),
        )
    }
}

/// `any_residue_byte`, 32 bytes a step with AVX2; the matches of a whole text are OR-ed
/// and tested once.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn any_residue_byte_avx2(b: &[u8]) -> bool {
    use std::arch::x86_64::*;
    let mut hit = _mm256_setzero_si256();
    let mut chunks = b.chunks_exact(32);
    for c in &mut chunks {
        let x = _mm256_loadu_si256(c.as_ptr() as *const __m256i);
        hit = _mm256_or_si256(hit, residue_bytes_32(x));
    }
    // The tail: the last 32 bytes again where the text has them (bytes seen twice do
    // not change an OR), else one more vector, zero-padded (no match).
    if !chunks.remainder().is_empty() {
        let mut pad = [0u8; 64];
        let last = match b.len().checked_sub(32) {
            Some(at) => &b[at..],
            None => {
                copy_short(b, &mut pad);
                &pad[..32]
            }
        };
        let x = _mm256_loadu_si256(last.as_ptr() as *const __m256i);
        hit = _mm256_or_si256(hit, residue_bytes_32(x));
    }
    _mm256_movemask_epi8(hit) != 0
}

/// `symbol_counts` with AVX2: two 32-byte masks a block, counted with POPCNT.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
unsafe fn symbol_counts_avx2(b: &[u8]) -> (usize, usize) {
    use std::arch::x86_64::*;
    let in_range = |v: __m256i, lo: u8, span: u8| {
        let t = _mm256_sub_epi8(v, _mm256_set1_epi8(lo as i8));
        _mm256_cmpeq_epi8(_mm256_min_epu8(t, _mm256_set1_epi8(span as i8)), t)
    };
    let (mut nonspace, mut symbols) = (0usize, 0usize);
    let mut pad = [0u8; 64];
    for base in (0..b.len()).step_by(64) {
        let blk = block(b, base, &mut pad); // 0: neither
        for half in 0..2 {
            let x = _mm256_loadu_si256(blk.as_ptr().add(32 * half) as *const __m256i);
            let ascii = in_range(x, 0x21, 0x7F - 0x21);
            let lead = _mm256_cmpeq_epi8(_mm256_max_epu8(x, _mm256_set1_epi8(0xC0u8 as i8)), x);
            let sym = _mm256_or_si256(
                in_range(x, 0x21, 0x40 - 0x21),
                _mm256_or_si256(
                    in_range(x, 0x5B, 0x60 - 0x5B),
                    in_range(x, 0x7B, 0x7E - 0x7B),
                ),
            );
            let n = _mm256_movemask_epi8(_mm256_or_si256(ascii, lead)) as u32;
            nonspace += n.count_ones() as usize;
            symbols += (_mm256_movemask_epi8(sym) as u32).count_ones() as usize;
        }
    }
    (nonspace, symbols)
}

/// `count_words_upto` with AVX2: the space and lead-byte masks of a block from two
/// 32-byte compares each, token starts from the masks, counted with POPCNT.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt")]
unsafe fn count_words_upto_avx2(b: &[u8], need: usize) -> usize {
    use std::arch::x86_64::*;
    let (mut tokens, mut lead3) = (0usize, 0usize);
    let mut prev_space = 1u64; // before the text
    let mut pad = [0u8; 64];
    for base in (0..b.len()).step_by(64) {
        // Zero padding reads as spaces: no lead bytes, no token starts.
        let blk = block(b, base, &mut pad);
        let (mut space, mut l3) = (0u64, 0u64);
        for half in 0..2 {
            let x = _mm256_loadu_si256(blk.as_ptr().add(32 * half) as *const __m256i);
            let sp = _mm256_cmpeq_epi8(_mm256_min_epu8(x, _mm256_set1_epi8(b' ' as i8)), x);
            let hi = _mm256_and_si256(x, _mm256_set1_epi8(0xF0u8 as i8));
            let lead = _mm256_cmpeq_epi8(hi, _mm256_set1_epi8(0xE0u8 as i8));
            space |= (_mm256_movemask_epi8(sp) as u32 as u64) << (32 * half);
            l3 |= (_mm256_movemask_epi8(lead) as u32 as u64) << (32 * half);
        }
        let starts = !space & (space << 1 | prev_space);
        prev_space = space >> 63;
        tokens += starts.count_ones() as usize;
        lead3 += l3.count_ones() as usize;
        if tokens.max(lead3 / 2) >= need {
            break;
        }
    }
    tokens.max(lead3 / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut x = seed;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    #[test]
    fn counts_of_small_texts() {
        assert_eq!(count_words_upto(b"  two words\nand x", 100), 4);
        assert!(count_words_upto(b"  two words\nand x", 2) >= 2);
        assert_eq!(count_words_upto("日本語の文章".as_bytes(), 100), 3);
        assert_eq!(symbol_counts(b"ab 1,"), (4, 2));
        assert!(any_residue_byte(b"see [X] here") && any_residue_byte(b"50%"));
        assert!(!any_residue_byte(
            b"plain prose, (with) punctuation; no more."
        ));
    }

    #[test]
    fn block_masks_match_their_scalar_forms() {
        let mut next = rng(0x9E37_79B9_7F4A_7C15);
        for _ in 0..2000 {
            let mut block = [0u8; 64];
            for x in block.iter_mut() {
                *x = next() as u8;
            }
            assert_eq!(word_mask_64(&block), word_mask_scalar(&block));
            for prev_space in [false, true] {
                assert_eq!(
                    token_block_counts(&block, prev_space),
                    token_block_counts_scalar(&block, prev_space)
                );
            }
            assert_eq!(
                symbol_block_counts(&block),
                symbol_block_counts_scalar(&block)
            );
        }
    }

    /// (form, all tokens, tokens up to a need, symbol counts, residue byte) of one text.
    type Scans = (&'static str, usize, usize, (usize, usize), bool);

    /// Every form of the whole-text scans on random texts of every length around the
    /// block sizes, against the byte-at-a-time definitions (the AVX2 forms where the CPU
    /// has them).
    #[test]
    fn whole_text_scans_agree_on_random_text() {
        // Bytes next to the residue bytes (0x05 | 0x20 is '%', 0x1A | 0x20 is ':', 0x5B is
        // '['): none of them is one.
        const PIECES: [&str; 11] = [
            " ", "\t", "a", "bc", "日本", "é", "\u{1}", ".", "\u{5}", "\u{1a}", "Z",
        ];
        const RESIDUE: [&str; 4] = ["{", "[", ":", "%"];
        let mut next = rng(0x2545_F491_4F6C_DD1D);
        for _ in 0..3000 {
            let len = next() % 300;
            // A residue byte in about one text of three, anywhere in it.
            let text: String = (0..len)
                .map(|_| match next() % 400 {
                    0 => RESIDUE[(next() % 4) as usize],
                    r => PIECES[(r % 11) as usize],
                })
                .collect();
            let b = text.as_bytes();
            let full = count_words_reference(b);
            let residue = b.iter().any(|&x| matches!(x, b'{' | b'[' | b'%' | b':'));
            let symbols = (
                b.iter()
                    .filter(|&&x| (x > b' ' && x < 0x80) || x >= 0xC0)
                    .count(),
                b.iter()
                    .filter(|&&x| x.is_ascii_digit() || x.is_ascii_punctuation())
                    .count(),
            );
            let need = (next() % 40) as usize;
            let mut forms: Vec<Scans> = vec![(
                "sse2",
                count_words_upto_sse2(b, usize::MAX),
                count_words_upto_sse2(b, need),
                symbol_counts_sse2(b),
                any_residue_byte_memchr(b),
            )];
            #[cfg(target_arch = "x86_64")]
            if avx2() {
                // SAFETY: the CPU has AVX2 and POPCNT.
                unsafe {
                    forms.push((
                        "avx2",
                        count_words_upto_avx2(b, usize::MAX),
                        count_words_upto_avx2(b, need),
                        symbol_counts_avx2(b),
                        any_residue_byte_avx2(b),
                    ));
                }
            }
            for (form, all, upto, sym, res) in forms {
                assert_eq!(all, full, "{form} {text:?}");
                assert!(
                    if full >= need {
                        upto >= need
                    } else {
                        upto == full
                    },
                    "{form} {text:?}"
                );
                assert_eq!(sym, symbols, "{form} {text:?}");
                assert_eq!(res, residue, "{form} {text:?}");
            }
        }
    }

    /// The pairwise count the block masks must agree with (when it does not stop early).
    fn count_words_reference(b: &[u8]) -> usize {
        let first = b.first().is_some_and(|&x| x > b' ') as usize;
        let tokens = first + b.windows(2).filter(|w| w[0] <= b' ' && w[1] > b' ').count();
        let lead3 = b.iter().filter(|&&x| (x & 0xF0) == 0xE0).count();
        tokens.max(lead3 / 2)
    }
}
