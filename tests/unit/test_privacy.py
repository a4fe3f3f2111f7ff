"""Differential privacy math (docs/methods.md section 6): clipping, the noise's distribution, adaptive
clipping's direction and convergence, and the accountant against the libraries called directly."""

from __future__ import annotations

import math
import random
from pathlib import Path

import dp_accounting
import pytest
import torch
from dp_accounting import rdp

from coordinator.aggregators import PrivateAggregator
from coordinator.ingest import RoundSums
from coordinator.privacy import Mechanism
from coordinator.updates import Spooled
from strata import accountant, privacy
from strata.frames import expected_of
from tests.unit.test_close_pass import spool_update


def test_clip_factor_scales_only_updates_over_the_clip() -> None:
    assert privacy.clip_factor(0.5, 1.0) == 1.0
    assert privacy.clip_factor(1.0, 1.0) == 1.0
    assert privacy.clip_factor(4.0, 1.0) == 0.25
    assert privacy.clip_factor(0.0, 1.0) == 1.0
    with pytest.raises(ValueError, match="clip"):
        privacy.clip_factor(1.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        privacy.clip_factor(math.inf, 1.0)


def test_update_noise_multiplier_keeps_the_pair_at_the_cost_of_z() -> None:
    z, sigma_b = 1.0, 5.0
    z_u = privacy.update_noise_multiplier(z, sigma_b)
    # Andrew et al.: releasing the count with σ_b and the update with z_Δ costs what z alone does
    assert z_u**-2 + (2 * sigma_b) ** -2 == pytest.approx(z**-2)
    assert z_u > z
    with pytest.raises(ValueError, match="exceed z/2"):
        privacy.update_noise_multiplier(1.0, 0.5)
    m = 8.0  # a small federation: m/20 would be invalid, the default keeps 10% of the precision
    sigma = privacy.default_count_noise(1.0, m)
    assert (2 * sigma) ** -2 == pytest.approx(privacy.COUNT_SHARE)


def test_next_clip_moves_in_the_right_direction() -> None:
    # more than γ of the updates under the clip: it shrinks; fewer: it grows; exactly γ: it stays
    assert privacy.next_clip(1.0, unclipped=9, expected=10, quantile=0.5, lr=0.2) < 1.0
    assert privacy.next_clip(1.0, unclipped=1, expected=10, quantile=0.5, lr=0.2) > 1.0
    assert privacy.next_clip(1.0, unclipped=5, expected=10, quantile=0.5, lr=0.2) == pytest.approx(1.0)
    assert privacy.next_clip(2.0, 10, 10, 0.5, 0.2) == pytest.approx(2.0 * math.exp(-0.2 * 0.5))


@pytest.mark.parametrize("start_factor", [0.01, 100.0])
def test_adaptive_clip_converges_to_the_quantile_of_known_norms(start_factor: float) -> None:
    """Norms ~ LogNormal(0, 0.5) (median 1, 0.8-quantile e^{0.5·0.8416}); the clip, started 100× too small or
    100× too large, ends near the γ-quantile with the noised count, as Andrew et al.'s Algorithm 1."""
    rng = random.Random(7)
    gen = torch.Generator().manual_seed(7)
    gamma, m, lr = 0.8, 50, 0.2
    want = math.exp(0.5 * 0.8416212335729143)
    clip = want * start_factor
    sigma_b = privacy.default_count_noise(1.0, m)
    seen = []
    for _ in range(400):
        norms = [math.exp(rng.gauss(0.0, 0.5)) for _ in range(m)]
        unclipped = sum(n <= clip for n in norms) + float(privacy.gaussian(1, sigma_b, gen)[0])
        clip = privacy.next_clip(clip, unclipped, m, gamma, lr)
        seen.append(clip)
    late = seen[-100:]
    assert sum(late) / len(late) == pytest.approx(want, rel=0.08)
    share_under = sum(math.exp(rng.gauss(0.0, 0.5)) <= sum(late) / len(late) for _ in range(20000)) / 20000
    assert share_under == pytest.approx(gamma, abs=0.04)


def test_gaussian_noise_has_the_calibrated_distribution() -> None:
    gen = torch.Generator().manual_seed(123)
    x = privacy.gaussian(200_000, 0.37, gen)
    assert float(x.mean()) == pytest.approx(0.0, abs=4 * 0.37 / math.sqrt(200_000))
    assert float(x.std()) == pytest.approx(0.37, rel=0.01)
    # a normal's fourth moment: 3σ⁴ (a uniform or a Laplace would be far off)
    assert float((x**4).mean()) / 0.37**4 == pytest.approx(3.0, rel=0.05)
    a, b = privacy.noise_generator(), privacy.noise_generator()
    assert not torch.equal(privacy.gaussian(8, 1.0, a), privacy.gaussian(8, 1.0, b)), "seeded from the OS"


def test_private_aggregator_clips_weights_equally_and_divides_by_m(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hand computation: Σ_k min(1, S/‖Δ_k‖)·Δ_k (sample counts ignored) plus the noise, over m."""
    shapes = {"a.weight": (40, 30), "b.bias": (30,)}
    expected = expected_of({n: torch.zeros(s) for n, s in shapes.items()})
    g = torch.Generator().manual_seed(0)
    deltas = [
        {n: torch.randn(*s, generator=g) * scale for n, s in shapes.items()} for scale in (0.01, 1.0, 3.0)
    ]
    mech = Mechanism(clip=2.0, expected=4.0, noise_multiplier=0.8, update_noise=0.8, count_noise=None)
    agg = PrivateAggregator(RoundSums(expected), mech)
    want = {n: torch.zeros(s, dtype=torch.float64) for n, s in shapes.items()}
    for k, d in enumerate(deltas):
        path = tmp_path / f"{k}.update"
        spool_update(path, d, block=500)
        norm = math.sqrt(sum(float(t.double().pow(2).sum()) for t in d.values()))
        agg.accept(Spooled(f"w{k}", path, num_samples=10**k, norm=norm, tensors=frozenset(d)))
        for n, t in d.items():
            want[n] += min(1.0, 2.0 / norm) * t.double()
    noise_gen = torch.Generator().manual_seed(99)
    monkeypatch.setattr(privacy, "noise_generator", lambda: noise_gen)
    agg.finalize()
    check = torch.Generator().manual_seed(99)
    got = dict(agg.result())
    for n in sorted(shapes):  # the noise is drawn tensor by tensor in name order, σ = z·S
        noise = privacy.gaussian(math.prod(shapes[n]), 0.8 * 2.0, check).view(shapes[n])
        torch.testing.assert_close(got[n].double(), (want[n] + noise) / 4.0, atol=1e-5, rtol=1e-5)


def test_accountant_matches_dp_accounting_and_opacus() -> None:
    for q, z, rounds in ((1.0, 1.1, 30), (0.25, 0.9, 200)):
        direct = rdp.RdpAccountant()
        event = dp_accounting.GaussianDpEvent(z)
        direct.compose(event if q == 1 else dp_accounting.PoissonSampledDpEvent(q, event), rounds)
        ours = accountant.epsilon([(q, z)] * rounds, 1e-5)
        assert ours == pytest.approx(direct.get_epsilon(1e-5), rel=1e-9)
        from opacus.accountants import RDPAccountant

        second = RDPAccountant()  # a second library's RDP accountant, its own orders: within a few %
        for _ in range(rounds):
            second.step(noise_multiplier=z, sample_rate=q)
        assert ours == pytest.approx(second.get_epsilon(1e-5), rel=0.05)
    mixed = accountant.epsilon([(1.0, 1.0), (1.0, 1.0), (0.5, 2.0)], 1e-5)
    direct = rdp.RdpAccountant()
    direct.compose(dp_accounting.GaussianDpEvent(1.0), 2)
    direct.compose(dp_accounting.PoissonSampledDpEvent(0.5, dp_accounting.GaussianDpEvent(2.0)), 1)
    assert mixed == pytest.approx(direct.get_epsilon(1e-5), rel=1e-9)
    assert accountant.epsilon([], 1e-5) == 0.0


def test_rounds_within_a_budget() -> None:
    z, q, delta = 1.0, 1.0, 1e-5
    fit = accountant.rounds_within(5.0, q, z, delta, limit=100)
    assert accountant.epsilon([(q, z)] * fit, delta) <= 5.0 < accountant.epsilon([(q, z)] * (fit + 1), delta)
    assert accountant.rounds_within(1e6, q, z, delta, limit=7) == 7
    line = accountant.plan_line(100, q, z, delta, 5.0)
    assert f"allows {fit} of the 100 rounds" in line


def test_strata_privacy_plans_a_run(capsys: pytest.CaptureFixture[str]) -> None:
    from strata.cli import main
    from strata.privacy_cli import smallest_z

    z = smallest_z(8.0, 20, 1.0, 1e-5)
    assert accountant.epsilon([(1.0, z)] * 20, 1e-5) <= 8.0 < accountant.epsilon([(1.0, z * 0.99)] * 20, 1e-5)
    assert main(["privacy", "--rounds", "20", "--noise-multiplier", "1.0", "--target-epsilon", "8"]) == 0
    out = capsys.readouterr().out
    fit = accountant.rounds_within(8.0, 1.0, 1.0, 1e-5, 20)
    assert f"z = 1 allows {fit} of the 20 rounds" in out and f"{z:.3g}" in out
    assert f"{accountant.epsilon([(1.0, 1.0)] * 20, 1e-5):.3g}" in out
    assert main(["privacy", "--rounds", "20", "--noise-multiplier", "0"]) == 2
