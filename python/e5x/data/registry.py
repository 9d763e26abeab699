"""The public datasets e5x knows by name: evaluation sets and the recipe's training sets.

The entries are data (``registry.toml`` beside this module); this module reads them into
typed records and answers "which dataset is NAME". Fetching is ``e5x.data.download``,
turning a fetched training set into triples ``e5x.data.public``.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REGISTRY_FILE = Path(__file__).with_name("registry.toml")
ENV_EXTRA = "E5X_REGISTRY"
HF_ENDPOINT = "https://huggingface.co"
KINDS = ("eval", "train")
LAYOUTS = ("beir", "sts", "table")
UNPACK = ("", "zip", "tar.gz")


class UnknownDataset(KeyError):
    """A name that is not in the registry; the message lists the known ones."""

    def __str__(self) -> str:  # KeyError quotes its message
        return str(self.args[0])


@dataclass(frozen=True)
class SourceFile:
    """One published file: a direct ``url``, or a Hub dataset ``repo`` + ``path`` at ``revision``."""

    url: str = ""
    repo: str = ""
    revision: str = ""
    path: str = ""
    sha256: str = ""
    md5: str = ""
    unpack: str = ""
    strip: int = 0

    def resolved_url(self, hf_endpoint: str = HF_ENDPOINT) -> str:
        if self.url:
            return self.url
        return f"{hf_endpoint.rstrip('/')}/datasets/{self.repo}/resolve/{self.revision}/{self.path}"

    @property
    def mirror_path(self) -> str:
        """Where a mirror laid out like the sources holds this file: the URL's path
        (what ``wget -x -nH URL`` writes)."""
        from urllib.parse import urlsplit

        return urlsplit(self.resolved_url()).path.lstrip("/")

    @property
    def name(self) -> str:
        return self.mirror_path.rsplit("/", 1)[-1]

    @property
    def local_name(self) -> str:
        """The file's name inside the fetched folder: its path in the Hub repo (keeps the
        subset folders of multi-file sets apart), else the URL's file name."""
        return self.path if self.repo else self.name


@dataclass(frozen=True)
class Dataset:
    name: str
    kind: str
    description: str
    license: str
    homepage: str
    size: str
    layout: str
    files: tuple[SourceFile, ...]
    language: str = "en"
    mirror_dir: str = ""
    expect: dict[str, int] = field(default_factory=dict)
    # training sets only
    instructions: tuple[str, ...] = ()
    ratio: float = 1.0
    columns: dict[str, str] = field(default_factory=dict)
    mine: bool = False
    rows: int = 0  # rows of the published training split, when the publisher states it
    task_type: str = "retrieval"  # "sts" for symmetric sets (the query is a text like its positive)
    note: str = ""

    @property
    def source(self) -> str:
        """Where it is published, in one line."""
        f = self.files[0]
        if f.repo:
            return f"hf:{f.repo}@{f.revision[:7]}"
        return f.url

    @property
    def checksum(self) -> str:
        if self.files and all(f.sha256 or f.md5 for f in self.files):
            return "sha256" if all(f.sha256 for f in self.files) else "md5"
        if self.expect or self.rows:
            return "rows"
        return "columns" if self.kind == "train" else "none"  # a training table must read with its columns


def _expand(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """One ``files`` table as file specs: ``paths = [...]`` lists several files of one repo
    and revision; ``shards = N`` repeats ``path`` with ``{shard}`` = 0..N-1 (``{shard:05d}``)."""
    spec = dict(spec)
    paths = spec.pop("paths", None)
    shards = spec.pop("shards", None)
    if paths is not None:
        return [{**spec, "path": p} for p in paths]
    if shards is not None:
        return [{**spec, "path": spec["path"].format(shard=i)} for i in range(shards)]
    return [spec]


def _entry(name: str, raw: dict[str, Any]) -> Dataset:
    where = f"dataset registry: [datasets.{name}]"
    data = dict(raw)
    try:
        files = tuple(SourceFile(**f) for spec in data.pop("files") for f in _expand(spec))
        fields: dict[str, Any] = {k: tuple(v) if k == "instructions" else v for k, v in data.items()}
        ds = Dataset(name=name, files=files, **fields)
    except (TypeError, KeyError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    if ds.kind not in KINDS or ds.layout not in LAYOUTS:
        raise ValueError(f"{where}: kind must be one of {KINDS} and layout one of {LAYOUTS}")
    for f in ds.files:
        if bool(f.url) == bool(f.repo and f.path and f.revision) or f.unpack not in UNPACK:
            raise ValueError(f"{where}: each file needs url, or repo + revision + path; unpack in {UNPACK}")
    if ds.kind == "train" and (not ds.instructions or not ds.columns.get("query") or not ds.columns.get("positive")):
        raise ValueError(f"{where}: a training set needs instructions and columns.query / columns.positive")
    return ds


def _read(path: Path) -> dict[str, Dataset]:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"dataset registry {path}: {exc}") from None
    return {name.lower(): _entry(name.lower(), entry) for name, entry in raw.get("datasets", {}).items()}


@functools.cache
def _load_cached(extra: str) -> dict[str, Dataset]:
    entries = _read(REGISTRY_FILE)
    for path in filter(None, extra.split(os.pathsep)):
        entries.update(_read(Path(path)))
    return entries


def _load() -> dict[str, Dataset]:
    """The built-in entries, then those of the files in ``$E5X_REGISTRY`` (os.pathsep-separated
    TOML files in the same schema), which add datasets or replace built-in ones."""
    return _load_cached(os.environ.get(ENV_EXTRA, ""))


def datasets(kind: str | None = None) -> list[Dataset]:
    """Every registered dataset (of one ``kind``), evaluation sets first, in file order."""
    entries = sorted(_load().values(), key=lambda d: KINDS.index(d.kind))
    return [d for d in entries if kind is None or d.kind == kind]


def get(name: str) -> Dataset:
    """The entry called ``name`` (case and ``-``/``_`` ignored: ``MSMARCO-passage`` works)."""
    entries = _load()
    key = name.strip().lower().replace("-", "_")
    if key in entries:
        return entries[key]
    raise UnknownDataset(f"unknown dataset {name!r}; known: {', '.join(entries)} (e5x data list)")
