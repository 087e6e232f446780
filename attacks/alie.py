"""A Little Is Enough (Baruch, Baruch and Goldberg 2019, NeurIPS)."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Literal

from torch import Tensor

from attacks.base import Attack, mean_and_std, repeat_row
from robustfl.context import RoundContext
from robustfl.errors import ConfigError

ZFormula = Literal["paper", "bucketing"]


def alie_z(n: int, f: int, formula: ZFormula = "paper") -> float:
    """ALIE's ``z_max`` for ``n`` clients of which ``f`` are Byzantine.

    With ``s = floor(n / 2 + 1) - f`` (the supporters the attacker needs):
    ``"paper"``: ``z = Phi^-1((n - s) / n)`` (Baruch et al. 2019, Algorithm 3);
    ``"bucketing"``: ``z = Phi^-1((n - f - s) / (n - f))``, the form in the official code of
    Karimireddy, He and Jaggi (2022), also used by Blades and FLPoison.
    """
    s = math.floor(n / 2 + 1) - f
    if formula == "paper":
        p = (n - s) / n
    elif formula == "bucketing":
        p = (n - f - s) / (n - f)
    else:
        raise ConfigError(f"attack.z_formula={formula!r} is invalid: use 'paper' or 'bucketing'.")
    if not 0 < p < 1:
        raise ConfigError(
            f"attack=alie: z is undefined for n={n}, f={f} with the {formula!r} formula "
            f"(Phi^-1({p:.3f})); set attack.z to a number."
        )
    return NormalDist().inv_cdf(p)


class ALIE(Attack):
    """Every Byzantine client sends ``mu - z * sigma`` (coordinate-wise mean and std of the
    observed honest updates).

    Args:
        z: a fixed value (ByzFL fixes 1.5), or ``None`` for the formula.
        z_formula: ``"paper"`` (default) or ``"bucketing"``; see :func:`alie_z`.
        unbiased: sample (default) or population std.
        knowledge: ``omniscient`` (default, as in the paper's experiments and its followers)
            or ``local`` (statistics of the Byzantine clients' own honest updates).
    """

    poisons_updates = True

    def __init__(
        self,
        z: float | None = None,
        z_formula: ZFormula = "paper",
        unbiased: bool = True,
        knowledge: str = "omniscient",
    ) -> None:
        super().__init__(knowledge)
        if z_formula not in ("paper", "bucketing"):
            raise ConfigError(
                f"attack.z_formula={z_formula!r} is invalid: use 'paper' or 'bucketing'."
            )
        self.z, self.z_formula, self.unbiased = z, z_formula, unbiased

    def check(self, num_clients: int, num_byzantine: int) -> None:
        if self.z is None and num_byzantine:
            alie_z(num_clients, num_byzantine, self.z_formula)

    def poison_updates(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        z = (
            self.z
            if self.z is not None
            else alie_z(ctx.num_clients, ctx.num_byzantine, self.z_formula)
        )
        mu, sigma = mean_and_std(self.observed(honest, byzantine), self.unbiased)
        return repeat_row(mu - z * sigma, len(byzantine))
