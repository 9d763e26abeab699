"""The prompt-token bound of the budget caps: tiktoken where it knows the model and has its
BPE file, else the UTF-8 byte bound; offline, a file missing from tiktoken's cache is never
downloaded. The real OpenAI BPE files cannot be had offline, so a tiny byte-level BPE
encoding is registered with tiktoken under a test model name and served through tiktoken's
own cache and download path (its 'download' is a patched requests.get)."""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import threading
import time
from pathlib import Path

import pytest

from e5x.synth import tokens

tiktoken = pytest.importorskip("tiktoken")  # the [synth] extra
import requests  # noqa: E402 (tiktoken's download client, installed with it)
import tiktoken.load  # noqa: E402
import tiktoken.model  # noqa: E402
import tiktoken.registry  # noqa: E402

MODEL = "e5x-test-model"
ENCODING = "e5x_test"
URL = "https://e5x.invalid/e5x_test.tiktoken"
MESSAGES = [
    {"role": "system", "content": "Answer with JSON only."},
    {"role": "user", "content": "the thesis: the theory holds, all the hello texts say so. Größe 日本"},
]


def bpe_file() -> bytes:
    """A byte-level BPE (every byte is a token) with a few merges, in tiktoken's format."""
    ranks = {bytes([b]): b for b in range(256)}
    for merge in (b"th", b"the", b" the", b"he", b"ll", b"llo", b"hello", b" hello", b"es", b"is"):
        ranks[merge] = len(ranks)
    return b"".join(base64.b64encode(t) + b" %d\n" % r for t, r in ranks.items())


def byte_bound(messages: list[dict[str, str]]) -> int:
    per_message = tokens.TEMPLATE_TOKENS_PER_MESSAGE
    return sum(len(m["content"].encode()) + per_message for m in messages) + tokens.TEMPLATE_TOKENS_PER_REQUEST


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """tiktoken's cache folder (empty) with the test encoding registered; downloads fail the
    test unless a test replaces ``requests.get``."""
    data = bpe_file()
    sha = hashlib.sha256(data).hexdigest()

    def constructor() -> dict:
        return {
            "name": ENCODING,
            "pat_str": r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
            "mergeable_ranks": tiktoken.load.load_tiktoken_bpe(URL, sha),
            "special_tokens": {},
        }

    tiktoken.registry.list_encoding_names()  # the plugins' table, before ours joins it
    monkeypatch.setitem(tiktoken.registry.ENCODING_CONSTRUCTORS, ENCODING, constructor)
    monkeypatch.setitem(tiktoken.model.MODEL_TO_ENCODING, MODEL, ENCODING)
    folder = tmp_path / "tiktoken-cache"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(folder))
    downloads: list[str] = []

    def no_network(url: str, *a, **k):
        downloads.append(url)
        raise AssertionError(f"download attempted: {url}")

    monkeypatch.setattr(requests, "get", no_network)
    read_file = tiktoken.load.read_file
    tokens.tokenizer.cache_clear()
    yield {"dir": folder, "data": data, "path": folder / hashlib.sha1(URL.encode()).hexdigest(), "downloads": downloads}
    tokens.tokenizer.cache_clear()
    tiktoken.registry.ENCODINGS.pop(ENCODING, None)
    assert tiktoken.load.read_file is read_file  # the offline swap was undone


def online(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in tokens.OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)


def exact(messages: list[dict[str, str]]) -> int:
    enc = tiktoken.get_encoding(ENCODING)
    per_message = tokens.TEMPLATE_TOKENS_PER_MESSAGE
    return sum(len(enc.encode(m["content"])) + per_message for m in messages) + tokens.TEMPLATE_TOKENS_PER_REQUEST


def test_offline_a_cached_bpe_file_gives_the_tokenizer_mode(cache, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("E5X_OFFLINE", "1")
    cache["dir"].mkdir()
    cache["path"].write_bytes(cache["data"])
    mode, count = tokens.tokenizer(MODEL)
    assert mode == f"tiktoken {ENCODING}" and count is not None
    assert count("the hello") == 2  # 'the', ' hello'
    bound = tokens.prompt_tokens_bound(MESSAGES, MODEL)
    assert bound == exact(MESSAGES) < byte_bound(MESSAGES)
    assert cache["downloads"] == []


def test_offline_a_missing_bpe_file_gives_the_byte_bound_without_a_download(cache, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.monotonic()
    assert tokens.tokenizer(MODEL) == ("bytes", None)
    assert tokens.prompt_tokens_bound(MESSAGES, MODEL) == byte_bound(MESSAGES)
    assert time.monotonic() - t0 < 2
    assert cache["downloads"] == [] and not cache["path"].exists()


def test_offline_a_real_openai_model_without_its_file_gives_the_byte_bound(cache, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("E5X_OFFLINE", "1")
    assert tiktoken.model.encoding_name_for_model("gpt-4o") == "o200k_base"
    assert tokens.prompt_tokens_bound(MESSAGES, "gpt-4o") == byte_bound(MESSAGES)
    assert cache["downloads"] == []


def test_online_the_file_is_downloaded_once_into_tiktokens_cache(cache, monkeypatch: pytest.MonkeyPatch):
    online(monkeypatch)

    class Response:
        content = cache["data"]

        def raise_for_status(self) -> None:
            pass

    got: list[str] = []
    monkeypatch.setattr(requests, "get", lambda url, *a, **k: got.append(url) or Response())
    assert tokens.prompt_tokens_bound(MESSAGES, MODEL) == exact(MESSAGES)
    assert got == [URL] and cache["path"].read_bytes() == cache["data"]
    # Later processes find it there, offline too.
    tokens.tokenizer.cache_clear()
    tiktoken.registry.ENCODINGS.pop(ENCODING, None)
    monkeypatch.setenv("E5X_OFFLINE", "1")
    assert tokens.tokenizer(MODEL)[0] == f"tiktoken {ENCODING}" and got == [URL]


def test_online_a_failed_download_gives_the_byte_bound(cache, monkeypatch: pytest.MonkeyPatch):
    online(monkeypatch)

    def refused(url: str, *a, **k):
        raise requests.ConnectionError("connection refused")

    monkeypatch.setattr(requests, "get", refused)
    assert tokens.tokenizer(MODEL) == ("bytes", None)
    assert tokens.prompt_tokens_bound(MESSAGES, MODEL) == byte_bound(MESSAGES)


def test_online_a_download_that_hangs_gives_the_byte_bound_after_the_timeout(cache, monkeypatch: pytest.MonkeyPatch):
    online(monkeypatch)
    release = threading.Event()
    monkeypatch.setattr(requests, "get", lambda url, *a, **k: release.wait(30))
    monkeypatch.setattr(tokens, "LOAD_TIMEOUT_S", 0.2)
    t0 = time.monotonic()
    try:
        assert tokens.tokenizer(MODEL) == ("bytes", None)
        assert time.monotonic() - t0 < 5
    finally:
        release.set()  # the abandoned load ends (its response has no content: it fails)


def test_models_tiktoken_does_not_know_and_no_tiktoken_give_the_byte_bound(cache, monkeypatch: pytest.MonkeyPatch):
    assert tokens.tokenizer("llama-3.1-8b-instruct") == ("bytes", None)
    assert tokens.prompt_tokens_bound(MESSAGES, "llama-3.1-8b-instruct") == byte_bound(MESSAGES)
    assert tokens.prompt_tokens_bound(MESSAGES) == byte_bound(MESSAGES)
    tokens.tokenizer.cache_clear()
    monkeypatch.setitem(sys.modules, "tiktoken", None)  # not installed
    cache["dir"].mkdir()
    cache["path"].write_bytes(cache["data"])
    assert tokens.tokenizer(MODEL) == ("bytes", None)


def test_synthesis_reserves_the_tokenizer_bound(cache, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from fake_openai import FakeOpenAI

    from e5x.synth import SynthConfig, synthesize

    monkeypatch.setenv("E5X_OFFLINE", "1")
    cache["dir"].mkdir()
    cache["path"].write_bytes(cache["data"])
    monkeypatch.setenv("E5X_TEST_FAKE_KEY", "sk-test")
    server = FakeOpenAI()
    server.start()
    try:
        cfg = SynthConfig(n_examples=4, task_weights={"sts": 1}, tasks_per_brainstorm=5, examples_per_task=1.0,
                          progress=False, concurrency=2, timeout_s=5.0, max_tokens_total=10**7)  # fmt: skip
        cfg.endpoint.base_url = server.base_url
        cfg.endpoint.api_key_env = "E5X_TEST_FAKE_KEY"
        cfg.brainstorm.models = cfg.examples.models = {MODEL: 1}
        run = tmp_path / "run"
        assert synthesize(cfg, run)["complete"]
    finally:
        server.stop()
    messages = {}
    for line in (run / "responses.jsonl").read_text().splitlines():
        rec = json.loads(line)
        messages[rec["id"]] = rec["messages"]
    calls = [json.loads(line) for line in (run / "calls.jsonl").read_text().splitlines()]
    assert calls and all("tokens" in c for c in calls)
    for c in calls:
        step = cfg.brainstorm if c["id"].startswith("brainstorm") else cfg.examples
        msgs = messages[c["id"]]
        assert c["tokens"] == exact(msgs) + step.max_tokens
        assert c["tokens"] < byte_bound(msgs) + step.max_tokens
