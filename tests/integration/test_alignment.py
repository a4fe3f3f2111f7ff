"""GET /federations/{name}/alignment: each worker's whole update against the round's mean, combined from the
per-block alignments; the combination checked against a direct computation, the route on a real federation."""

from __future__ import annotations

import math

import torch
from fastapi.testclient import TestClient

from dashboard_api.alignment import whole_update
from dashboard_api.app import create_app


def test_whole_update_equals_the_cosine_of_the_concatenated_vectors() -> None:
    g = torch.Generator().manual_seed(0)
    sizes = {"embeddings": 50, "layer.0": 30, "head": 7}
    updates = [
        {b: torch.randn(n, generator=g, dtype=torch.float64) for b, n in sizes.items()} for _ in range(3)
    ]
    mean = {b: sum(u[b] for u in updates) / 3 for b in sizes}
    mean_sq = {b: float(mean[b] @ mean[b]) for b in sizes}
    for u in updates:
        blocks = [
            (b, float(u[b].norm()), float(u[b] @ mean[b] / (u[b].norm() * mean[b].norm()))) for b in sizes
        ]
        norm, cos = whole_update(blocks, mean_sq)
        flat, flat_mean = torch.cat([u[b] for b in sizes]), torch.cat([mean[b] for b in sizes])
        assert math.isclose(norm, float(flat.norm()), rel_tol=1e-12)
        assert cos is not None
        assert math.isclose(cos, float(flat @ flat_mean / (flat.norm() * flat_mean.norm())), rel_tol=1e-9)
    assert whole_update([("head", 0.0, None)], {"head": 1.0}) == (0.0, None)  # a zero update has no cosine
    assert whole_update([("head", 2.0, None)], {}) == (2.0, None)  # nor a zero mean


def test_alignment_route_on_a_real_federation(federation_db: str) -> None:
    with TestClient(create_app(federation_db)) as api:
        m = api.get("/api/v1/federations/demo/alignment").json()
        assert m["workers"] == ["org-1", "org-2", "org-3"] and m["rounds"] == [1, 2, 3, 4]
        assert m["total_rounds"] == 4 and len(m["mean_norm"]) == 4
        for row_c, row_n in zip(m["cosine"], m["norm"], strict=True):
            assert all(c is not None and -1 <= c <= 1 for c in row_c)
            assert all(n is not None and n > 0 for n in row_n)
        # the whole update of a round that trained one block and the head is that block and the head
        d = api.get("/api/v1/federations/demo/rounds/2/divergence").json()
        w = next(x for x in d["workers"] if x["worker"] == "org-1")
        assert math.isclose(
            m["norm"][0][1], math.sqrt(sum(b["norm"] ** 2 for b in w["blocks"])), rel_tol=1e-9
        )
        page = api.get("/api/v1/federations/demo/alignment?first=2&limit=2&offset=1").json()
        assert page["rounds"] == [3, 4] and page["total_rounds"] == 3
        assert page["cosine"][0] == m["cosine"][0][2:]
        bad = api.get("/api/v1/federations/demo/alignment?first=3&last=2")
        assert bad.status_code == 422 and "empty range" in bad.json()["detail"]
        assert api.get("/api/v1/federations/nope/alignment").status_code == 404
