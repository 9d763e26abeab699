"""Task taxonomy of the synthetic data: the six task types, their schemas and placeholders."""

from e5x.tasks.schemas import SCHEMAS, TASK_TYPES

__all__ = ["SCHEMAS", "TASK_TYPES"]
