"""The parts of the benchmark, one module each (see ``benchmarks/benchmark.py``).

Each part module has ``run(args, device) -> dict`` (the figures, JSON-ready) and
``markdown(result) -> str`` (one table and a few lines), and uses only the public API
of ``igq_plugin``; :mod:`.common` builds the model and the images.
"""
