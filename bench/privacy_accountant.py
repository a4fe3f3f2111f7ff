"""Study 3 of bench.privacy: ε from strata.accountant (what a private coordinator records: dp-accounting's
RDP accountant) against Opacus's RDP and PRV accountants and dp-accounting's PLD accountant, for the
settings of the other two studies and two subsampled references. Seconds, no training."""

from __future__ import annotations

import argparse
import warnings
from typing import Any

from strata import accountant
from strata.privacy_cli import smallest_z

ACCOUNTANT_S = 15.0  # for the estimate
PLD_INTERVAL = 1e-3  # dp-accounting PLD: value discretisation interval
PRV_EPS_ERROR = 0.01  # Opacus PRV: the error allowed on ε
#: reference settings besides the studies' own, with Poisson subsampling: (label, q, z, rounds)
SUBSAMPLED = (("subsampled, q 0.1", 0.1, 1.0, 100), ("subsampled, q 0.01", 0.01, 1.1, 1000))


def settings(args: argparse.Namespace) -> list[tuple[str, float, float, int]]:
    """(label, q, z, rounds): study 1's budgets, study 2's, and the subsampled references."""
    q, delta = args.sampling_rate, args.delta
    out = [
        (f"accuracy, ε {e:g}", q, smallest_z(e, args.rounds_a, q, delta), args.rounds_a)
        for e in args.epsilons
    ]
    out.append(
        (
            f"worldlm, ε {args.lm_epsilon:g}",
            q,
            smallest_z(args.lm_epsilon, args.rounds_b, q, delta),
            args.rounds_b,
        )
    )
    return out + list(SUBSAMPLED)  # fmt: skip


def study_accountant(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for label, q, z, n in settings(args):
        row: dict[str, Any] = dict(label=label, q=q, z=z, rounds=n, delta=args.delta)
        row["strata"] = accountant.epsilon([(q, z)] * n, args.delta)
        for key, fn in (("opacus_rdp", opacus_rdp), ("opacus_prv", opacus_prv), ("pld", pld)):
            try:
                row[key] = fn(q, z, n, args.delta)
            except Exception as exc:  # noqa: BLE001 - an accountant that cannot answer is reported
                row[key] = None
                row[f"{key}_error"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
    return dict(rows=rows, pld_interval=PLD_INTERVAL, prv_eps_error=PRV_EPS_ERROR)


def opacus_rdp(q: float, z: float, n: int, delta: float) -> float:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = [(z, q, n)]  # (noise multiplier, sample rate, steps)
    return float(acc.get_epsilon(delta))


def opacus_prv(q: float, z: float, n: int, delta: float) -> float:
    from opacus.accountants import PRVAccountant

    acc = PRVAccountant()
    acc.history = [(z, q, n)]
    with warnings.catch_warnings():  # a log(0) at q = 1, harmless
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta, eps_error=PRV_EPS_ERROR))


def pld(q: float, z: float, n: int, delta: float) -> float:
    import dp_accounting
    from dp_accounting.pld import pld_privacy_accountant

    acc = pld_privacy_accountant.PLDAccountant(value_discretization_interval=PLD_INTERVAL)
    gaussian = dp_accounting.GaussianDpEvent(z)
    acc.compose(gaussian if q == 1 else dp_accounting.PoissonSampledDpEvent(q, gaussian), n)
    return float(acc.get_epsilon(delta))
