"""JSON Schemas of one LLM-written example, per built-in task type.

Defined in :mod:`e5x.schemas`, below every stage, because the native validator's wrapper
(``e5x.core``) checks against them by default; re-exported here beside the taxonomy.
"""

from __future__ import annotations

from e5x.schemas import MAX_TEXT_CHARS, SCHEMAS, TASK_TYPES, object_schema

__all__ = ["MAX_TEXT_CHARS", "SCHEMAS", "TASK_TYPES", "object_schema"]
