"""The gateway's TLS settings (gochat_streams/gateway/tls.py)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from gochat_streams.gateway.tls import tls_context
from gochat_streams.settings import Settings

from ..tls import server_certificate


def test_no_certificate_is_plain_http() -> None:
    assert tls_context(Settings()) is None


def test_a_certificate_and_its_key_make_a_tls_1_2_plus_server_context(tmp_path: Path) -> None:
    cert = server_certificate(tmp_path)
    context = tls_context(Settings(gateway_tls_certfile=cert.chain, gateway_tls_keyfile=cert.key))
    assert context is not None and context.minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize("which", ["certfile", "keyfile"])
def test_one_without_the_other_is_refused(tmp_path: Path, which: str) -> None:
    with pytest.raises(ValueError, match="set both GOCHAT_GATEWAY_TLS_CERTFILE and GOCHAT_GATEWAY_TLS_KEYFILE"):
        tls_context(Settings(**{f"gateway_tls_{which}": tmp_path / "x.pem"}))


def test_a_key_every_account_may_read_is_refused(tmp_path: Path) -> None:
    cert = server_certificate(tmp_path)
    cert.key.chmod(0o644)
    with pytest.raises(ValueError, match="open to every account on this host: chmod o-rwx"):
        tls_context(Settings(gateway_tls_certfile=cert.chain, gateway_tls_keyfile=cert.key))
    cert.key.chmod(0o640)
    accepted = tls_context(Settings(gateway_tls_certfile=cert.chain, gateway_tls_keyfile=cert.key))
    assert isinstance(accepted, ssl.SSLContext) and accepted.minimum_version == ssl.TLSVersion.TLSv1_2


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path: Path) -> None:
    cert, other = server_certificate(tmp_path / "a"), server_certificate(tmp_path / "b")
    with pytest.raises(ValueError, match="not a PEM certificate"):
        tls_context(Settings(gateway_tls_certfile=cert.chain, gateway_tls_keyfile=other.key))
    with pytest.raises(FileNotFoundError):
        tls_context(Settings(gateway_tls_certfile=tmp_path / "missing.pem", gateway_tls_keyfile=cert.key))
    with pytest.raises(FileNotFoundError):
        tls_context(Settings(gateway_tls_certfile=cert.chain, gateway_tls_keyfile=tmp_path / "missing.key"))
