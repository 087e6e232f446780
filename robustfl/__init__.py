"""robustfl: a benchmark of Byzantine attacks against robust aggregation in federated learning."""

__version__ = "0.1.0"
