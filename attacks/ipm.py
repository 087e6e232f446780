"""Inner product manipulation (Xie, Koyejo and Gupta 2020, UAI: "Fall of Empires")."""

from torch import Tensor

from attacks.common import repeat_row
from robustfl.contracts import Attack, RoundContext
from robustfl.errors import ConfigError


class IPM(Attack):
    """Every Byzantine client sends ``-epsilon * mu`` (``mu`` the mean of the observed honest
    pseudo-gradients), making the aggregate's inner product with the true gradient small or
    negative. Linear in the rows, so the same in gradient and update space.

    Args:
        epsilon: the paper's small-epsilon setting 0.1 (default; it defeats Krum and median,
            whose output stays near the honest rows). Against the plain mean an epsilon above
            ``h / f`` reverses the direction. Peers' defaults: ByzFL 2.0, Blades 1.0,
            FLPoison 0.1.
    """

    def __init__(self, epsilon: float = 0.1, knowledge: str = "omniscient") -> None:
        super().__init__(knowledge)
        if epsilon <= 0:
            raise ConfigError(f"attack.epsilon={epsilon} is invalid: it must be > 0.")
        self.epsilon = epsilon

    def poison_gradients(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        mu = self.observed(honest, byzantine).mean(dim=0)
        return repeat_row(-self.epsilon * mu, len(byzantine))
