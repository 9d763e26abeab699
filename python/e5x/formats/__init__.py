"""On-disk formats the stages share: each format is read (and written) in one module here,
which every stage imports; no stage reads another stage's files with code of its own.

- ``benchmark``: BEIR retrieval folders and STS-Benchmark files (evaluation, and public
  training data converted from them).
"""
