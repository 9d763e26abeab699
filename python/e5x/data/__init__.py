"""Training data: public datasets by name (fetched, verified, prepared), Parquet triples,
source mixing, a resumable batch plan, tokenised batches."""

from __future__ import annotations

from e5x.data.batch import Batch, collate, shard
from e5x.data.download import FetchError, fetch
from e5x.data.public import prepare
from e5x.data.registry import datasets
from e5x.data.sampler import BatchPlan
from e5x.data.triples import Source, TripleStore, check_source, read_source
from e5x.formats.triples import COLUMNS, DataError, write_triples

__all__ = [
    "COLUMNS",
    "Batch",
    "BatchPlan",
    "DataError",
    "FetchError",
    "Source",
    "TripleStore",
    "check_source",
    "collate",
    "datasets",
    "fetch",
    "prepare",
    "read_source",
    "shard",
    "write_triples",
]
