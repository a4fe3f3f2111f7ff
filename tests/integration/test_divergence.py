"""Layer-wise divergence measured by a real coordinator (streaming pass + second pass over the spool),
checked against a direct numpy computation on the deltas the workers actually sent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from coordinator.store import Store
from dashboard_api.app import create_app
from strata import synthetic
from strata.layers import block_map
from strata.modeling import load_model
from strata.storage.models import Round, RoundBlock, RoundTensor, Update, UpdateAlignment, Worker
from tests.helpers import ServedCoordinator, coordinator_settings, make_worker_data
from tests.integration.test_federation import run_workers


def test_stored_divergence_matches_numpy(tmp_path: Path, db_url: str, tiny_model: Path) -> None:
    settings = coordinator_settings(tmp_path, db_url, tiny_model, rounds=2)
    coord = ServedCoordinator(settings)
    sent = run_workers(coord.address, make_worker_data(tmp_path / "data", 3), tmp_path)
    coord.wait()
    bmap = block_map(load_model(tiny_model, synthetic.LABELS)[0])

    store = Store(db_url)
    with store.sessions() as s:
        for rnd in s.scalars(select(Round).order_by(Round.number)):
            updates = {name: next(res for t, res in sent[name] if t.round == rnd.number) for name in sent}
            names = sorted(updates)
            n = np.array([updates[k].num_samples for k in names], dtype=np.float64)
            p = n / n.sum()
            assert rnd.noise_floor == pytest.approx(1 - (p**2).sum())

            def flat(k: str, tensors: list[str], updates: dict = updates) -> np.ndarray:  # type: ignore[type-arg]
                return np.concatenate([updates[k].delta[t].double().numpy().ravel() for t in tensors])

            def check(
                tensors: list[str], row: RoundBlock | RoundTensor, names: list[str] = names, p: np.ndarray = p
            ) -> np.ndarray:
                xs = [flat(k, tensors) for k in names]
                mean = sum(pk * x for pk, x in zip(p, xs, strict=True))
                e = sum(pk * x @ x for pk, x in zip(p, xs, strict=True))
                v = sum(pk * (x - mean) @ (x - mean) for pk, x in zip(p, xs, strict=True))
                assert row.energy == pytest.approx(e, rel=1e-5)
                assert row.spread == pytest.approx(v, rel=1e-4, abs=1e-6 * e)
                assert row.divergence == pytest.approx(v / (mean @ mean + 1e-12 * e), rel=1e-3, abs=1e-6)
                assert row.cancelled == pytest.approx(v / e, rel=1e-4, abs=1e-6)
                return mean

            blocks = {b.block: b for b in s.scalars(select(RoundBlock).where(RoundBlock.round_id == rnd.id))}
            assert set(blocks) == set(bmap.names)
            means = {b: check(sorted(bmap[b].tensors), blocks[b]) for b in bmap.names}
            tensors = {
                t.tensor: t for t in s.scalars(select(RoundTensor).where(RoundTensor.round_id == rnd.id))
            }
            assert set(tensors) == set(bmap.block_of)
            for t, row in tensors.items():
                mean = check([t], row)
                assert row.update_norm == pytest.approx(np.linalg.norm(mean), rel=1e-5)
                assert row.block == bmap.block_of[t]
            rows = s.execute(
                select(UpdateAlignment, Worker.name)
                .join(Update, UpdateAlignment.update_id == Update.id)
                .join(Worker, Update.worker_id == Worker.id)
                .where(Update.round_id == rnd.id, UpdateAlignment.scope == "block")
            ).all()
            assert len(rows) == 3 * len(bmap.names)
            for a, worker in rows:
                x, mean = flat(worker, sorted(bmap[a.name].tensors)), means[a.name]
                assert a.norm == pytest.approx(np.linalg.norm(x), rel=1e-5)
                assert a.cosine == pytest.approx(
                    x @ mean / (np.linalg.norm(x) * np.linalg.norm(mean)), abs=1e-5
                )
            per_tensor = s.scalars(
                select(UpdateAlignment)
                .join(Update, UpdateAlignment.update_id == Update.id)
                .where(Update.round_id == rnd.id, UpdateAlignment.scope == "tensor")
            ).all()
            assert len(per_tensor) == 3 * len(bmap.block_of)

    with TestClient(create_app(db_url)) as api:
        d = api.get("/api/v1/federations/test/rounds/2/divergence").json()
        assert d["round"] == 2 and d["num_updates"] == 3 and d["tensors"] == []
        assert [b["block"] for b in d["blocks"]] == bmap.names
        assert all(b["divergence"] is not None and 0 <= b["cancelled"] <= 1 for b in d["blocks"])
        assert sorted(w["worker"] for w in d["workers"]) == ["org-1", "org-2", "org-3"]
        for w in d["workers"]:
            assert [a["name"] for a in w["blocks"]] == bmap.names and w["tensors"] == []
            assert all(-1 <= a["cosine"] <= 1 for a in w["blocks"])
        full = api.get("/api/v1/federations/test/rounds/2/divergence", params={"tensors": "true"}).json()
        assert {t["tensor"] for t in full["tensors"]} == set(bmap.block_of)
        assert all(len(w["tensors"]) == len(bmap.block_of) for w in full["workers"])
        m = api.get("/api/v1/federations/test/blocks").json()
        assert m["metric"] == "divergence" and m["rounds"] == [1, 2] and len(m["noise_floor"]) == 2
        assert m["values"][0][1] == pytest.approx(d["blocks"][0]["divergence"])
        assert api.get("/api/v1/federations/test/blocks", params={"first": 2}).json()["rounds"] == [2]
        assert api.get("/api/v1/federations/test/blocks", params={"last": 1}).json()["rounds"] == [1]
        bad = api.get("/api/v1/federations/test/blocks", params={"first": 2, "last": 1})
        assert bad.status_code == 422 and "empty range" in bad.text
        assert api.get("/api/v1/federations/test/rounds/7/divergence").status_code == 404
