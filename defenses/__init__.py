"""Robust aggregation rules and pre-aggregators, one module each (contracts in :mod:`robustfl.contracts`)."""
