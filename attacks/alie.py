"""A Little Is Enough (Baruch, Baruch and Goldberg 2019, NeurIPS)."""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Literal

from torch import Tensor

from attacks.common import check_sign, repeat_row
from robustfl.contracts import Attack, RoundContext
from robustfl.errors import ConfigError
from robustfl.kernels import mean_and_std

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
    """Every Byzantine client sends ``mu + sign * z * sigma``: the coordinate-wise mean and std
    of the observed honest pseudo-gradients, moved ``z`` standard deviations.

    ``sign = -1`` (default) is the published attack: ``mu - z * sigma`` on gradients, as the ALIE
    authors' code (``DriftAttack``) and Karimireddy, He and Jaggi's code (on momentum vectors),
    Blades and FLPoison apply it. ``sign = +1`` is ByzFL's ``ALittleIsEnough``
    (``mu + tau * sigma``). Unlike IPM or sign flipping, ALIE does not commute with negating
    the rows, so applying the published formula to model deltas instead of gradients turns it
    into ``sign = +1``, a much weaker attack in some settings (``docs/conventions.md``).

    Args:
        z: a fixed value (ByzFL fixes 1.5), or ``None`` for the formula.
        z_formula: ``"paper"`` (default) or ``"bucketing"``; see :func:`alie_z`.
        sign: ``-1`` (default, the published direction) or ``+1`` (ByzFL).
        unbiased: sample (default) or population std.
        knowledge: ``omniscient`` (default, as in the paper's experiments and its followers)
            or ``local`` (statistics of the Byzantine clients' own honest pseudo-gradients).
    """

    def __init__(
        self,
        z: float | None = None,
        z_formula: ZFormula = "paper",
        sign: int = -1,
        unbiased: bool = True,
        knowledge: str = "omniscient",
    ) -> None:
        super().__init__(knowledge)
        if z_formula not in ("paper", "bucketing"):
            raise ConfigError(
                f"attack.z_formula={z_formula!r} is invalid: use 'paper' or 'bucketing'."
            )
        check_sign(sign)
        self.z, self.z_formula, self.sign, self.unbiased = z, z_formula, sign, unbiased

    def check(self, num_clients: int, num_byzantine: int) -> None:
        if self.z is None and num_byzantine:
            alie_z(num_clients, num_byzantine, self.z_formula)

    def poison_gradients(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        z = (
            self.z
            if self.z is not None
            else alie_z(ctx.num_clients, ctx.num_byzantine, self.z_formula)
        )
        mu, sigma = mean_and_std(self.observed(honest, byzantine), self.unbiased)
        return repeat_row(mu + (self.sign * z) * sigma, len(byzantine))
