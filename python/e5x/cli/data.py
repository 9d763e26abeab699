"""``e5x data {list,fetch,prepare}``: the public datasets e5x knows by name.

  e5x data list                          # name, kind, size, license, source, instructions, fetched or not
  e5x data fetch scifact stsb            # download (or take from $E5X_DATA_MIRROR), verify, cache
  e5x data prepare eli5 nq               # fetch + convert to training triples (+ mine negatives)
  e5x data prepare configs/e5-mistral.toml   # every `dataset = ...` source of a training config

The cache is $E5X_CACHE_DIR (default ~/.cache/e5x). On a machine without the network,
point $E5X_DATA_MIRROR at a folder or URL laid out like e5x's data folders (scifact/,
sts/stsbenchmark/) or like the sources (each file at its URL's path, as `wget -x -nH`
writes it). E5X_OFFLINE=1 or HF_HUB_OFFLINE=1 never touches the network.

Exit status: 0 done, 1 a fetch or preparation failed, 2 bad arguments or unknown dataset.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n", 1)[1]
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    ls = verbs.add_parser("list", help="the registered datasets")
    ls.add_argument("--kind", choices=["eval", "train"], help="only evaluation or training sets")
    ls.add_argument("--json", action="store_true", help="one JSON object per dataset")
    fetch = verbs.add_parser("fetch", help="download, verify and cache datasets by name")
    fetch.add_argument("names", nargs="+", metavar="NAME")
    prep = verbs.add_parser("prepare", help="training sets (by name, or every one a training config names) "
                            "as training triples")  # fmt: skip
    prep.add_argument("names", nargs="+", metavar="NAME|CONFIG.toml")
    prep.add_argument("--miner", default=None, help="sentence-transformers model that mines hard negatives "
                      "for sets without any (default intfloat/multilingual-e5-base); 'none' skips mining")  # fmt: skip
    prep.add_argument("--query-prompt", help="prompt before queries when mining (default: the miner's, "
                      "'query: ' for E5 models)")  # fmt: skip
    prep.add_argument("--passage-prompt", help="prompt before passages when mining ('passage: ' for E5 models)")
    prep.add_argument("--range-min", type=int, default=10, help="skip the closest mined candidates (default 10)")
    prep.add_argument("--range-max", type=int, default=50, help="search this many candidates (default 50)")
    prep.add_argument(
        "--relative-margin",
        type=float,
        default=0.05,
        help="drop candidates within this fraction of the positive's score (default 0.05)",
    )
    prep.add_argument("--force", action="store_true", help="prepare again even if prepared")
    prep.add_argument("--decontaminate", nargs="+", default=[], metavar="EVAL",
                      help="drop rows whose texts appear in these evaluation sets (names such as scifact, "
                           "BEIR folders, STS-B files; see e5x decontaminate)")  # fmt: skip
    for p in (fetch, prep):
        p.add_argument("--mirror", help="mirror folder or URL (default: $E5X_DATA_MIRROR)")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _names_of(items: list[str]) -> list[str]:
    """Dataset names, expanding a training config into its ``dataset = ...`` sources."""
    from e5x.training.config import TrainConfig

    names: list[str] = []
    for item in items:
        if item.endswith(".toml"):
            cfg = TrainConfig.from_toml(item)
            found = [s.dataset for s in cfg.sources if s.dataset]
            if not found:
                raise ValueError(f'{item}: no [[sources]] names a dataset (dataset = "...")')
            names += found
        else:
            names.append(item)
    return list(dict.fromkeys(names))


def _list(args: argparse.Namespace) -> int:
    from e5x.data.download import status
    from e5x.data.public import is_prepared
    from e5x.data.registry import datasets

    rows: list[dict[str, Any]] = []
    for ds in datasets(args.kind):
        where = status(ds.name)
        state = "prepared" if ds.kind == "train" and is_prepared(ds.name) else (f"fetched ({where})" if where else "no")
        rows.append({"name": ds.name, "kind": ds.kind, "size": ds.size, "license": ds.license, "source": ds.source,
                     "checksum": ds.checksum, "ratio": ds.ratio if ds.kind == "train" else None,
                     "instructions": list(ds.instructions), "mine": ds.mine, "note": ds.note,
                     "state": state})  # fmt: skip
    if args.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return 0
    print("| name | kind | size | license | source | verified by | ratio | instructions | fetched |")
    print("|---|---|---:|---|---|---|---:|---|---|")
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:g}"
        instr = " / ".join(r["instructions"]) + (" (+ mined negatives)" if r["mine"] else "")
        print(f"| {r['name']} | {r['kind']} | {r['size']} | {r['license']} | {r['source']} | {r['checksum']} "
              f"| {ratio} | {instr} | {r['state']} |")  # fmt: skip
    return 0


def run(args: argparse.Namespace) -> int:
    from e5x.data.download import fetch
    from e5x.data.registry import UnknownDataset
    from e5x.data.triples import DataError
    from e5x.training.config import ConfigError

    if args.verb == "list":
        return _list(args)
    try:
        names = _names_of(args.names) if args.verb == "prepare" else list(args.names)
        from e5x.data.registry import get

        for name in names:
            get(name)  # every name is checked before anything is downloaded
    except (UnknownDataset, ConfigError, ValueError) as exc:
        print(f"e5x data: error: {exc}", file=sys.stderr)
        return 2
    progress = None if not args.quiet else False
    try:
        for name in names:
            if args.verb == "fetch":
                print(fetch(name, mirror=args.mirror, progress=progress))
                continue
            from e5x.data.public import MiningOptions, prepare

            mine = None if (args.miner or "").lower() == "none" else MiningOptions(
                **({"model": args.miner} if args.miner else {}), query_prompt=args.query_prompt,
                passage_prompt=args.passage_prompt, range_min=args.range_min, range_max=args.range_max,
                relative_margin=None if args.relative_margin < 0 else args.relative_margin)  # fmt: skip
            print(prepare(name, mine=mine, mirror=args.mirror, force=args.force, progress=progress,
                          decontaminate=args.decontaminate))  # fmt: skip
    except (DataError, OSError, ImportError) as exc:  # OSError: a failed fetch too
        print(f"e5x data: {exc}", file=sys.stderr)
        return 1
    return 0
