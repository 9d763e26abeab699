"""The benchmarks a user of the installed package runs with ``e5x bench NAME``.

Each module has a ``main(argv) -> int`` and a docstring whose first line ``e5x bench
--list`` shows; it prints a table headed by the device and the versions, and runs its
baselines in the same process. The other benchmarks (synth, train, quality, ablations)
need a source checkout: they live in its ``benches/`` folder.
"""
