"""Robust aggregation rules and pre-aggregators, one module each (see :mod:`defenses.base`)."""
