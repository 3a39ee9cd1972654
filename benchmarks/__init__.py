"""The harness (installed as ``genbench.benchmarks``): specs and their resolution, training,
runs and resumption, sampling-speed timing, ``bench speed`` and ``bench compare``."""
