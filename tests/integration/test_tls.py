"""gRPC over TLS and mutual TLS: a federation runs over an encrypted channel, and what does not present
the right certificates never reaches a handler."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from strata.cli import main
from strata.proto.v1 import coordinator_pb2 as pb
from strata.proto.v1 import coordinator_pb2_grpc as pb_grpc
from tests.helpers import (
    TOKENS,
    ServedCoordinator,
    coordinator_settings,
    make_worker_data,
    make_workers,
    run_to_done,
)
from tests.tls import Material, make_material


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Material:
    return make_material(tmp_path_factory.mktemp("certs"))


def join(address: str, creds: grpc.ChannelCredentials | None) -> pb.JoinReply:
    channel = grpc.secure_channel(address, creds) if creds else grpc.insecure_channel(address)
    with channel:
        stub = pb_grpc.CoordinatorStub(channel)
        return stub.Join(
            pb.JoinRequest(name="probe", num_samples=1),
            metadata=(("authorization", f"Bearer {TOKENS[0]}"),),
            timeout=10,
        )


def test_a_federation_over_tls(tmp_path: Path, tiny_model: Path, certs: Material) -> None:
    settings = coordinator_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'tls.db'}",
        tiny_model,
        rounds=1,
        tls_cert=certs.server.cert,
        tls_key=certs.server.key,
        health_listen="127.0.0.1:0",
    )
    coord = ServedCoordinator(settings)
    try:
        with pytest.raises(grpc.RpcError) as err:  # plaintext to a TLS port: no handshake, no call
            join(coord.address, None)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        # the plaintext health port answers the container's probe, and serves nothing else
        health = f"127.0.0.1:{coord.server.health_port}"
        assert main(["probe", "grpc", health]) == 0
        with pytest.raises(grpc.RpcError) as err:
            join(health, None)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        workers = make_workers(
            coord.address, make_worker_data(tmp_path / "data", 3), tmp_path, extra={"tls_ca": certs.ca.cert}
        )
        try:
            run_to_done(workers)
        finally:
            for w in workers:
                w.close()
        coord.wait()
        assert all(w.rounds_done == 1 for w in workers)
    finally:
        coord.stop()


def test_mutual_tls_requires_a_client_certificate_from_the_ca(
    tmp_path: Path, tiny_model: Path, certs: Material
) -> None:
    settings = coordinator_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'mtls.db'}",
        tiny_model,
        rounds=1,
        min_workers=1,
        tls_cert=certs.server.cert,
        tls_key=certs.server.key,
        tls_client_ca=certs.ca.cert,
    )
    coord = ServedCoordinator(settings)
    ca = certs.ca.cert.read_bytes()
    try:
        for who in (None, certs.stranger):  # no certificate, or one from another CA: refused in the handshake
            creds = grpc.ssl_channel_credentials(
                ca,
                who.key.read_bytes() if who else None,
                who.cert.read_bytes() if who else None,
            )
            with pytest.raises(grpc.RpcError) as err:
                join(coord.address, creds)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        good = grpc.ssl_channel_credentials(ca, certs.client.key.read_bytes(), certs.client.cert.read_bytes())
        assert join(coord.address, good).worker_id
    finally:
        coord.stop()


def test_tls_settings_are_checked(tmp_path: Path, tiny_model: Path, certs: Material) -> None:
    with pytest.raises(ValueError, match="give both"):
        coordinator_settings(tmp_path, "sqlite://", tiny_model, tls_cert=certs.server.cert)
    with pytest.raises(ValueError, match="needs the server's own"):
        coordinator_settings(tmp_path, "sqlite://", tiny_model, tls_client_ca=certs.ca.cert)
    with pytest.raises(ValueError, match="is not a file"):
        coordinator_settings(
            tmp_path, "sqlite://", tiny_model, tls_cert=tmp_path / "nope.pem", tls_key=certs.server.key
        )
