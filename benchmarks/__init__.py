"""The benchmark of igq-plugin (``benchmarks/benchmark.py``); not part of the package."""
