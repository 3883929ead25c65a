"""Mutual TLS: a client certificate's common name identifies the tenant."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from sandbox_client import ExecutionResult, FailureKind, SandboxClient
from tests.conftest import ServerThread, running_server

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _cert(d: Path, name: str, cn: str, *, san: bool = False) -> None:
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={cn}",
        cwd=d,
    )
    ext = d / f"{name}.ext"
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n" if san else "")
    _openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        f"{name}.pem",
        "-extfile",
        str(ext),
        cwd=d,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        cwd=d,
    )
    _cert(d, "server", "localhost", san=True)
    _cert(d, "agent", "agent-a")
    _cert(d, "stranger", "nobody-listed")
    (d / "tenants.toml").write_text('[tenants.a]\nmtls_common_names = ["agent-a"]\n')
    return d


@pytest.fixture(scope="module")
def tls_server(pki: Path) -> Iterator[ServerThread]:
    with running_server(
        tenants={"file": pki / "tenants.toml"},
        tls={
            "cert_file": pki / "server.pem",
            "key_file": pki / "server.key",
            "client_ca_file": pki / "ca.pem",
        },
    ) as srv:
        yield srv


def _creds(pki: Path, who: str | None) -> grpc.ChannelCredentials:
    root = (pki / "ca.pem").read_bytes()
    if who is None:
        return grpc.ssl_channel_credentials(root)
    return grpc.ssl_channel_credentials(
        root, (pki / f"{who}.key").read_bytes(), (pki / f"{who}.pem").read_bytes()
    )


def _execute_as(
    tls_server: ServerThread, pki: Path, who: str | None, timeout_s: float = 30
) -> ExecutionResult:
    """`1+1` over TLS with `who`'s client certificate (None: with none)."""
    with SandboxClient(
        tls_server.address,
        timeout_s=timeout_s,
        credentials=_creds(pki, who),
        channel_options=[("grpc.ssl_target_name_override", "localhost")],
    ) as c:
        return c.execute("1+1")


def test_client_certificate_identifies_the_tenant(tls_server: ServerThread, pki: Path) -> None:
    result = _execute_as(tls_server, pki, "agent")
    assert result.ok, result.failure


def test_unlisted_certificate_is_unauthenticated(tls_server: ServerThread, pki: Path) -> None:
    result = _execute_as(tls_server, pki, "stranger")
    assert result.failure is not None and result.failure.kind is FailureKind.INVALID_REQUEST
    assert "requires an API key" in result.failure.message


def test_no_client_certificate_cannot_connect(tls_server: ServerThread, pki: Path) -> None:
    result = _execute_as(tls_server, pki, None, timeout_s=10)
    assert result.failure is not None and result.failure.kind is FailureKind.INFRA_UNAVAILABLE
