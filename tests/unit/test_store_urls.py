"""Store URLs (SPEC §7): every topology's form read into what the client needs, and every
malformed one refused with a reason that names the problem (what `gateway config check`
prints), never a traceback at the first command."""

from __future__ import annotations

import pytest

from gateway.config import build_config
from gateway.errors import ConfigError
from gateway.store.urls import parse_store_url


@pytest.mark.parametrize(("url", "topology", "tls", "hosts", "master", "db"), [
    ("redis://r.example:6380/2", "single", False, (), "", 2),
    ("rediss://r.example", "single", True, (), "", 0),
    ("unix:///run/redis.sock?db=4", "single", False, (), "", 4),
    ("redis+sentinel://s1:26379,s2:26380,s3/gw/3", "sentinel", False,
     (("s1", 26379), ("s2", 26380), ("s3", 26379)), "gw", 3),
    ("rediss+sentinel://u:p@s1:1/gw", "sentinel", True, (("s1", 1),), "gw", 0),
    ("redis+cluster://n1:7000,n2:7001", "cluster", False, (("n1", 7000), ("n2", 7001)), "", 0),
    ("rediss+cluster://n1", "cluster", True, (("n1", 6379),), "", 0),
    ("REDIS+CLUSTER://n1:7000,n1:7000", "cluster", False, (("n1", 7000),), "", 0),
])
def test_each_topology_is_read(url: str, topology: str, tls: bool,
                               hosts: tuple[tuple[str, int], ...], master: str, db: int) -> None:
    address = parse_store_url(url)
    assert (address.topology, address.tls, address.hosts, address.master, address.db) == \
        (topology, tls, hosts, master, db)


def test_credentials_and_options_are_kept_apart_from_the_description() -> None:
    address = parse_store_url("rediss+sentinel://gw:s%40cret@s1:26379/main"
                              "?sentinel_password=sp&ssl_cert_reqs=required"
                              "&ssl_ca_certs=/etc/ca.pem&ssl_check_hostname=false")
    assert (address.username, address.password) == ("gw", "s@cret")
    assert address.option("sentinel_password") == "sp"
    assert address.tls_kwargs() == {"ssl": True, "ssl_cert_reqs": "required",
                                    "ssl_ca_certs": "/etc/ca.pem", "ssl_check_hostname": False}
    assert address.describe() == "rediss+sentinel://s1:26379/main"
    assert "s@cret" not in repr(address)


@pytest.mark.parametrize(("url", "reason"), [
    ("redis://h?sentinel=x", "unknown option 'sentinel'"),
    ("redis://h?cluster=true", "unknown option 'cluster'"),
    ("redis+cluster://h?db=1", "unknown option 'db'"),
    ("redis://h?ssl_ca_certs=/ca.pem", "needs a TLS URL"),
    ("rediss://h?ssl_cert_reqs=maybe", "ssl_cert_reqs must be one of"),
    ("rediss://h?ssl_check_hostname=perhaps", "ssl_check_hostname must be true or false"),
    ("redis://h?db=1&db=2", "given twice"),
    ("redis://h?db=x", "database 'x' is not a number"),
    ("redis://h/\u0663", "is not a number"),
    ("redis://a:1,b:2", "use redis+sentinel:// or redis+cluster://"),
    ("redis://h:70000", "invalid port"),
    ("redis://", "names no host"),
    ("unix://", "needs the socket's path"),
    ("redis+sentinel://s1:26379", "names no master"),
    ("redis+sentinel://s1:26379/", "names no master"),
    ("redis+sentinel://s1/m/1/2", "expected /MASTER or /MASTER/DB"),
    ("redis+sentinel:///m", "names no sentinel"),
    ("redis+cluster://n1:7000/0", "takes no path"),
    ("redis+cluster://n1,,n2", "empty entry"),
    ("redis+cluster://n1:x", "invalid port"),
    ("http://h", "expected 'embedded' or a redis://"),
    ("redis+sentinel://s1/m#x", "fragment"),
])
def test_malformed_urls_are_refused_naming_the_problem(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace("+", r"\+")):
        parse_store_url(url)


def test_config_check_names_the_field_and_the_reason() -> None:
    with pytest.raises(ConfigError) as caught:
        build_config({"redis": {"url": "redis://h?cluster=true", "pool_size": 0,
                                "idle_timeout": "0s"}}, "gw.yaml", {})
    text = str(caught.value)
    assert "gw.yaml: redis.url: unknown option 'cluster'" in text
    assert "redis.pool_size: must be between 1 and 10000" in text
    assert "redis.idle_timeout" in text


def test_pool_settings_are_read() -> None:
    config = build_config({"redis": {"url": "redis+cluster://n1:7000", "pool_size": 8,
                                     "idle_timeout": "30s"}}, "gw.yaml", {})
    assert (config.redis.pool_size, config.redis.idle_timeout) == (8, 30.0)
