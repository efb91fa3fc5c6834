"""Where `gateway run --demo` serves its echo upstreams: where the config's routes point, on
this host (issue 18, item 5), not on ports of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import build_config, load_config
from gateway.demo import demo_upstreams

ROOT = Path(__file__).resolve().parents[2]


def _route(name: str, upstream: str) -> dict[str, Any]:
    return {"name": name, "prefix": f"/{name}/", "upstream": upstream}


@pytest.mark.parametrize(
    ("routes", "expected"),
    [
        ([], {}),
        ([_route("a", "http://127.0.0.1:9203")], {("127.0.0.1", 9203): "a"}),
        ([_route("a", "http://localhost:7000/base"), _route("b", "http://[::1]:7001")],
         {("localhost", 7000): "a", ("::1", 7001): "b"}),
        # Two routes to one address: one upstream, named after the first.
        ([_route("a", "http://127.0.0.1:9203"), _route("b", "http://127.0.0.1:9203/v2")],
         {("127.0.0.1", 9203): "a"}),
        # Not served: another host, TLS, no port given.
        ([_route("a", "http://10.0.0.5:9101"), _route("b", "https://127.0.0.1:9102"),
          _route("c", "http://127.0.0.1"), _route("d", "http://vision.internal:9103")], {}),
    ],
)
def test_demo_upstreams_follow_the_routes(routes: list[dict[str, Any]],
                                          expected: dict[tuple[str, int], str]) -> None:
    assert demo_upstreams(build_config({"routes": routes}, "<test>")) == expected


@pytest.mark.parametrize("name", ["gateway.example.yaml", "gateway.docker.yaml"])
def test_the_shipped_configs_get_their_four_demo_upstreams(name: str) -> None:
    path = ROOT / "config" / name
    config = load_config(path, {})
    routes = yaml.safe_load(path.read_text())["routes"]
    assert demo_upstreams(config) == {("127.0.0.1", 9101 + i): route["name"]
                                      for i, route in enumerate(routes)}
