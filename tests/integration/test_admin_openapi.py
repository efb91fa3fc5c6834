"""`/admin/openapi.json` describes the admin API accurately: the document is valid, covers every
route the app serves, and a property-based tester (schemathesis) drives a real gateway process
from it, checking every response against the document."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis import checks

from gateway.admin.app import create_admin_app
from gateway.admin.openapi import openapi_document
from gateway.config import build_config
from tests.support.processes import GatewayProcess, write_config
from tests.support.redis_server import RedisServer

TOKEN = "admin-token-for-schemathesis"
schema = schemathesis.openapi.from_dict(openapi_document())
# The import body is JSON lines, documented as a string: sent as its UTF-8 text.
schemathesis.serializer.alias("application/x-ndjson", "text/plain")


@pytest.fixture(scope="module")
def admin_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    redis = RedisServer().start()
    path: Path = tmp_path_factory.mktemp("openapi") / "gateway.yaml"
    config_path, port, admin_port = write_config(path, redis.url, [])
    gateway = GatewayProcess(config_path, port, admin_port,
                             env={"GATEWAY_ADMIN_TOKEN": TOKEN}).start()
    # Some real records, so that generated requests meet existing accounts and keys too.
    import urllib.request

    def post(url: str, body: dict[str, object]) -> dict[str, object]:
        request = urllib.request.Request(
            gateway.admin_url + url, data=orjson.dumps(body), method="POST",
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            return orjson.loads(response.read())  # type: ignore[no-any-return]

    account = post("/admin/accounts", {"name": "seed"})
    post("/admin/keys", {"account_id": account["id"], "scopes": ["yc.ai.*"]})
    yield gateway
    gateway.stop()
    redis.close()


def test_the_document_is_served_and_matches_the_module(admin_gateway) -> None:
    import urllib.request

    with urllib.request.urlopen(admin_gateway.admin_url + "/admin/openapi.json",
                                timeout=10) as response:
        assert orjson.loads(response.read()) == openapi_document()


def test_every_served_admin_route_is_documented_and_vice_versa() -> None:
    config = build_config({}, "<test>")
    app: web.Application = create_admin_app(None, lambda: config)  # type: ignore[arg-type]
    served = {(route.method, route.resource.canonical)  # type: ignore[union-attr]
              for route in app.router.routes()
              if route.resource is not None
              and route.resource.canonical.startswith("/admin/")
              and route.method != "HEAD"
              and route.resource.canonical != "/admin/openapi.json"}
    documented = {(method.upper(), path) for path, item in openapi_document()["paths"].items()
                  for method in item}
    assert served == documented


@schema.parametrize()
@settings(max_examples=int(os.environ.get("GATEWAY_SCHEMATHESIS_EXAMPLES", "25")),
          deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_the_api_conforms_to_its_document(case, admin_gateway) -> None:  # type: ignore[no-untyped-def]
    # Framing headers belong to the HTTP client, not to the API: a generated
    # `Transfer-Encoding: <junk>` is refused by aiohttp's parser (400 text/plain) before the
    # admin API sees the request, which no operation of the document can describe.
    for name in [name for name in (case.headers or {})
                 if name.lower() in ("transfer-encoding", "content-length")]:
        del case.headers[name]
    case.call_and_validate(
        base_url=admin_gateway.admin_url,
        headers={"Authorization": f"Bearer {TOKEN}"},
        checks=[checks.not_a_server_error, checks.status_code_conformance,
                checks.content_type_conformance, checks.response_schema_conformance],
    )
