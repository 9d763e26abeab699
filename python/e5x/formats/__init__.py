"""On-disk formats the stages share: each format is read (and written) in one module here,
which every stage imports; no stage reads another stage's files with code of its own.

- ``response_log``: the JSONL logs of a synth run; ``responses.jsonl`` holds one record
  per answer (written by synth, its example answers read by clean).
- ``triples``: training triples, Parquet (written by clean and the data converters, read
  by training).
- ``jsonfile``: JSON documents replaced whole (a synth run's config and summary, the clean
  report).
- ``benchmark``: BEIR retrieval folders and STS-Benchmark files (evaluation, and public
  training data converted from them).
"""
