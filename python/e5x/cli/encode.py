"""``e5x encode MODEL INPUT -o OUTPUT``: embed texts with a trained model.

INPUT is ``.txt`` (one text per line), ``.jsonl`` (a ``--field``, default ``text``) or
``.parquet`` (a ``--field`` column). OUTPUT is ``.npy`` (float32 [N, H]) or ``.parquet``
(the input rows plus an ``embedding`` list column). ``--query --instruction TEXT`` embeds
the texts as queries (``Instruct: ...\\nQuery: ...``); otherwise they are documents.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from e5x.model.pooling import POOLINGS

if TYPE_CHECKING:
    import polars as pl


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="saved e5x model, LoRA adapter dir, or any HF model dir")
    parser.add_argument("input", help=".txt, .jsonl or .parquet")
    parser.add_argument("-o", "--output", required=True, help=".npy or .parquet")
    parser.add_argument("--field", default="text", help="JSONL field / Parquet column with the text")
    parser.add_argument("--query", action="store_true", help="embed as queries (with --instruction)")
    parser.add_argument("--instruction", help="task instruction for queries")
    parser.add_argument("--pooling", choices=list(POOLINGS))
    parser.add_argument("--max-length", type=int)
    parser.add_argument("--truncate-dim", type=int, help="keep the first N embedding dimensions (Matryoshka)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def read_texts(path: Path, field: str) -> tuple[list[str], pl.DataFrame | None]:
    """Texts of a file, plus the Parquet frame they came from (kept for the output)."""
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return path.read_text(encoding="utf-8").splitlines(), None
    if suffix == ".jsonl":
        from e5x.formats.benchmark import read_jsonl_objects

        texts = []
        for lineno, obj in read_jsonl_objects(path):
            if not isinstance(obj.get(field), str):
                raise ValueError(f"{path}:{lineno}: no string field {field!r}")
            texts.append(obj[field])
        return texts, None
    if suffix == ".parquet":
        import polars as pl

        df = pl.read_parquet(path)
        if field not in df.columns:
            raise ValueError(f"{path}: no column {field!r} (columns: {df.columns})")
        if df[field].null_count():
            raise ValueError(f"{path}: column {field!r} has {df[field].null_count()} nulls")
        return df[field].cast(pl.Utf8).to_list(), df
    raise ValueError(f"{path}: unsupported input type {suffix!r} (use .txt, .jsonl or .parquet)")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from e5x.model.embedder import Embedder

    inp, out = Path(args.input), Path(args.output)
    if out.suffix.lower() not in (".npy", ".parquet"):
        print(f"e5x encode: output must be .npy or .parquet, got {out}", file=sys.stderr)
        return 2
    try:
        texts, frame = read_texts(inp, args.field)
    except (OSError, ValueError) as e:
        print(f"e5x encode: {e}", file=sys.stderr)
        return 1
    try:
        embedder = Embedder.from_pretrained(
            args.model,
            pooling=args.pooling,
            max_length=args.max_length,
            device=args.device,
            dtype=args.dtype,
            batch_size=args.batch_size,
            show_progress=not args.quiet,
            truncate_dim=args.truncate_dim,
        )
    except (OSError, ValueError) as e:
        print(f"e5x encode: {e}", file=sys.stderr)
        return 1
    if args.query:
        emb = embedder.encode_queries(texts, instruction=args.instruction)
    else:
        if args.instruction:
            print("e5x encode: --instruction only applies with --query (documents stay bare)", file=sys.stderr)
            return 2
        emb = embedder.encode_documents(texts)
    emb = np.asarray(emb, dtype=np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".npy":
        np.save(out, emb)
    else:
        import polars as pl

        base = frame if frame is not None else pl.DataFrame({args.field: texts})
        base.with_columns(pl.Series("embedding", emb, dtype=pl.Array(pl.Float32, emb.shape[1]))).write_parquet(out)
    print(f"wrote {out}: {emb.shape[0]} x {emb.shape[1]}")
    return 0
