"""The import rules of docs/architecture.md, checked in fresh interpreters."""

from __future__ import annotations

import subprocess
import sys

import pytest


def imported_after(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {
        name
        for name in out.stdout.split()
        if name.split(".")[0] in ("robustfl", "attacks", "defenses")
    }


@pytest.mark.parametrize("module", ["robustfl.contracts", "robustfl.linalg", "robustfl.kernels"])
def test_shared_modules_import_no_engine_and_no_plugin(module):
    loaded = imported_after(module)
    assert not {m for m in loaded if m.startswith(("attacks", "defenses"))}
    assert not loaded & {"robustfl.engine", "robustfl.build", "robustfl.config", "robustfl.run"}


def test_attacks_and_defenses_never_import_each_other():
    attack_side = imported_after("attacks.adaptive, attacks.fang, attacks.minsum, attacks.mimic")
    assert not {m for m in attack_side if m.startswith("defenses")}
    defense_side = imported_after("defenses.bulyan, defenses.pipeline, defenses.norm_bound")
    assert not {m for m in defense_side if m.startswith("attacks")}


def test_the_engine_imports_no_particular_attack_or_defense():
    loaded = imported_after("robustfl.engine")
    assert not {m for m in loaded if m.startswith(("attacks", "defenses"))}


def test_nothing_outside_robustfl_flower_imports_flower():
    """The main install never needs flwr: the commands, the engine, the report and every
    attack and defense load without ``robustfl.flower`` (or ``flwr``)."""
    code = (
        "import sys, robustfl.cli, robustfl.run, robustfl.report, robustfl.api, robustfl.build, "
        "attacks.adaptive, attacks.mimic, defenses.pipeline, defenses.krum; "
        "print(' '.join(sorted(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.split())
    assert not {m for m in loaded if m.startswith(("robustfl.flower", "flwr"))}
