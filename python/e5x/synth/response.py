"""Read one chat-completion body into the fields the response log keeps, whatever its shape.

OpenAI-compatible servers disagree on details: ``content`` may be a string, a list of
parts (``[{"type": "text", "text": ...}]``), null (a refusal, a tool call, an empty
answer), ``message`` may be null, ``usage`` may be missing or hold strings. Everything
here is total: any JSON value goes in, a :class:`Completion` comes out, and what cannot
be used is named in ``rejected`` instead of raising. Only a body with no ``choices``
entry at all is :class:`MalformedBody` (a transport-level fault the runner retries).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from e5x.formats.response_log import content_text
from e5x.synth.tokens import utf8_len

# The raw value of an odd field is kept in the log (for the report), up to this size.
MAX_RAW_CHARS = 2000


class MalformedBody(ValueError):
    """The body is not a chat completion (no JSON object with a ``choices`` entry)."""


def token_count(v: Any) -> int | None:
    """A usage count as a non-negative int, or None when it is not one (bools, NaN, "12k")."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v if v >= 0 else None
    if isinstance(v, float):
        return math.ceil(v) if math.isfinite(v) and v >= 0 else None
    if isinstance(v, str) and v.strip().isdigit():
        return int(v.strip())
    return None


def _raw(v: Any) -> Any:
    """``v`` if its JSON is small, else its JSON cut to MAX_RAW_CHARS (a string)."""
    text = json.dumps(v, ensure_ascii=False, default=repr)
    return v if len(text) <= MAX_RAW_CHARS else text[:MAX_RAW_CHARS]


@dataclass
class Completion:
    content: str | None
    refusal: str | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    usage_estimated: bool
    rejected: str | None  # why the answer cannot be used; None when it has text
    model: Any = None
    response_id: Any = None
    extra: dict[str, Any] = field(default_factory=dict)  # raw odd values, kept for the report


def parse_completion(body: Any, prompt_tokens_bound: int) -> Completion:
    """The first choice of ``body`` (a decoded JSON value). ``prompt_tokens_bound`` stands
    in for a missing or unusable ``usage.prompt_tokens``; a missing completion count is
    bounded by the answer's UTF-8 bytes. Raises only :class:`MalformedBody`."""
    if not isinstance(body, dict):
        raise MalformedBody(f"the body is a JSON {type(body).__name__}, not an object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        err = body.get("error")
        raise MalformedBody(f"no choices in the body{f' (error: {_raw(err)!r:.300})' if err else ''}")
    choice = choices[0]
    extra: dict[str, Any] = {}
    rejected: str | None = None
    if not isinstance(choice, dict):
        extra["choice_raw"] = _raw(choice)
        choice = {}
        rejected = "the choice is not an object"
    message = choice.get("message")
    if not isinstance(message, dict):
        if rejected is None:
            rejected = "the choice has no message" if message is None else "the message is not an object"
        if message is not None:
            extra["message_raw"] = _raw(message)
        message = {}
    raw_content = message.get("content")
    content = content_text(raw_content)
    if raw_content is not None and not isinstance(raw_content, str):
        extra["content_raw"] = _raw(raw_content)
    raw_refusal = message.get("refusal")
    refusal = content_text(raw_refusal) if raw_refusal is not None else None
    if raw_refusal is not None and refusal is None:
        refusal = json.dumps(_raw(raw_refusal), ensure_ascii=False)
    # Reasoning models served by vLLM/DeepSeek return their thinking beside the content;
    # it was paid for, so it is kept (and explains an empty answer cut by max_tokens).
    reasoning = content_text(message.get("reasoning_content", message.get("reasoning")))
    if reasoning:
        extra["reasoning"] = reasoning
    finish = choice.get("finish_reason")
    finish_reason = finish if finish is None or isinstance(finish, str) else json.dumps(_raw(finish))
    if rejected is None:
        if refusal:
            rejected = "refusal"
        elif content is None and raw_content is not None:
            rejected = f"content of type {type(raw_content).__name__} holds no text"
        elif not content or not content.strip():
            rejected = "empty content"
            if message.get("tool_calls"):
                rejected = "a tool call instead of content"
            elif reasoning:
                rejected = "reasoning only, no content (max_tokens too small?)"

    usage = body.get("usage")
    u = usage if isinstance(usage, dict) else {}
    pt, ct = token_count(u.get("prompt_tokens")), token_count(u.get("completion_tokens"))
    estimated = pt is None or ct is None
    if usage is not None and (estimated or not isinstance(usage, dict)):
        extra["usage_raw"] = _raw(usage)
    if pt is None:
        pt = prompt_tokens_bound
    if ct is None:
        ct = utf8_len(content) + utf8_len(refusal) + 1
    return Completion(
        content=content,
        refusal=refusal,
        finish_reason=finish_reason,
        prompt_tokens=pt,
        completion_tokens=ct,
        usage_estimated=estimated,
        rejected=rejected,
        model=body.get("model") if isinstance(body.get("model"), (str, type(None))) else _raw(body.get("model")),
        response_id=body.get("id") if isinstance(body.get("id"), (str, int, type(None))) else _raw(body.get("id")),
        extra=extra,
    )
