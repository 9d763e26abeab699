"""Fetching registered datasets by name: mirror first, cached, verified, resumable, locked.

``fetch("scifact")`` returns a folder in the dataset's layout (see ``registry.toml``):

1. a complete copy in the cache (``$E5X_CACHE_DIR``, else ``$XDG_CACHE_HOME/e5x`` or
   ``~/.cache/e5x``) is used as it is;
2. a mirror (``$E5X_DATA_MIRROR``: a local folder or a base URL) is tried before the
   network, in two layouts: e5x's data folders (``scifact/``, ``sts/stsbenchmark/``: a
   local one is used in place, nothing copied) or the sources' own paths (each file at its
   URL's path under the mirror, as ``wget -x -nH URL`` lays it out);
3. the publisher (Hugging Face Hub files at a pinned revision, or a direct URL), unless
   ``E5X_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``.

Downloads go to ``NAME.part`` files that a later fetch resumes (HTTP Range); each file is
checked against its published sha256/md5 and the unpacked folder against the entry's row
counts before it is renamed into place, so an interrupted or corrupt fetch never looks
complete, and a failed check leaves nothing behind. A file lock makes two processes
fetching one dataset download it once. When nothing works, the error names the dataset,
every place tried and how to point e5x at a mirror, within seconds on a dead network.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import os
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from e5x.data.registry import HF_ENDPOINT, Dataset, SourceFile, UnknownDataset, get

ENV_CACHE = "E5X_CACHE_DIR"
ENV_MIRROR = "E5X_DATA_MIRROR"
OFFLINE_VARS = ("E5X_OFFLINE", "HF_HUB_OFFLINE")
MANIFEST = ".e5x-dataset.json"
# A dead network must fail in seconds; a live one that stalls mid-file is resumed.
TIMEOUT_S = float(os.environ.get("E5X_FETCH_TIMEOUT", "15"))
RESUME_TRIES = 5
CHUNK = 1 << 20

MIRROR_HINT = (
    f"set {ENV_MIRROR} to a folder or URL laid out like e5x's data folders (scifact/, sts/stsbenchmark/) "
    "or like the sources (each file at its URL's path)"
)


class FetchError(OSError):
    """A dataset could not be fetched or failed verification; the message says where e5x looked.
    An OSError, so the CLI reports it as the run-time failure it is (exit 1)."""


class _Unusable(Exception):
    """One place did not provide a file (missing, HTTP error, bad checksum): try the next."""


def cache_dir() -> Path:
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "e5x"


def _hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT") or HF_ENDPOINT


def is_offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in OFFLINE_VARS)


def _is_url(place: str) -> bool:
    return place.startswith(("http://", "https://"))


def count_rows(path: Path) -> int:
    """Rows of a Parquet file, or non-blank lines of a text file (``.gz`` read through)."""
    if path.suffix == ".parquet":
        import polars as pl

        return int(pl.scan_parquet(path).select(pl.len()).collect().item())
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def verify_folder(folder: Path, ds: Dataset) -> list[str]:
    """What is wrong with ``folder`` as a copy of ``ds`` (empty: nothing): every expected
    file is there with its number of rows, and the published row total where one is given."""
    problems = []
    for rel, rows in ds.expect.items():
        path = folder / rel
        if not path.is_file():
            problems.append(f"{rel} missing")
            continue
        got = count_rows(path)
        if got != rows:
            problems.append(f"{rel} has {got} rows, expected {rows}")
    if ds.rows and not problems:
        got = sum(count_rows(folder / f.local_name) for f in ds.files)
        if got != ds.rows:
            problems.append(f"{got} rows in all, expected {ds.rows}")
    return problems


def status(name: str, mirror: str | None = None) -> str:
    """Where ``fetch(name)`` would find the dataset without downloading: "cache", "mirror"
    (a local mirror folder), or "" (it would download)."""
    ds = get(name)
    if (cache_dir() / "datasets" / ds.name / MANIFEST).is_file():
        return "cache"
    mirror = os.environ.get(ENV_MIRROR, "") if mirror is None else mirror
    if mirror and not _is_url(mirror) and ds.mirror_dir and (Path(mirror) / ds.mirror_dir).is_dir():
        return "mirror"
    return ""


def resolve(spec: str | Path) -> Path:
    """``spec`` as a local path: an existing file or folder as it is, else the fetched
    folder of the registered dataset of that name."""
    path = Path(spec)
    if path.exists():
        return path
    try:
        ds = get(str(spec))
    except UnknownDataset:
        msg = f"{spec}: no such file or folder, and not a registered dataset (e5x data list)"
        raise FileNotFoundError(msg) from None
    return fetch(ds.name)


def fetch(
    name: str,
    *,
    mirror: str | None = None,
    progress: bool | None = None,
    echo: Callable[[str], None] | None = None,
) -> Path:
    """The folder holding dataset ``name``, fetched if needed (see the module docstring).

    ``mirror`` overrides ``$E5X_DATA_MIRROR`` ("" = none). Raises FetchError naming the
    dataset and every place tried; UnknownDataset for a name not in the registry.
    """
    ds = get(name)
    say = echo or (lambda s: print(s, file=sys.stderr, flush=True))
    progress = sys.stderr.isatty() if progress is None else progress
    mirror = (os.environ.get(ENV_MIRROR, "") if mirror is None else mirror).strip()
    root = cache_dir()
    dest = root / "datasets" / ds.name
    if (dest / MANIFEST).is_file():
        return dest
    tried: list[str] = []
    if mirror and not _is_url(mirror) and ds.mirror_dir:
        local = Path(mirror).expanduser() / ds.mirror_dir
        if local.is_dir():
            problems = verify_folder(local, ds)
            if not problems:
                return local
            tried.append(f"{local} ({'; '.join(problems)})")
        else:
            tried.append(f"{local} (no such folder)")

    from filelock import FileLock

    (root / "locks").mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / "locks" / f"{ds.name}.lock")):
        if (dest / MANIFEST).is_file():  # another process fetched it while we waited
            return dest
        # Files an interrupted fetch completed are kept here and not fetched again.
        work = dest.with_name(f".{ds.name}.partial")
        work.mkdir(parents=True, exist_ok=True)
        try:
            origin = _fill(work, ds, mirror, tried, progress, say)
        except BaseException:
            if not any(work.iterdir()):
                work.rmdir()
            raise
        problems = verify_folder(work, ds)
        if problems:
            shutil.rmtree(work, ignore_errors=True)
            raise FetchError(f"dataset {ds.name!r} from {origin} failed verification: {'; '.join(problems)}; "
                             "nothing was kept")  # fmt: skip
        fetched = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest = {"name": ds.name, "origin": origin, "fetched": fetched, "license": ds.license,
                    "files": {rel: rows for rel, rows in ds.expect.items()}}  # fmt: skip
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        shutil.rmtree(dest, ignore_errors=True)
        work.rename(dest)
    say(f"e5x data: fetched {ds.name} from {origin} into {dest}")
    say(f"e5x data: {ds.name} is licensed {ds.license} ({ds.homepage}); using it means accepting its terms")
    return dest


def _fill(work: Path, ds: Dataset, mirror: str, tried: list[str], progress: bool, say: Callable[[str], None]) -> str:
    """Put the dataset's files into ``work``; returns where they came from. Tries a URL
    mirror in e5x's layout, then each file from the mirror in the sources' layout and the
    publisher."""
    downloads = cache_dir() / "downloads" / ds.name
    if mirror and _is_url(mirror) and ds.mirror_dir and ds.expect:
        base = f"{mirror.rstrip('/')}/{ds.mirror_dir}"
        try:
            for rel in ds.expect:
                _download(f"{base}/{rel}", work / rel, progress=progress, label=f"{ds.name} {rel}")
            return base
        except _Unusable as exc:
            tried.append(f"{base}/ ({exc})")
            for rel in ds.expect:
                (work / rel).unlink(missing_ok=True)
    origins = set()
    for f in ds.files:
        if not f.unpack and (work / f.local_name).is_file():  # completed by an interrupted fetch
            continue
        places = []
        if mirror:
            places.append(f"{mirror.rstrip('/')}/{f.mirror_path}" if _is_url(mirror)
                          else str(Path(mirror).expanduser() / f.mirror_path))  # fmt: skip
        if not is_offline():
            places.append(f.resolved_url(_hf_endpoint()))
        blob = downloads / f.local_name
        got = None
        for place in places:
            try:
                got = _obtain(place, blob, f, progress=progress, label=f"{ds.name} {f.name}")
                origins.add(place.rsplit("/", 1)[0])
                break
            except _Unusable as exc:
                tried.append(f"{place} ({exc})")
        if got is None:
            offline = f"; the network was not tried ({'/'.join(OFFLINE_VARS)} is set)" if is_offline() else ""
            raise FetchError(f"dataset {ds.name!r} could not be fetched (published at "
                             f"{f.resolved_url(_hf_endpoint())}); tried: {'; '.join(tried) or 'nothing'}{offline}. "
                             f"On an offline machine, {MIRROR_HINT}.")  # fmt: skip
        _place(got, f, work / f.local_name if not f.unpack else work, move=got.is_relative_to(downloads))
    shutil.rmtree(downloads, ignore_errors=True)
    return ", ".join(sorted(origins)) or "an earlier, interrupted fetch"


def _obtain(place: str, blob: Path, f: SourceFile, *, progress: bool, label: str) -> Path:
    """The file from one place, checked against its published checksum: a local mirror
    file is read where it is; a URL is downloaded (resuming ``blob.part``) to ``blob``."""
    if _is_url(place):
        _download(place, blob, progress=progress, label=label)
        path = blob
    else:
        path = Path(place)
        if not path.is_file():
            raise _Unusable("not there")
    for algo in ("sha256", "md5"):
        want = getattr(f, algo)
        if want:
            got = _digest(path, algo)
            if got != want.lower():
                if path == blob:
                    blob.unlink(missing_ok=True)
                raise _Unusable(f"{algo} mismatch: got {got}, published {want}")
    return path


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo)
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _request(url: str, start: int) -> urllib.request.Request:
    from e5x import __version__

    headers = {"User-Agent": f"e5x/{__version__}"}
    if start:
        headers["Range"] = f"bytes={start}-"
    token = os.environ.get("HF_TOKEN")
    if token and url.startswith(_hf_endpoint()):
        headers["Authorization"] = f"Bearer {token}"
    return urllib.request.Request(url, headers=headers)


def _download(url: str, dest: Path, *, progress: bool, label: str) -> None:
    """``url`` to ``dest`` through ``dest.part``, resuming what an earlier attempt (or an
    earlier process) left there. Connection failures before any byte raise _Unusable at
    once (no retries: a dead network fails fast); a transfer cut midway is resumed."""
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(RESUME_TRIES):
        start = part.stat().st_size if part.exists() else 0
        try:
            resp = urllib.request.urlopen(_request(url, start), timeout=TIMEOUT_S)  # noqa: S310 - http(s) only
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and start:  # the part is whole or stale: start over
                part.unlink()
                continue
            raise _Unusable(f"HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise _Unusable(f"unreachable: {reason}") from None
        with resp:
            if start and resp.status != 206:  # the server ignored Range: take the whole file
                start = 0
            length = resp.headers.get("Content-Length")
            total = int(length) + start if length else None
            received = start
            try:
                with (
                    part.open("ab" if start else "wb") as out,
                    tqdm(
                        total=total,
                        initial=start,
                        unit="B",
                        unit_scale=True,
                        desc=label,
                        disable=not progress,
                        leave=False,
                    ) as bar,
                ):
                    while chunk := resp.read(CHUNK):
                        out.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as exc:  # reset, timeout, IncompleteRead
                if attempt + 1 == RESUME_TRIES:
                    raise _Unusable(f"transfer cut at {received} bytes ({exc}); rerun to resume") from None
                continue
            if total is not None and received < total:
                continue  # the server closed early without an error: resume
        part.replace(dest)
        return
    raise _Unusable(f"transfer incomplete after {RESUME_TRIES} attempts; rerun to resume")


def _member_path(name: str, strip: int) -> PurePosixPath | None:
    parts = PurePosixPath(name).parts[strip:]
    if not parts:
        return None
    if PurePosixPath(name).is_absolute() or ".." in parts:
        raise FetchError(f"archive member {name!r} points outside its folder; refusing to unpack")
    return PurePosixPath(*parts)


def _place(src: Path, f: SourceFile, target: Path, *, move: bool) -> None:
    """A plain file to ``target`` (moved when it is a download, copied from a mirror), or
    an archive unpacked into the folder ``target`` (dropping ``f.strip`` leading folders of
    every member; a downloaded archive is deleted afterwards)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not f.unpack:
        if move:
            src.replace(target)
        else:  # through a temporary name: a file in the folder is always whole
            tmp = target.with_name(target.name + ".tmp")
            shutil.copyfile(src, tmp)
            tmp.replace(target)
        return
    try:
        if f.unpack == "zip":
            with zipfile.ZipFile(src) as zf:
                for info in zf.infolist():
                    rel = _member_path(info.filename, f.strip)
                    if rel is None or info.is_dir():
                        continue
                    (target / rel).parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as fin, (target / rel).open("wb") as fout:
                        shutil.copyfileobj(fin, fout, CHUNK)
        else:
            with tarfile.open(src, "r:gz") as tf:
                for member in tf:
                    rel = _member_path(member.name, f.strip)
                    if rel is None or not member.isfile():
                        continue
                    (target / rel).parent.mkdir(parents=True, exist_ok=True)
                    member_in = tf.extractfile(member)
                    assert member_in is not None  # a regular file
                    with member_in, (target / rel).open("wb") as fout:
                        shutil.copyfileobj(member_in, fout, CHUNK)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise FetchError(f"{src}: not a readable {f.unpack} archive ({exc})") from None
    if move:
        src.unlink(missing_ok=True)
