"""Type stub of the Rust extension ``e5x._native`` (see rust/src/py.rs).

Arrow data crosses as objects implementing the Arrow PyCapsule stream interface
(``__arrow_c_stream__``): polars Series/DataFrame in, Arrow tables/chunked arrays out
(wrap them with ``pl.DataFrame(...)`` / ``pl.Series(...)``). Use the typed wrappers in
``e5x.core`` rather than this module directly.
"""

from typing import Any, final

__all__ = [
    "__version__",
    "MAX_DEPTH",
    "MAX_TEXT_BYTES",
    "Validator",
    "Deduplicator",
    "QualityGate",
    "task_problems",
    "sample_placeholders",
    "render",
    "template_names",
    "reason_codes",
]

__version__: str
MAX_DEPTH: int
MAX_TEXT_BYTES: int

@final
class Validator:
    def __new__(cls, schemas: list[tuple[str, str]]) -> Validator: ...
    @property
    def task_types(self) -> list[str]: ...
    @property
    def unpack_columns(self) -> list[str]: ...
    def validate(
        self,
        texts: Any,
        task_types: Any,
        extract: bool = False,
        unpack: bool = False,
        json: bool = True,
        dedup: Deduplicator | None = None,
        dedup_fields: list[str] | None = None,
        gate: QualityGate | None = None,
        gate_tasks: Any | None = None,
        gate_languages: Any | None = None,
        gate_min_words: list[tuple[str, Any]] | None = None,
    ) -> Any: ...

@final
class QualityGate:
    def __new__(
        cls,
        checks: list[tuple[str, float]],
        types: list[tuple[str, str, list[tuple[str, int]]]],
        language_codes: list[tuple[str, str]] = ...,
    ) -> QualityGate: ...
    @property
    def checks(self) -> list[tuple[str, float]]: ...

@final
class Deduplicator:
    def __new__(cls, casefold: bool = False) -> Deduplicator: ...
    @property
    def casefold(self) -> bool: ...
    @property
    def seen(self) -> int: ...
    @property
    def unique(self) -> int: ...
    def add(self, names: list[str], columns: list[Any]) -> Any: ...

def sample_placeholders(
    names: list[str], values: list[list[str]], weights: list[list[float]], n: int, seed: int
) -> Any: ...
def render(template: str, names: list[str], columns: list[Any], n: int) -> Any: ...
def template_names(template: str) -> list[str]: ...
def reason_codes() -> list[str]: ...
def task_problems(tasks: list[str], min_words: int = 4) -> list[str | None]: ...
