"""Task knowledge: the taxonomy of the synthetic data (the six task types, their schemas and
placeholders) and the query instructions of public tasks (``e5x.tasks.instructions``)."""

from e5x.tasks.languages import (
    HIGH_RESOURCE,
    XLMR_LANGUAGES,
    default_language_weights,
    resolve_language_weights,
)
from e5x.tasks.schemas import SCHEMAS, TASK_TYPES
from e5x.tasks.taxonomy import (
    DEFAULT_TASK_WEIGHTS,
    LANGUAGES,
    Mapping3,
    TaskType,
    builtin_task_types,
    load_task_types,
    task_type_from_dict,
    task_types,
    template_placeholders,
)

__all__ = [
    "DEFAULT_TASK_WEIGHTS",
    "HIGH_RESOURCE",
    "LANGUAGES",
    "SCHEMAS",
    "TASK_TYPES",
    "XLMR_LANGUAGES",
    "Mapping3",
    "TaskType",
    "builtin_task_types",
    "default_language_weights",
    "load_task_types",
    "resolve_language_weights",
    "task_type_from_dict",
    "task_types",
    "template_placeholders",
]
