"""The names of the conv1 init strategies, importable without TensorFlow (the CLI's choices)."""

INIT_STRATEGIES = ("random", "repeat", "mean", "rgb", "per_band")
