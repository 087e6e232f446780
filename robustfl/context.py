"""What attacks and defenses are told about a round, beyond the update matrix."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:  # the engine passes the real objects; no import cycle at run time
    from defenses.base import Defense


@dataclass
class RoundContext:
    """One round, as the engine sees it.

    Attributes:
        round: 0-based round number.
        defense: the defense object of the run (adaptive attacks may call it on candidate
            matrices; calling it is side-effect free for stateless rules, see
            :meth:`defenses.base.Defense.simulate`).
        global_params: ``(d,)`` flattened global model before this round's step.
        generator: the only source of randomness an attack may use this round (also for its
            simulations of the defense: ``defense.simulate(updates, ctx.generator)``).
        num_clients: ``n``, the rows of this round's update matrix.
        num_byzantine: ``f``, the Byzantine rows among them (participating this round).
        byzantine_rows: ``(f,)`` positions of the Byzantine rows in the ``(n, d)`` matrix.
        sample_counts: ``(n,)`` local training samples of each participating client.
        client_ids: ``(n,)`` the client id of every row (stateful rules such as FoolsGold
            keep per-client history).
        defense_generator: the only source of randomness a defense may use this round
            (a stream of its own, so attacks and defenses never shift each other's draws).
        server_update: returns the server's own ``(d,)`` update on its clean root set this
            round (trained on demand; the defense must declare ``root_size``).
    """

    round: int
    defense: Defense | Any
    global_params: Tensor
    generator: torch.Generator
    num_clients: int
    num_byzantine: int
    byzantine_rows: Tensor
    sample_counts: Tensor
    client_ids: Tensor | None = None
    defense_generator: torch.Generator | None = None
    server_update: Callable[[], Tensor] | None = None  # None only outside the engine
