"""`listen.tls` and a route's upstream TLS settings in the config (issue 19), and the contexts
gateway/proxy/tls.py builds from them."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.config import TlsConfig, build_config, load_config
from gateway.errors import ConfigError
from gateway.proxy.tls import (
    ServerTls,
    TlsLoadError,
    UpstreamTls,
    server_context,
    upstream_context,
    verified_subject,
)
from tests.support.tls import CertificateAuthority


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    ca = CertificateAuthority(tmp_path / "ca")
    ca.issue_server(tmp_path / "server.pem", tmp_path / "server.key")
    return {"ca": ca.cert, "cert": tmp_path / "server.pem", "key": tmp_path / "server.key"}


def problems(data: dict[str, Any], base: Path | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        build_config(data, "gw.yaml", base=base)
    return str(caught.value)


def listen_tls(**tls: Any) -> dict[str, Any]:
    return {"listen": {"tls": tls}}


def test_defaults_and_all_fields(files: dict[str, Path]) -> None:
    config = build_config(listen_tls(cert=str(files["cert"]), key=str(files["key"])), "gw.yaml")
    assert config.listen.tls == TlsConfig(files["cert"], files["key"], "1.2", None, "required")
    config = build_config(listen_tls(cert=str(files["cert"]), key=str(files["key"]),
                                     min_version="1.3", client_ca=str(files["ca"]),
                                     client_cert="optional"), "gw.yaml")
    assert config.listen.tls == TlsConfig(files["cert"], files["key"], "1.3", files["ca"],
                                          "optional")
    assert build_config({}, "gw.yaml").listen.tls is None


def test_config_errors_name_the_field(files: dict[str, Path], tmp_path: Path) -> None:
    cert, key = str(files["cert"]), str(files["key"])
    assert "gw.yaml: listen.tls.cert: is required" in problems(listen_tls(key=key))
    assert "listen.tls.key: is required" in problems(listen_tls(cert=cert))
    for old in ("1.0", "1.1", 1.2, "TLSv1.2"):
        text = problems(listen_tls(cert=cert, key=key, min_version=old))
        assert "listen.tls.min_version: expected one of: '1.2', '1.3'" in text
    assert "listen.tls.client_cert: expected one of" in problems(
        listen_tls(cert=cert, key=key, client_ca=str(files["ca"]), client_cert="yes"))
    assert "listen.tls.client_cert: needs listen.tls.client_ca" in problems(
        listen_tls(cert=cert, key=key, client_cert="optional"))
    assert "listen.tls.ciphers: unknown field" in problems(
        listen_tls(cert=cert, key=key, ciphers="ALL"))
    assert "listen.tls: expected a mapping" in problems({"listen": {"tls": "on"}})
    missing = problems(listen_tls(cert=str(tmp_path / "nope.pem"), key=key))
    assert "listen.tls.cert: cannot load the certificate" in missing and "nope.pem" in missing
    # A key that is not the certificate's: said at load, not at the first handshake.
    CertificateAuthority(tmp_path / "other").issue_server(tmp_path / "o.pem", tmp_path / "o.key")
    assert "KEY_VALUES_MISMATCH" in problems(listen_tls(cert=cert, key=str(tmp_path / "o.key")))
    assert "listen.tls.client_ca: cannot load the client CA" in problems(
        listen_tls(cert=cert, key=key, client_ca=str(files["key"])))


def test_relative_files_are_read_from_the_config_files_directory(
        files: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "gw.yaml").write_text(yaml.safe_dump(
        listen_tls(cert="../server.pem", key="../server.key", client_ca="../ca/"
                   + files["ca"].name)))
    config = load_config("conf/gw.yaml", {}, cwd=tmp_path)
    assert config.listen.tls is not None
    assert config.listen.tls.cert == tmp_path / "conf" / "../server.pem"
    assert config.listen.tls.client_ca == tmp_path / "conf" / "../ca" / files["ca"].name


def test_turning_tls_on_or_off_needs_a_restart_but_files_do_not(
        files: dict[str, Path], tmp_path: Path) -> None:
    plain = build_config({}, "gw.yaml")
    tls = build_config(listen_tls(cert=str(files["cert"]), key=str(files["key"])), "gw.yaml")
    assert plain.restart_needed_for(tls) == ["listen.tls"]
    assert tls.restart_needed_for(plain) == ["listen.tls"]
    other = CertificateAuthority(tmp_path / "o")
    other.issue_server(tmp_path / "o.pem", tmp_path / "o.key")
    renewed = build_config(listen_tls(cert=str(tmp_path / "o.pem"), key=str(tmp_path / "o.key"),
                                      min_version="1.3"), "gw.yaml")
    assert tls.restart_needed_for(renewed) == []


def test_upstream_tls_settings(files: dict[str, Path], tmp_path: Path) -> None:
    def route(**extra: Any) -> dict[str, Any]:
        return {"routes": [{"name": "r", "prefix": "/r/", "upstream": "https://up.example",
                            **extra}]}

    config = build_config(route(ca_file=str(files["ca"])), "gw.yaml")
    assert config.routes[0].ca_file == files["ca"] and config.routes[0].tls_verify
    assert build_config(route(), "gw.yaml").routes[0].ca_file is None
    assert not build_config(route(tls_verify=False), "gw.yaml").routes[0].tls_verify
    plain = {"upstream": "http://up.example"}
    assert "routes[0].ca_file: applies to an https:// upstream only" in problems(
        route(**plain, ca_file=str(files["ca"])))
    assert "routes[0].tls_verify: applies to an https:// upstream only" in problems(
        route(**plain, tls_verify=False))
    assert "routes[0].tls_verify: expected true or false" in problems(route(tls_verify="no"))
    assert "routes[0].ca_file: means nothing with tls_verify: false" in problems(
        route(ca_file=str(files["ca"]), tls_verify=False))
    assert "routes[0].ca_file: cannot load the CA file" in problems(
        route(ca_file=str(tmp_path / "absent.pem")))


def test_server_context_is_strict(files: dict[str, Path]) -> None:
    context = server_context(TlsConfig(files["cert"], files["key"]))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert context.verify_mode == ssl.CERT_NONE
    for cipher in context.get_ciphers():
        if cipher["protocol"] == "TLSv1.2":
            assert cipher["kea"] == "kx-ecdhe" and cipher["aead"], cipher["name"]
    assert server_context(TlsConfig(files["cert"], files["key"], "1.3")).minimum_version \
        == ssl.TLSVersion.TLSv1_3
    mtls = server_context(TlsConfig(files["cert"], files["key"], client_ca=files["ca"]))
    assert mtls.verify_mode == ssl.CERT_REQUIRED
    with pytest.raises(TlsLoadError) as caught:
        server_context(TlsConfig(files["key"], files["key"]))
    assert caught.value.setting == "cert"


def test_server_tls_reload_keeps_the_running_context_on_failure(
        files: dict[str, Path], tmp_path: Path) -> None:
    tls = ServerTls(TlsConfig(files["cert"], files["key"]))
    before = tls.current
    with pytest.raises(TlsLoadError):
        tls.reload(TlsConfig(tmp_path / "absent.pem", files["key"]))
    assert tls.current is before
    tls.reload(TlsConfig(files["cert"], files["key"], "1.3"))
    assert tls.current is not before
    assert tls.front.minimum_version == ssl.TLSVersion.TLSv1_3


def test_upstream_context() -> None:
    context = upstream_context(UpstreamTls())
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    loose = upstream_context(UpstreamTls(verify=False))
    assert loose.verify_mode == ssl.CERT_NONE and not loose.check_hostname


class _FakeSsl:
    def __init__(self, der: bytes | None) -> None:
        self.der = der

    def getpeercert(self, binary_form: bool = False) -> bytes | None:
        return self.der


def test_verified_subject_is_rfc4514_and_header_safe(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "ca")
    cert = ca.issue_client(tmp_path / "c.pem", tmp_path / "c.key", "svc, \"x\"\r\nX-Evil: 1",
                           "Ex+ample")
    subject = verified_subject(_FakeSsl(cert.public_bytes(Encoding.DER)))  # type: ignore[arg-type]
    assert subject == 'O=Ex\\+ample,CN=svc\\, \\"x\\"\\0D\\0AX-Evil: 1'
    assert verified_subject(_FakeSsl(None)) is None  # type: ignore[arg-type]
    assert verified_subject(None) is None
