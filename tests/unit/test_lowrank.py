"""Exact LoRA aggregation (strata.lowrank) against dense float64 SVDs of the weighted mean of products."""

from __future__ import annotations

import pytest
import torch

from strata.lowrank import Factors, canonicalise, factorise, truncate, weighted_product

F64 = torch.float64


def clients(
    ranks: tuple[int, ...], d_out: int, d_in: int, seed: int = 0
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[float]]:
    g = torch.Generator().manual_seed(seed)
    bs = [torch.randn(d_out, r, generator=g, dtype=F64) for r in ranks]
    as_ = [torch.randn(r, d_in, generator=g, dtype=F64) for r in ranks]
    weights = [float(w) for w in torch.randint(1, 100, (len(ranks),), generator=g)]
    return bs, as_, weights


def mean_product(bs: list[torch.Tensor], as_: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    return torch.stack([w * b @ a for w, b, a in zip(weights, bs, as_, strict=True)]).sum(0) / sum(weights)


def best(m: torch.Tensor, r: int) -> tuple[torch.Tensor, float]:
    """Best rank-r approximation of m and the share of ‖m‖_F² it leaves out, from a dense float64 SVD."""
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    total = float(s.square().sum())
    return (u[:, :r] * s[:r]) @ vh[:r], (float(s[r:].square().sum()) / total if total else 0.0)


def assert_close(x: torch.Tensor, y: torch.Tensor, rel: float = 1e-5) -> None:
    atol = rel * max(1.0, float(y.abs().max()) if y.numel() else 0.0)
    torch.testing.assert_close(x.to(F64), y.to(F64), rtol=0.0, atol=atol)


def assert_canonical(f: Factors, rank: int) -> None:
    assert f.B.dtype == f.A.dtype == f.singular.dtype == torch.float32
    assert f.B.shape[1] == f.A.shape[0] == f.singular.shape[0] == rank
    assert_close(f.A @ f.A.T, torch.eye(rank, dtype=F64))
    assert bool((f.singular[:-1] >= f.singular[1:]).all()), f.singular
    assert_close(f.B.norm(dim=0), f.singular)
    largest = f.A.gather(1, f.A.abs().argmax(dim=1, keepdim=True))
    assert bool((largest > 0).all())
    assert 0.0 <= f.discarded <= 1.0


def test_weighted_product_is_the_weighted_mean() -> None:
    bs, as_, w = clients((2, 3, 5), 7, 6)
    assert_close(weighted_product(bs, as_, w), mean_product(bs, as_, w))
    assert weighted_product(bs, as_, w).dtype == torch.float32


def shared_a() -> tuple[list[torch.Tensor], list[torch.Tensor], list[float], int]:
    bs, as_, w = clients((8, 8, 8), 32, 24, seed=1)
    return bs, [as_[0]] * 3, w, 8


def small_sum() -> tuple[list[torch.Tensor], list[torch.Tensor], list[float], int]:
    return (*clients((2, 3, 3), 32, 24, seed=2), 8)


def one_client() -> tuple[list[torch.Tensor], list[torch.Tensor], list[float], int]:
    return (*clients((8,), 12, 40, seed=3), 8)


@pytest.mark.parametrize("case", [shared_a, small_sum, one_client])
def test_products_within_the_rank_are_kept_exactly(case) -> None:
    bs, as_, w, rank = case()
    f = factorise(bs, as_, w, rank)
    assert_close(f.B @ f.A, mean_product(bs, as_, w))
    assert f.discarded < 1e-10
    assert_canonical(f, rank)


@pytest.mark.parametrize(
    ("d_out", "d_in", "ranks", "rank", "method"),
    [
        (48, 40, (4, 8, 16), 16, "stacked"),  # Σ r_k = 28 ≤ min(d): M is never formed
        (20, 24, (4, 8, 16), 16, "dense"),  # Σ r_k = 28 > 20
        (40, 48, (4, 8, 12, 8), 12, "stacked"),  # federation rank below Σ r_k: truncation discards energy
    ],
)
def test_heterogeneous_ranks_give_the_best_approximation(
    d_out: int, d_in: int, ranks: tuple[int, ...], rank: int, method: str
) -> None:
    bs, as_, w = clients(ranks, d_out, d_in, seed=4)
    m = mean_product(bs, as_, w)
    want, discarded = best(m, rank)
    f = factorise(bs, as_, w, rank)
    assert f.method == method
    assert discarded > 1e-3  # the case does lose something
    assert f.discarded == pytest.approx(discarded, rel=1e-9, abs=1e-12)
    assert_close(f.B @ f.A, want)
    assert_canonical(f, rank)


def test_the_three_methods_agree() -> None:
    bs, as_, w = clients((4, 4, 8), 36, 30, seed=5)  # rank(M) = 16: exact for the randomised method too
    got = {m: factorise(bs, as_, w, 16, method=m) for m in ("stacked", "dense", "randomised")}
    assert {m: f.method for m, f in got.items()} == {m: m for m in got}
    ref = got["dense"]
    for f in got.values():
        assert_close(f.B, ref.B)
        assert_close(f.A, ref.A)
        assert_close(f.singular, ref.singular)
        assert f.discarded == pytest.approx(0.0, abs=1e-10)


def test_randomised_is_chosen_above_the_dense_limit_and_exact_for_low_rank() -> None:
    bs, as_, w = clients((8, 8, 8), 20, 24, seed=6)  # Σ r_k = 24 > 20; rank(M) = 20 ≤ rank + oversampling
    m = mean_product(bs, as_, w)
    want, discarded = best(m, 16)
    f = factorise(bs, as_, w, 16, dense_limit=10)
    assert f.method == "randomised"
    assert f.discarded == pytest.approx(discarded, rel=1e-6)
    assert_close(f.B @ f.A, want)
    assert_canonical(f, 16)


def test_randomised_is_reproducible_and_never_underestimates_the_loss() -> None:
    bs, as_, w = clients((16, 16, 16, 16), 60, 64, seed=7)  # rank(M) = 60 > 16 + oversampling: approximate
    _, discarded = best(mean_product(bs, as_, w), 16)
    f1, f2 = (factorise(bs, as_, w, 16, dense_limit=10, seed=3) for _ in range(2))
    assert f1.method == "randomised"
    assert torch.equal(f1.B, f2.B) and torch.equal(f1.A, f2.A) and f1.discarded == f2.discarded
    assert discarded - 1e-9 <= f1.discarded <= discarded + 0.05
    assert_canonical(f1, 16)


@pytest.mark.parametrize("rank_k", [1, 3, 7, 12])
def test_truncating_canonical_factors_gives_the_best_lower_rank(rank_k: int) -> None:
    bs, as_, w = clients((4, 8, 12), 40, 36, seed=8)
    m = mean_product(bs, as_, w)
    f = factorise(bs, as_, w, 12)
    b, a = truncate(f.B, f.A, rank_k)
    assert b.shape == (40, rank_k) and a.shape == (rank_k, 36)
    assert b.is_contiguous() and a.is_contiguous()
    assert_close(b @ a, best(m, rank_k)[0])


def test_canonicalise_keeps_the_product_and_orders_the_directions() -> None:
    (b,), (a,), _ = clients((8,), 30, 20, seed=9)
    f = canonicalise(b, a)
    assert_close(f.B @ f.A, b @ a)
    assert_canonical(f, 8)
    again = canonicalise(f.B, f.A)
    assert_close(again.B, f.B)
    assert_close(again.A, f.A)
    # a raw pair is not canonical: its truncation is worse than the canonical one
    raw_err = float((b[:, :2] @ a[:2] - b @ a).norm())
    canon_err = float((f.B[:, :2].double() @ f.A[:2].double() - b @ a).norm())
    assert canon_err < raw_err


def lora_init() -> tuple[list[torch.Tensor], list[torch.Tensor], list[float], int]:
    """peft's initialisation: B = 0, A random, so M = 0."""
    bs, as_, w = clients((4, 8), 24, 20, seed=10)
    return [torch.zeros_like(b) for b in bs], as_, w, 8


def cancelling() -> tuple[list[torch.Tensor], list[torch.Tensor], list[float], int]:
    """Two clients with opposite updates of equal weight: nonzero factors, M = 0."""
    (b,), (a,), _ = clients((4,), 24, 20, seed=11)
    return [b, -b], [a, a], [5.0, 5.0], 8


def few_directions() -> tuple[list[torch.Tensor], list[torch.Tensor], list[float], int]:
    """Σ r_k = 4 < rank = 8: the SVD has only 4 directions."""
    return (*clients((2, 2), 24, 20, seed=12), 8)


def shared_b() -> tuple[list[torch.Tensor], list[torch.Tensor], list[float], int]:
    """rank(M) = 3 with Σ r_k = 9 > min(d) = 8: forces the dense method."""
    bs, as_, w = clients((3, 3, 3), 8, 20, seed=13)
    return [bs[0]] * 3, as_, w, 6


@pytest.mark.parametrize(
    ("case", "rank_m"), [(lora_init, 0), (cancelling, 0), (few_directions, 4), (shared_b, 3)]
)
def test_missing_rank_is_completed_with_live_directions(case, rank_m: int) -> None:
    bs, as_, w, rank = case()
    m = mean_product(bs, as_, w)
    f = factorise(bs, as_, w, rank, seed=1)
    assert_canonical(f, rank)  # A's rows are orthonormal, hence nonzero, even where M has no direction
    assert bool((f.B[:, rank_m:] == 0).all()) and bool((f.singular[rank_m:] == 0).all())
    assert bool((f.singular[:rank_m] > 0).all())
    assert_close(f.B @ f.A, m)
    assert f.discarded == pytest.approx(0.0, abs=1e-10)
    same = factorise(bs, as_, w, rank, seed=1)
    assert torch.equal(same.A, f.A) and torch.equal(same.B, f.B)
    other = factorise(bs, as_, w, rank, seed=2)
    assert not torch.allclose(other.A[rank_m:], f.A[rank_m:])
    assert_close(other.A[:rank_m], f.A[:rank_m])


def test_averaging_factors_separately_is_not_the_mean_of_products() -> None:
    """Why this module exists: FedAvg on B and A gives mean(B) mean(A), with cross terms B_1 A_2."""
    bs, as_, w = clients((8, 8), 30, 30, seed=14)
    m = mean_product(bs, as_, w)
    mean_b = (w[0] * bs[0] + w[1] * bs[1]) / sum(w)
    mean_a = (w[0] * as_[0] + w[1] * as_[1]) / sum(w)
    assert float((mean_b @ mean_a - m).norm()) > 0.3 * float(m.norm())
    f = factorise(bs, as_, w, 16)
    assert_close(f.B @ f.A, m)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda bs, as_, w, r: ([], [], [], r), "no clients"),
        (lambda bs, as_, w, r: (bs, as_[:1], w, r), "length mismatch"),
        (lambda bs, as_, w, r: (bs, as_, [1.0, 0.0], r), "client 1: weight"),
        (lambda bs, as_, w, r: (bs, as_, [-1.0, 1.0], r), "client 0: weight"),
        (lambda bs, as_, w, r: (bs, as_, [float("nan"), 1.0], r), "client 0: weight"),
        (lambda bs, as_, w, r: (bs, as_, w, 0), "rank must be"),
        (lambda bs, as_, w, r: (bs, as_, w, 21), "rank must be"),
        (lambda bs, as_, w, r: (bs, as_, w, 3), "client 1: its rank 4 exceeds the federation rank 3"),
        (lambda bs, as_, w, r: ([bs[0], bs[1][:-1]], as_, w, r), r"client 1: B A is 23 × 20"),
        (lambda bs, as_, w, r: (bs, [as_[0], as_[1][:, :-1]], w, r), r"client 1: B A is 24 × 19"),
        (lambda bs, as_, w, r: (bs, [as_[0], as_[1][:3]], w, r), "client 1: inner dimensions"),
        (lambda bs, as_, w, r: ([bs[0][0], bs[1]], as_, w, r), "client 0: B and A must be 2-D"),
        (lambda bs, as_, w, r: (bs, [as_[0].int(), as_[1]], w, r), "client 0: .*floating-point"),
        (lambda bs, as_, w, r: ([bs[0] * float("inf"), bs[1]], as_, w, r), "client 0: .*non-finite"),
    ],
)
def test_bad_inputs_are_refused(mutate, message: str) -> None:
    bs, as_, w = clients((2, 4), 24, 20, seed=15)
    bs, as_, w, rank = mutate(bs, as_, w, 8)
    with pytest.raises(ValueError, match=message):
        factorise(bs, as_, w, rank)


def test_bad_method_and_truncation_are_refused() -> None:
    bs, as_, w = clients((2,), 6, 5)
    with pytest.raises(ValueError, match="unknown method"):
        factorise(bs, as_, w, 2, method="qr")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rank_k must be"):
        truncate(bs[0], as_[0], 3)
    with pytest.raises(ValueError, match="rank_k must be"):
        truncate(bs[0], as_[0], 0)
    with pytest.raises(ValueError, match="not a factor pair"):
        truncate(bs[0], as_[0].T, 1)
