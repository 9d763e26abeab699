"""String columns whose bytes are not UTF-8 (an Arrow array built from unchecked buffers)
get a clear per-row rejection or a ValueError naming the column and row, from every entry
point of the native core; rows around them are unharmed."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pytest

from e5x import core
from e5x.cleaning import quality

ROW = b'{"S1": "a cat", "S2": "%s", "S3": "yes"}'
# (bad bytes, offset of the first invalid byte in them)
MALFORMED = [
    (b"caf\xc3", 3),  # truncated 2-byte sequence
    (b"\xe6\x97", 0),  # truncated 3-byte sequence
    (b"\xc0\xaf", 0),  # overlong '/'
    (b"ok \xed\xa0\x80", 3),  # UTF-16 surrogate D800
    (b"\xff", 0),
    (b"a long value, past 12 bytes \xf4\x90\x80\x80", 28),  # above U+10FFFF
]


def unchecked_strings(values: list[bytes | None]) -> pl.Series:
    """A String Series holding ``values`` as they are: the Arrow buffers are built by hand,
    so nothing checks them (as with data from another Arrow producer)."""
    offsets, data, valid = [0], b"", []
    for v in values:
        data += v or b""
        offsets.append(len(data))
        valid.append(v is not None)
    arr = pa.Array.from_buffers(
        pa.string(),
        len(values),
        [pa.py_buffer(pa.array(valid, pa.bool_()).buffers()[1]) if not all(valid) else None,
         pa.py_buffer(pa.array(offsets, pa.int32()).buffers()[1]),
         pa.py_buffer(data)],
    )  # fmt: skip
    s = pl.from_arrow(arr)
    assert isinstance(s, pl.Series)
    return s


def test_the_test_series_really_holds_the_bad_bytes() -> None:
    s = unchecked_strings([b"ok", b"\xff"])
    assert s.len() == 2
    with pytest.raises(pa.ArrowInvalid, match="UTF8"):
        s.to_arrow().validate(full=True)


@pytest.mark.parametrize(("bad", "at"), MALFORMED)
def test_validate_rejects_the_row_naming_the_byte(bad: bytes, at: int) -> None:
    good = ROW % b"caf\xc3\xa9 \xe6\x97\xa5"  # valid multibyte text around it
    texts = unchecked_strings([good, ROW % bad, None, good])
    out = core.validate(texts, "sts", unpack=True)
    assert out["ok"].to_list() == [True, False, False, True]
    assert out["reason"].to_list() == [None, "invalid_utf8", "null_text", None]
    # The first bad byte's offset in the row: the value starts after '... "S2": "'.
    assert out["message"][1] == f"invalid UTF-8 at byte {ROW.index(b'%s') + at}"
    assert out["S2"].to_list() == ["café 日", None, None, "café 日"]
    assert out["json"][3] == '{"S1":"a cat","S2":"café 日","S3":"yes"}'


def test_validate_checks_every_string_column_it_reads() -> None:
    texts = pl.Series([(ROW % b"x").decode()] * 3)
    tasks = unchecked_strings([b"sts", b"st\xff", b"sts"])
    out = core.validate(texts, tasks)
    assert out["ok"].to_list() == [True, False, True]
    assert out["reason"][1] == "invalid_utf8"
    assert out["message"][1] == "invalid UTF-8 at byte 2 of task_types"
    gate = quality.gate("-wrong_language")
    good = '{"S1": "the cat sat on the mat", "S2": "a cat was sitting on a mat", "S3": "yes"}'
    out = core.validate(pl.Series([good] * 2), "sts", gate=gate,
                        gate_languages=unchecked_strings([b"English", b"Engl\xc3"]))  # fmt: skip
    assert out["reason"].to_list() == [None, "invalid_utf8"]
    assert out["message"][1] == "invalid UTF-8 at byte 4 of gate_languages"


def test_fused_dedup_skips_the_bad_row() -> None:
    texts = unchecked_strings([ROW % b"x", ROW % b"\xc0\xaf", ROW % b"x"])
    d = core.Deduplicator()
    out = core.validate(texts, "sts", dedup=d, dedup_fields=["S2"])
    assert out["reason"][1] == "invalid_utf8"
    assert out["keep"].to_list() == [True, False, False]
    assert out["duplicate_of"].to_list() == [None, None, 0]


@pytest.mark.parametrize(("bad", "at"), MALFORMED)
def test_dedup_add_refuses_the_batch_naming_column_and_row(bad: bytes, at: int) -> None:
    d = core.Deduplicator()
    df = pl.DataFrame([pl.Series("q", ["a", "b", "c"]), unchecked_strings([b"x", b"y", bad]).alias("doc")])
    with pytest.raises(ValueError, match=rf"^column 'doc' row 2: invalid UTF-8 at byte {at}$"):
        d.add(df, ["q", "doc"])
    assert (d.seen, d.unique) == (0, 0)  # nothing of the batch was added
    assert d.add(df.head(2), ["q", "doc"])["keep"].to_list() == [True, True]


@pytest.mark.parametrize(("bad", "at"), MALFORMED)
def test_render_raises_naming_column_and_row(bad: bytes, at: int) -> None:
    df = pl.DataFrame([pl.Series("a", ["1", "2"]), unchecked_strings([b"ok", bad]).alias("x")])
    with pytest.raises(ValueError, match=rf"^column 'x' row 1: invalid UTF-8 at byte {at}$"):
        core.render("<{a}:{x}>", df)
    assert core.render("<{a}:{x}>", df.head(1)).to_list() == ["<1:ok>"]
