"""Sign flipping (Allen-Zhu, Ebrahimian, Li and Alistarh 2021; Karimireddy, He and Jaggi 2021)."""

from torch import Tensor

from robustfl.contracts import Attack, RoundContext
from robustfl.errors import ConfigError


class SignFlip(Attack):
    """Each Byzantine client sends ``-scale`` times the pseudo-gradient it computed honestly
    (linear: the same in gradient and update space).

    Needs no knowledge of the honest clients (``knowledge`` is ``local``).
    """

    row_wise = True

    def __init__(self, scale: float = 1.0, knowledge: str = "local") -> None:
        super().__init__(knowledge)
        if scale <= 0:
            raise ConfigError(f"attack.scale={scale} is invalid: it must be > 0.")
        self.scale = scale

    def poison_gradients(self, honest: Tensor, byzantine: Tensor, ctx: RoundContext) -> Tensor:
        return -self.scale * byzantine
