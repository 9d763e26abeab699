"""Fetching registered datasets: the real download code against a loopback server.

Each test registers small datasets in their sources' real layouts (a BEIR zip, an STS-B
tar.gz, a Parquet file) through ``$E5X_REGISTRY`` and serves them from 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile
import textwrap
import time
import zipfile
from pathlib import Path

import polars as pl
import pytest

from _dataserver import DataServer
from e5x.data import registry
from e5x.data.download import MANIFEST, FetchError, cache_dir, fetch, status

CORPUS = [{"_id": "d1", "title": "Vaccines", "text": "Vaccines train the immune system."},
          {"_id": "d2", "title": "", "text": "Rust is a systems programming language."},
          {"_id": "d3", "title": "Tea", "text": "Green tea contains caffeine."}]  # fmt: skip
QUERIES = [{"_id": "q1", "text": "how do vaccines work"}, {"_id": "q2", "text": "does tea have caffeine"}]
STS_LINE = "main-captions\tMSRvid\t2012test\t0001\t5.000\tA plane is taking off.\tAn air plane is taking off.\n"


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def beir_zip() -> bytes:
    """A BEIR folder zipped the way BEIR publishes it: tiny/corpus.jsonl, ..., tiny/qrels/*.tsv."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("tiny/", "")
        zf.writestr("tiny/corpus.jsonl", _jsonl(CORPUS))
        zf.writestr("tiny/queries.jsonl", _jsonl(QUERIES))
        zf.writestr("tiny/qrels/test.tsv", "query-id\tcorpus-id\tscore\nq2\td3\t1\n")
        zf.writestr("tiny/qrels/train.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    return buf.getvalue()


def sts_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for split, n in (("train", 3), ("dev", 2), ("test", 2)):
            data = (STS_LINE * n).encode()
            info = tarfile.TarInfo(f"stsbenchmark/sts-{split}.csv")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def pairs_parquet() -> bytes:
    buf = io.BytesIO()
    pl.DataFrame({"question": ["why is the sky blue", "what is rust"],
                  "answer": ["Rayleigh scattering.", "A language."]}).write_parquet(buf)  # fmt: skip
    return buf.getvalue()


FILES = {
    "/beir/tiny.zip": beir_zip(),
    "/sts/Stsbenchmark.tar.gz": sts_tar(),
    "/datasets/org/pairs/resolve/0123456789abcdef0123456789abcdef01234567/pair/train.parquet": pairs_parquet(),
}


def registry_toml(base: str, *, md5: str | None = None, expect_corpus: int = 3) -> str:
    md5 = hashlib.md5(FILES["/beir/tiny.zip"]).hexdigest() if md5 is None else md5
    sha = hashlib.sha256(FILES["/sts/Stsbenchmark.tar.gz"]).hexdigest()
    return textwrap.dedent(f"""
        [datasets.tinybeir]
        kind = "eval"
        description = "a BEIR folder"
        license = "CC0 (test)"
        homepage = "https://example.org/tinybeir"
        size = "1 kB"
        layout = "beir"
        mirror_dir = "tinybeir"
        expect = {{ "corpus.jsonl" = {expect_corpus}, "queries.jsonl" = 2, "qrels/test.tsv" = 2, "qrels/train.tsv" = 2 }}
        [[datasets.tinybeir.files]]
        url = "{base}/beir/tiny.zip"
        md5 = "{md5}"
        unpack = "zip"
        strip = 1

        [datasets.tinysts]
        kind = "eval"
        description = "STS-B files"
        license = "test"
        homepage = "https://example.org/sts"
        size = "1 kB"
        layout = "sts"
        mirror_dir = "sts/tiny"
        expect = {{ "sts-train.csv" = 3, "sts-dev.csv" = 2, "sts-test.csv" = 2 }}
        [[datasets.tinysts.files]]
        url = "{base}/sts/Stsbenchmark.tar.gz"
        sha256 = "{sha}"
        unpack = "tar.gz"
        strip = 1

        [datasets.tinypairs]
        kind = "train"
        description = "question/answer pairs on a Hub-like path"
        license = "test"
        homepage = "https://example.org/pairs"
        size = "1 kB"
        layout = "table"
        rows = 2
        columns = {{ query = "question", positive = "answer" }}
        instructions = ["Given a question, retrieve its answer"]
        [[datasets.tinypairs.files]]
        repo = "org/pairs"
        revision = "0123456789abcdef0123456789abcdef01234567"
        path = "pair/train.parquet"
    """)


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A clean cache, no mirror, the network allowed (the suite sets HF_HUB_OFFLINE)."""
    for var in ("E5X_DATA_MIRROR", "E5X_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("E5X_CACHE_DIR", str(tmp_path / "cache"))

    def use(base: str, **kw) -> Path:
        reg = tmp_path / f"registry-{len(list(tmp_path.glob('registry-*')))}.toml"
        reg.write_text(registry_toml(base, **kw))
        monkeypatch.setenv("E5X_REGISTRY", str(reg))
        monkeypatch.setenv("HF_ENDPOINT", base)
        return reg

    return use


@pytest.fixture
def server():
    with DataServer(FILES) as s:
        yield s


def test_fetch_unpacks_verifies_and_then_works_with_the_network_gone(env, server):
    env(server.url)
    said: list[str] = []
    path = fetch("tinybeir", echo=said.append)
    assert path == cache_dir() / "datasets" / "tinybeir"
    assert (path / "corpus.jsonl").read_bytes() == _jsonl(CORPUS)
    assert (path / "qrels" / "train.tsv").is_file() and (path / MANIFEST).is_file()
    assert any("CC0 (test)" in s for s in said)  # the license is printed on first fetch
    sts = fetch("tinysts", echo=said.append)  # tar.gz, sha256-checked
    assert (sts / "sts-test.csv").read_text() == STS_LINE * 2
    table = fetch("tinypairs", echo=said.append)  # a Hub file at a pinned revision
    assert pl.read_parquet(table / "pair" / "train.parquet").height == 2
    assert not list((cache_dir() / "downloads").rglob("*"))  # nothing left half-way
    assert status("tinybeir") == "cache"
    server.__exit__()
    env("http://127.0.0.1:9")  # the sources now point at a closed port
    said.clear()
    assert fetch("tinybeir", echo=said.append) == path and said == []


def test_a_connection_cut_midway_is_resumed(env, server):
    env(server.url)
    body = FILES["/beir/tiny.zip"]
    server.cut["/beir/tiny.zip"] = len(body) // 2
    path = fetch("tinybeir", echo=lambda s: None)
    assert (path / "queries.jsonl").read_bytes() == _jsonl(QUERIES)
    assert server.ranges == [("/beir/tiny.zip", f"bytes={len(body) // 2}-")]  # resumed, not restarted


def test_a_part_left_by_a_killed_fetch_is_resumed(env, server):
    env(server.url)
    body = FILES["/sts/Stsbenchmark.tar.gz"]
    part = cache_dir() / "downloads" / "tinysts" / "Stsbenchmark.tar.gz.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(body[:100])
    fetch("tinysts", echo=lambda s: None)
    assert server.ranges == [("/sts/Stsbenchmark.tar.gz", "bytes=100-")]


def test_files_an_interrupted_multi_file_fetch_completed_are_not_fetched_again(env, tmp_path, monkeypatch):
    reg = tmp_path / "two.toml"
    reg.write_text(
        textwrap.dedent("""
        [datasets.two]
        kind = "eval"
        description = "two files"
        license = "test"
        homepage = "https://example.org"
        size = "1 kB"
        layout = "table"
        expect = { "a.parquet" = 2, "b.parquet" = 2 }
        [[datasets.two.files]]
        url = "URL/a.parquet"
        [[datasets.two.files]]
        url = "URL/b.parquet"
    """)
    )
    with DataServer({"/a.parquet": pairs_parquet()}) as s:  # b.parquet is missing: 404
        reg.write_text(reg.read_text().replace("URL", s.url))
        env(s.url)
        monkeypatch.setenv("E5X_REGISTRY", str(reg))
        with pytest.raises(FetchError, match=r"b\.parquet \(HTTP 404\)"):
            fetch("two", echo=lambda m: None)
        s.files["/b.parquet"] = pairs_parquet()
        path = fetch("two", echo=lambda m: None)
        assert s.gets["/a.parquet"] == 1 and s.gets["/b.parquet"] == 2
    assert pl.read_parquet(path / "b.parquet").height == 2


def test_checksum_mismatch_is_a_clear_error_and_leaves_nothing(env, server):
    env(server.url, md5="0" * 32)
    with pytest.raises(FetchError, match=r"tinybeir.*md5 mismatch: got [0-9a-f]{32}, published 0{32}"):
        fetch("tinybeir", echo=lambda s: None)
    assert not (cache_dir() / "datasets" / "tinybeir").exists()
    assert not [p for p in cache_dir().rglob("*") if p.is_file() and "locks" not in p.parts]


def test_wrong_row_counts_fail_verification_and_leave_nothing(env, server):
    env(server.url, expect_corpus=4)
    with pytest.raises(FetchError, match=r"failed verification: corpus\.jsonl has 3 rows, expected 4"):
        fetch("tinybeir", echo=lambda s: None)
    assert not (cache_dir() / "datasets" / "tinybeir").exists()


def test_404_names_the_url_and_how_to_use_a_mirror(env, server):
    env(server.url + "/gone")
    with pytest.raises(FetchError) as err:
        fetch("tinybeir", echo=lambda s: None)
    msg = str(err.value)
    assert f"{server.url}/gone/beir/tiny.zip (HTTP 404)" in msg and "E5X_DATA_MIRROR" in msg


def test_mirror_folder_in_e5x_layout_is_used_in_place(env, server, tmp_path, monkeypatch):
    env(server.url)
    mirror = tmp_path / "mirror"
    with zipfile.ZipFile(io.BytesIO(FILES["/beir/tiny.zip"])) as zf:
        zf.extractall(mirror)
    (mirror / "tiny").rename(mirror / "tinybeir")
    monkeypatch.setenv("E5X_DATA_MIRROR", str(mirror))
    assert status("tinybeir") == "mirror"
    assert fetch("tinybeir") == mirror / "tinybeir"
    assert sum(server.gets.values()) == 0


def test_mirror_in_the_sources_layout_local_and_over_http(env, server, tmp_path, monkeypatch):
    env(server.url)
    mirror = tmp_path / "mirror"
    dest = mirror / "beir" / "tiny.zip"  # the URL's path, as `wget -x -nH` lays it out
    dest.parent.mkdir(parents=True)
    dest.write_bytes(FILES["/beir/tiny.zip"])
    monkeypatch.setenv("E5X_DATA_MIRROR", str(mirror))
    assert (fetch("tinybeir", echo=lambda s: None) / "corpus.jsonl").is_file()
    assert dest.is_file() and sum(server.gets.values()) == 0  # the mirror's file is read, not moved
    with DataServer({"/m/sts/tiny/sts-train.csv": (STS_LINE * 3).encode(),
                     "/m/sts/tiny/sts-dev.csv": (STS_LINE * 2).encode(),
                     "/m/sts/tiny/sts-test.csv": (STS_LINE * 2).encode()}) as http_mirror:  # fmt: skip
        monkeypatch.setenv("E5X_DATA_MIRROR", http_mirror.url + "/m")
        path = fetch("tinysts", echo=lambda s: None)
    assert (path / "sts-dev.csv").read_text() == STS_LINE * 2 and sum(server.gets.values()) == 0


def test_offline_with_no_mirror_fails_fast_naming_every_place(env, server, monkeypatch, tmp_path):
    env(server.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("E5X_DATA_MIRROR", str(tmp_path / "nowhere"))
    with pytest.raises(FetchError) as err:
        fetch("tinybeir", echo=lambda s: None)
    msg = str(err.value)
    assert "nowhere/tinybeir (no such folder)" in msg and "network was not tried" in msg
    assert sum(server.gets.values()) == 0


def test_a_dead_network_fails_within_seconds(env, monkeypatch):
    env("http://127.0.0.1:9")  # discard port: nothing listens
    t = time.monotonic()
    with pytest.raises(FetchError, match=r"tinybeir.*127\.0\.0\.1:9/beir/tiny\.zip \(unreachable"):
        fetch("tinybeir", echo=lambda s: None)
    assert time.monotonic() - t < 5


def test_two_processes_fetching_one_set_download_it_once(env, server, tmp_path):
    env(server.url)
    server.cut.clear()
    code = "from e5x.data.download import fetch; print(fetch('tinypairs', echo=lambda s: None))"
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs[0] == outs[1] == str(cache_dir() / "datasets" / "tinypairs")
    path = "/datasets/org/pairs/resolve/0123456789abcdef0123456789abcdef01234567/pair/train.parquet"
    assert server.gets[path] == 1


def test_zip_members_outside_the_folder_are_refused(env, tmp_path):
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("tiny/../../escape.txt", "x")
    with DataServer({"/beir/tiny.zip": evil.getvalue()}) as s:
        env(s.url, md5=hashlib.md5(evil.getvalue()).hexdigest())
        with pytest.raises(FetchError, match="points outside its folder"):
            fetch("tinybeir", echo=lambda s: None)
    assert not list(tmp_path.rglob("escape.txt"))


def test_unknown_names_list_the_known_ones():
    with pytest.raises(registry.UnknownDataset, match=r"unknown dataset 'nope'; known: scifact, stsb"):
        registry.get("nope")


def test_shared_data_works_as_a_mirror_for_the_real_entries(shared_data, monkeypatch, tmp_path):
    monkeypatch.setenv("E5X_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("E5X_DATA_MIRROR", str(shared_data))
    monkeypatch.delenv("E5X_REGISTRY", raising=False)
    assert fetch("scifact") == shared_data / "scifact"
    assert fetch("STSB") == shared_data / "sts" / "stsbenchmark"
    from e5x.eval import resolve_task

    assert resolve_task("scifact") == ("SciFact", "Retrieval", shared_data / "scifact")  # e5x eval --tasks scifact
    assert resolve_task("stsb")[:2] == ("STSBenchmark", "STS")
