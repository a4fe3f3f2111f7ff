"""Server optimizers: the round's aggregate Δ̄ as a pseudo-gradient (docs/methods.md section 7).

Reddi et al., "Adaptive Federated Optimization" (ICLR 2021). Per tensor, with server learning rate η:

- fedavg:     u = Δ̄
- fedavgm:    m ← β m + Δ̄;                              u = m
- fedadagrad: m ← β1 m + (1−β1) Δ̄;  v ← v + Δ̄²;          u = m / (√v + τ)
- fedyogi:    m as above;  v ← v − (1−β2) Δ̄² sign(v − Δ̄²); u = m / (√v + τ)
- fedadam:    m as above;  v ← β2 v + (1−β2) Δ̄²;          u = m / (√v + τ)

and the step is θ ← θ + η u. `step` is pure: it returns the step and the tensor's new state and leaves
its inputs alone, so the coordinator can write the new state with the version it produced and keep the
old one until that version is recorded. A tensor not applied in a round keeps its state unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from strata.names import OPTIMIZERS

NAMES = OPTIMIZERS


@dataclass(frozen=True)
class ServerOptimizer:
    """One federation's server optimizer and its hyper-parameters (validated when built)."""

    name: str = "fedavg"
    lr: float = 1.0  # η
    momentum: float = 0.9  # β for fedavgm
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    initial_v: float = 0.0  # v_0 for the adaptive methods (Reddi et al. start v at τ²; 0 by default)

    def __post_init__(self) -> None:
        if self.name not in NAMES:
            raise ValueError(f"server optimizer {self.name!r}: choose one of {', '.join(NAMES)}")
        if not (self.lr > 0 and self.lr == self.lr and self.lr != float("inf")):
            raise ValueError(f"server learning rate must be a positive number, not {self.lr}")
        for label, b in (("momentum", self.momentum), ("beta1", self.beta1), ("beta2", self.beta2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"server {label} must be in [0, 1), not {b}")
        if not self.tau > 0:
            raise ValueError(f"server tau must be positive, not {self.tau}")
        if self.initial_v < 0:
            raise ValueError(f"server initial_v must be >= 0, not {self.initial_v}")

    @property
    def stateful(self) -> bool:
        """Whether the optimizer keeps state between rounds (everything but plain fedavg)."""
        return self.name != "fedavg"


def step(
    opt: ServerOptimizer, delta: torch.Tensor, state: dict[str, torch.Tensor] | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(η·u, the tensor's new state) for the aggregate `delta` of one tensor and its previous state.

    The arithmetic runs in float32 whatever the input; a missing state starts at m = 0, v = initial_v.
    Plain FedAvg with η = 1 returns `delta` itself (as float32), so callers must not change it in place.
    """
    d = delta.to(torch.float32)
    state = state or {}
    if opt.name == "fedavg":  # plain FedAvg returns the aggregate itself: no copy of a model-sized tensor
        return d * opt.lr if opt.lr != 1.0 else d, {}
    m_old = state.get("m")
    if opt.name == "fedavgm":
        m = d.clone() if m_old is None else m_old.to(torch.float32) * opt.momentum + d
        return m * opt.lr, {"m": m}
    m = d * (1 - opt.beta1)
    if m_old is not None:
        m.add_(m_old.to(torch.float32), alpha=opt.beta1)
    v_old = state.get("v")
    v_prev = torch.full_like(d, opt.initial_v) if v_old is None else v_old.to(torch.float32)
    d2 = d * d
    if opt.name == "fedadagrad":
        v = v_prev + d2
    elif opt.name == "fedyogi":
        v = v_prev - (1 - opt.beta2) * d2 * torch.sign(v_prev - d2)
    else:  # fedadam
        v = v_prev * opt.beta2 + (1 - opt.beta2) * d2
    u = m / (v.sqrt() + opt.tau)
    return u * opt.lr, {"m": m, "v": v}


def flatten_state(state: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """{tensor: {"m": .., "v": ..}} as one flat mapping `tensor::m` for a tensor file."""
    return {f"{name}::{k}": t for name, parts in state.items() for k, t in parts.items()}


def unflatten_state(flat: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The inverse of `flatten_state`; refuses keys it did not write."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in flat.items():
        name, sep, part = key.rpartition("::")
        if not sep or part not in ("m", "v"):
            raise ValueError(f"optimizer state key {key!r} is not tensor::m or tensor::v")
        out.setdefault(name, {})[part] = t
    return out
