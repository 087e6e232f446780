"""Compressed client messages: sparsification, quantization and signs, with error feedback.

Every compressor maps the rows of an update matrix ``(n, d)`` to the messages the clients
send, kept in their decoded, dense form ``(n, d)`` (what the server aggregates), all rows at
once. The compressors:

- ``top_k``: the ``k`` coordinates of largest magnitude (Stich, Cordonnier and Jaggi 2018,
  "Sparsified SGD with Memory"; Aji and Heafield 2017).
- ``rand_k``: ``k`` coordinates drawn uniformly, scaled by ``d / k`` to be unbiased unless
  ``rescale=false`` (Stich et al. 2018).
- ``qsgd``: stochastic quantization to ``s`` levels per bucket of coordinates, unbiased
  (Alistarh, Grubic, Li, Tomioka and Vojnovic 2017, "QSGD").
- ``sign``: the sign of every coordinate (Bernstein, Zhao, Azizzadenesheli and Anandkumar
  2019, "signSGD with Majority Vote is Communication Efficient and Fault Tolerant"), or the
  scaled sign ``||x||_1 / d * sign(x)`` of EF-signSGD (Karimireddy, Rebjock, Stich and Jaggi
  2019, "Error Feedback Fixes SignSGD and other Gradient Compression Schemes").

**Error feedback** (Karimireddy et al. 2019): each client keeps the residual ``e`` of what it
did not send, across rounds, and sends ``C(u + e)``, then keeps ``e <- u + e - C(u + e)``.
It needs a contractive compressor (top-k, rand-k without rescaling, the scaled sign).

**Byzantine clients** send messages valid for the protocol: the engine passes every crafted
row through :meth:`Compression.valid`, a valid message of the protocol derived from it
deterministically (top-k for sparse messages, the nearest level of each coordinate for QSGD,
the sign for sign messages; not always the closest valid message: QSGD's rounding per
coordinate is not the nearest point of its lattice of levels).

**Rows that cannot be encoded** (a non-finite entry, or a QSGD bucket whose norm exceeds the
float range) are discarded by every compressor alike: the server receives a row of NaN, which
every rule treats as an outlier (and a majority vote as an abstention), whether an honest
client's training diverged or an attacker sent it.

**Bits** are those of a fixed-length encoding: 32 bits per float, ``ceil(log2 d)`` per
coordinate index, ``1 + ceil(log2(s + 1))`` per QSGD coordinate (sign and level), 1 per sign.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from robustfl.errors import ConfigError

FLOAT_BITS = 32


def top_k(x: Tensor, k: int) -> Tensor:
    """Each row of ``x (n, d)`` with all but its ``k`` largest-magnitude coordinates zeroed."""
    index = torch.topk(x.abs(), k, dim=1, sorted=False).indices
    return torch.zeros_like(x).scatter_(1, index, x.gather(1, index))


def random_subsets(
    rows: int,
    d: int,
    k: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    draws: int | None = None,
) -> Tensor:
    """``(rows, k)`` coordinates of ``range(d)``: for every row, independently, a uniformly
    random ``k``-subset, in the order drawn.

    Sequential sampling without replacement: coordinates are drawn uniformly with replacement
    and repeats are skipped, so the first ``k`` distinct draws are a uniform ``k``-subset
    (which coordinates come next never depends on how many repeats came before). Each row draws
    ``draws`` coordinates at once (by default the expected number needed, about
    ``d ln(d / (d - k))``, plus 5 standard deviations), and the rows with fewer than ``k``
    distinct ones draw again, twice as many: about ``k`` draws per row for ``k << d``.
    """
    if not 0 <= k <= d:
        raise ValueError(f"k={k} must be in [0, d={d}].")
    if k == 0:
        return torch.empty(rows, 0, dtype=torch.long, device=device)
    if draws is None:
        # the draws needed are a sum of geometric variables: mean d (H_d - H_(d-k)), variance
        # sum over j < k of j d / (d - j)^2, at most k^2 d / (d - k)^2 and d^2 pi^2 / 6
        expected = d * math.log((d + 0.5) / (d - k + 0.5))
        std = min(k * math.sqrt(d) / (d - k), 1.3 * d) if k < d else 1.3 * d
        draws = math.ceil(expected + 5 * std + 8)
    index = torch.randint(d, (rows, draws), generator=generator, device=device)
    ordered, order = torch.sort(index, dim=1, stable=True)
    first_sorted = torch.ones_like(ordered, dtype=torch.bool)
    torch.ne(ordered[:, 1:], ordered[:, :-1], out=first_sorted[:, 1:])
    first = torch.empty_like(first_sorted).scatter_(1, order, first_sorted)
    rank = first.cumsum(dim=1)  # distinct coordinates drawn so far
    # the first k distinct draws to their slots; every other draw to a discarded slot k
    slot = torch.where(first & (rank <= k), rank - 1, k)
    subsets = torch.empty(rows, k + 1, dtype=torch.long, device=device)
    subsets = subsets.scatter_(1, slot, index)[:, :k]
    short = rank[:, -1] < k
    if bool(short.any()):
        subsets[short] = random_subsets(int(short.sum()), d, k, generator, device, draws=2 * draws)
    return subsets


def rand_k(x: Tensor, k: int, generator: torch.Generator, rescale: bool = True) -> Tensor:
    """Each row of ``x (n, d)`` restricted to ``k`` coordinates drawn uniformly without
    replacement, independently per row (:func:`random_subsets`), times ``d / k`` if
    ``rescale`` (then unbiased)."""
    n, d = x.shape
    scale = d / k if rescale else 1.0
    if 2 * k <= d:
        kept = random_subsets(n, d, k, generator, x.device)
        return torch.zeros_like(x).scatter_(1, kept, x.gather(1, kept).mul_(scale))
    # fewer draws: the d - k coordinates left out
    left_out = random_subsets(n, d, d - k, generator, x.device)
    return x.mul(scale).scatter_(1, left_out, 0.0)


def _buckets(x: Tensor, bucket_size: int) -> list[Tensor]:
    """Views of contiguous ``x (n, d)``: ``(n, buckets, bucket_size)`` of its full buckets and,
    if ``bucket_size`` does not divide ``d``, ``(n, 1, rest)`` of the shorter last one (one
    bucket of ``d`` when ``bucket_size`` is 0)."""
    d = x.shape[1]
    size = d if bucket_size == 0 else min(bucket_size, d)
    full = d - d % size
    views = [x[:, :full].unflatten(1, (-1, size))]
    if full < d:
        views.append(x[:, full:].unsqueeze(1))
    return views


def qsgd(
    x: Tensor, levels: int, bucket_size: int, generator: torch.Generator | None = None
) -> Tensor:
    """QSGD's quantization of each bucket ``v`` of ``bucket_size`` coordinates of the rows of
    ``x (n, d)`` (0: the whole row): ``||v||_2 sign(v_i) xi_i / s`` with ``s = levels`` and
    ``xi_i`` the level ``l = floor(s |v_i| / ||v||)`` rounded up to ``l + 1`` with probability
    ``s |v_i| / ||v|| - l``, so that ``E[Q(v)] = v`` (a zero bucket stays zero). Without a
    ``generator``, the nearest level instead (deterministic, biased): a valid QSGD message
    derived from an arbitrary row, what a Byzantine client sends (not always the closest
    one: the levels are rounded one coordinate at a time)."""
    x = x.contiguous()
    quantized = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    if generator is not None:
        # sign(r) xi(|r|) for the signed level r = s v_i / ||v|| is distributed as
        # floor(r + u), u ~ U[0, 1): floor(r) + 1 with probability r - floor(r), either sign
        quantized.uniform_(generator=generator)
    for v, q in zip(_buckets(x, bucket_size), _buckets(quantized, bucket_size), strict=True):
        norms = torch.linalg.vector_norm(v, dim=2, keepdim=True)
        divisors = torch.where(norms > 0, norms, 1.0)  # a zero bucket's levels are 0
        if generator is None:
            torch.div(v, divisors, out=q).mul_(levels).round_()
        else:
            q.addcdiv_(v, divisors, value=levels).floor_()
        q.clamp_(-levels, levels).mul_(norms / levels)
    return quantized


def sign(x: Tensor, scaled: bool = False) -> Tensor:
    """``sign(x)`` per coordinate with ``sign(0) = +1`` (one bit), or with ``scaled`` the row's
    mean magnitude times it: ``||x_j||_1 / d * sign(x_j)`` per row ``x_j`` of ``x (n, d)``.
    NaN stays NaN (:func:`discard_unencodable` then discards the row)."""
    signs = torch.sign(x).add_(x == 0)
    if scaled:
        scale = x.abs().mean(dim=1, keepdim=True)
        overflow = ~torch.isfinite(scale[:, 0]) & torch.isfinite(x).all(dim=1)
        if bool(overflow.any()):  # a finite row whose sum leaves the float range
            scale[overflow] = x[overflow].double().abs().mean(dim=1, keepdim=True).to(x.dtype)
        signs = signs * scale
    return signs


def discard_unencodable(x: Tensor, messages: Tensor) -> Tensor:
    """``messages (n, d)`` of the rows of ``x (n, d)``, with every row that could not be
    encoded (a non-finite entry in ``x``, or a non-finite message, as QSGD's for a bucket
    whose norm overflows) replaced by NaN, in place."""
    bad = ~(torch.isfinite(x).all(dim=1) & torch.isfinite(messages).all(dim=1))
    if bool(bad.any()):
        messages[bad] = torch.nan
    return messages


class Compression:
    """No compression: every client sends its update as 32-bit floats. Subclasses override
    :meth:`compress` (and :meth:`project` when the compressor is random).

    Args:
        error_feedback: keep each client's residual across rounds and add it to its next
            update before compressing (Karimireddy et al. 2019).
    """

    name = "none"
    #: Whether error feedback may be used (the compressor is contractive).
    contractive: bool = True
    active: bool = False

    def __init__(self, error_feedback: bool = False) -> None:
        if error_feedback and not self.active:
            raise ConfigError(
                "compression.error_feedback=true needs a compressor: choose one with "
                "compression=top_k|rand_k|qsgd|sign."
            )
        if error_feedback and not self.contractive:
            raise ConfigError(
                f"compression.error_feedback=true is invalid with compression={self.name}: "
                "error feedback needs a contractive compressor. " + self.contractive_hint()
            )
        self.error_feedback = error_feedback
        self.memory: Tensor | None = None  # (num_clients, d) residuals
        self.d = 0

    def contractive_hint(self) -> str:
        return ""

    def bind(self, num_clients: int, d: int, device: torch.device) -> None:
        """Learn the model's size before the first round (called once)."""
        self.d = d
        if self.error_feedback:
            self.memory = torch.zeros(num_clients, d, device=device)

    def compress(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """The messages ``(n, d)`` of the rows of ``x (n, d)``."""
        return x

    def project(self, x: Tensor) -> Tensor:
        """The valid messages ``(n, d)`` closest to arbitrary rows ``x (n, d)`` (what a
        Byzantine client can send); deterministic compressors send ``compress(x)``."""
        return self.compress(x, None)  # type: ignore[arg-type]

    def valid(self, x: Tensor) -> Tensor:
        """The messages a Byzantine client sends for arbitrary rows ``x (n, d)``: their
        :meth:`project`, with rows that cannot be encoded discarded (NaN)."""
        if not self.active:
            return x
        return discard_unencodable(x, self.project(x))

    def encode(self, updates: Tensor, clients: Tensor, generator: torch.Generator) -> None:
        """Replace the rows of ``updates (n, d)``, those of ``clients (n,)``, by their
        messages, in place, through each client's error-feedback memory if kept; rows that
        cannot be encoded are discarded (NaN)."""
        if not self.active:
            return
        if self.memory is None:
            updates.copy_(discard_unencodable(updates, self.compress(updates, generator)))
            return
        if len(clients) == len(self.memory):  # everyone: the memory rows are in order
            corrected = updates.add_(self.memory)
            messages = discard_unencodable(corrected, self.compress(corrected, generator))
            torch.sub(corrected, messages, out=self.memory)
        else:
            rows = clients.to(updates.device)
            corrected = updates.add_(self.memory.index_select(0, rows))
            messages = discard_unencodable(corrected, self.compress(corrected, generator))
            self.memory[rows] = corrected - messages
        updates.copy_(messages)

    def bits_per_message(self) -> int:
        """Bits one client sends per round."""
        return FLOAT_BITS * self.d

    def parameters(self) -> dict[str, Any]:
        """The compressor's own settings (subclasses add theirs)."""
        return {}

    def describe(self) -> dict[str, Any]:
        """The compressor's parameters and bits per message, for the run's summary."""
        return {
            "name": self.name,
            **self.parameters(),
            "error_feedback": self.error_feedback,
            "bits_per_message": self.bits_per_message(),
        }

    def state_dict(self) -> dict[str, Any]:
        return {} if self.memory is None else {"memory": self.memory}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "memory" in state and self.memory is not None:
            self.memory.copy_(state["memory"])


def _check_ratio(name: str, ratio: float) -> None:
    if not 0 < ratio < 1:
        raise ConfigError(
            f"compression.ratio={ratio} is invalid for compression={name}: the fraction of "
            "coordinates sent must be in (0, 1) (use compression=none to send all of them)."
        )


class Sparsification(Compression):
    """Keep ``k = max(1, round(ratio d))`` coordinates per message, sent as (index, value)
    pairs."""

    active = True

    def __init__(self, ratio: float, error_feedback: bool = False) -> None:
        _check_ratio(self.name, ratio)
        self.ratio = ratio
        super().__init__(error_feedback)

    @property
    def k(self) -> int:
        return max(1, round(self.ratio * self.d))

    def project(self, x: Tensor) -> Tensor:
        # any k-sparse row is a valid message; the closest one in l2 keeps the top k
        return top_k(x, self.k)

    def bits_per_message(self) -> int:
        return self.k * (FLOAT_BITS + max(1, math.ceil(math.log2(self.d))))

    def parameters(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "k": self.k}


class TopK(Sparsification):
    """Top-k sparsification (see :func:`top_k`)."""

    name = "top_k"

    def compress(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return top_k(x, self.k)


class RandK(Sparsification):
    """Random-k sparsification (see :func:`rand_k`); unbiased with ``rescale``."""

    name = "rand_k"

    def __init__(self, ratio: float, rescale: bool = True, error_feedback: bool = False) -> None:
        self.rescale = rescale
        self.contractive = not rescale
        super().__init__(ratio, error_feedback)

    def contractive_hint(self) -> str:
        return "Set compression.rescale=false (rand-k scaled by d/k is unbiased, not contractive)."

    def compress(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return rand_k(x, self.k, generator, self.rescale)

    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), "rescale": self.rescale}


class QSGD(Compression):
    """QSGD with ``levels`` levels per bucket of ``bucket_size`` coordinates (see
    :func:`qsgd`; 0: one bucket per message). Unbiased, not contractive."""

    name = "qsgd"
    active = True
    contractive = False

    def __init__(
        self, levels: int = 16, bucket_size: int = 512, error_feedback: bool = False
    ) -> None:
        if levels < 1:
            raise ConfigError(f"compression.levels={levels} is invalid: it must be >= 1.")
        if bucket_size < 0:
            raise ConfigError(
                f"compression.bucket_size={bucket_size} is invalid: use 0 (the whole message "
                "is one bucket) or a positive number of coordinates."
            )
        self.levels = levels
        self.bucket_size = bucket_size
        super().__init__(error_feedback)

    def contractive_hint(self) -> str:
        return "Use compression=top_k, rand_k with rescale=false, or sign with scaled=true."

    def compress(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        return qsgd(x, self.levels, self.bucket_size, generator)

    def project(self, x: Tensor) -> Tensor:
        return qsgd(x, self.levels, self.bucket_size, None)

    def bits_per_message(self) -> int:
        buckets = 1 if self.bucket_size == 0 else math.ceil(self.d / self.bucket_size)
        return buckets * FLOAT_BITS + self.d * (1 + math.ceil(math.log2(self.levels + 1)))

    def parameters(self) -> dict[str, Any]:
        return {"levels": self.levels, "bucket_size": self.bucket_size}


class Sign(Compression):
    """Sign compression (see :func:`sign`): plain signs for signSGD (pair with
    ``defense=majority_vote``), or ``scaled`` signs for EF-signSGD."""

    name = "sign"
    active = True

    def __init__(self, scaled: bool = False, error_feedback: bool = False) -> None:
        self.scaled = scaled
        self.contractive = scaled
        super().__init__(error_feedback)

    def contractive_hint(self) -> str:
        return "Set compression.scaled=true (EF-signSGD's scaled sign, Karimireddy et al. 2019)."

    def compress(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        return sign(x, self.scaled)

    def project(self, x: Tensor) -> Tensor:
        return sign(x, self.scaled)

    def bits_per_message(self) -> int:
        return self.d + (FLOAT_BITS if self.scaled else 0)

    def parameters(self) -> dict[str, Any]:
        return {"scaled": self.scaled}
