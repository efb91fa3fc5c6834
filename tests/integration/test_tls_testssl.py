"""testssl.sh against the TLS listener (issue 19): no SSLv2, SSLv3, TLS 1.0 or 1.1 offered, and
no weak cipher (NULL, anonymous, export, low, 3DES/IDEA, CBC, or without forward secrecy).
Debian package `testssl.sh`, command `testssl`."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import make_config
from tests.support.redis_server import RedisServer
from tests.support.tls import CertificateAuthority

TESTSSL = shutil.which("testssl") or shutil.which("testssl.sh")
NOT_OFFERED = ("SSLv2", "SSLv3", "TLS1", "TLS1_1")
WEAK_CIPHERS = ("cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT", "cipherlist_LOW",
                "cipherlist_3DES_IDEA", "cipherlist_AVERAGE", "cipherlist_OBSOLETED",
                "cipherlist_STRONG_NOFS")


@pytest.mark.skipif(TESTSSL is None, reason="testssl.sh is not installed "
                    "(apt-get install testssl.sh)")
async def test_testssl_finds_no_old_protocol_and_no_weak_cipher(
        tmp_path: Path, redis_clean: RedisServer, upstream: TestServer,
        start_gateway: Any) -> None:
    assert TESTSSL is not None
    ca = CertificateAuthority(tmp_path / "ca")
    ca.issue_server(tmp_path / "server.pem", tmp_path / "server.key")
    gateway = await start_gateway(make_config(redis_clean.url, [
        {"name": "echo", "prefix": "/", "upstream": f"http://127.0.0.1:{upstream.port}",
         "public": True}],
        listen={"host": "127.0.0.1", "port": 0, "tls": {
            "cert": str(tmp_path / "server.pem"), "key": str(tmp_path / "server.key")}}))
    report = tmp_path / "testssl.json"
    process = await asyncio.create_subprocess_exec(
        TESTSSL, "--protocols", "--std", "--cipher-per-proto", "--quiet", "--color", "0",
        "--warnings", "off", "--jsonfile", str(report),
        f"127.0.0.1:{gateway.running.proxy_port}",
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), 280)
    findings = {item["id"]: item for item in json.loads(report.read_text())}
    for protocol in NOT_OFFERED:
        assert findings[protocol]["finding"].startswith("not offered"), findings[protocol]
    for protocol in ("TLS1_2", "TLS1_3"):
        assert findings[protocol]["finding"].startswith("offered"), findings[protocol]
    # Cipher categories: testssl 3.0 names them NULL ... AVERAGE and STRONG; 3.2 has
    # OBSOLETED, STRONG_NOFS and STRONG_FS instead of the last two.
    weak = [c for c in WEAK_CIPHERS if c in findings]
    assert len(weak) >= 6, sorted(findings)
    for category in weak:
        assert findings[category]["finding"] == "not offered", findings[category]
    # Every cipher offered, protocol by protocol: TLS 1.2 ECDHE with AEAD only, and TLS 1.3.
    offered = [item["finding"] for name, item in findings.items()
               if name.startswith("cipher-tls")]
    assert offered, output.decode(errors="replace")[-3000:]
    for line in offered:
        assert line.startswith(("TLS 1.2", "TLS 1.3")), line
        assert " ECDH " in line, line  # forward secrecy (ECDHE)
        assert "AESGCM" in line or "ChaCha20" in line, line  # AEAD
    # Nothing testssl rates worse than OK in what it was asked (the test certificate aside).
    bad = [item for item in findings.values()
           if item.get("severity") in ("MEDIUM", "HIGH", "CRITICAL")
           and not item["id"].startswith(("cert", "DNS_CAA"))]
    assert bad == [], output.decode(errors="replace")[-3000:]
