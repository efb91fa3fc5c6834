"""`gateway sign` (SPEC §8): sign one request with an HMAC key and print the headers, or a
ready `curl` command, for callers that have no RFC 9421 signer of their own."""

from __future__ import annotations

import shlex
from pathlib import Path

import click

from gateway.client import canonical_url, sign_request


def _body(data: str | None) -> bytes | None:
    if data is None:
        return None
    if data.startswith("@"):
        try:
            return Path(data[1:]).read_bytes()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {data[1:]}: {exc.strerror}",
                                     param_hint="--data") from None
    return data.encode()


def _headers(values: tuple[str, ...]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for value in values:
        name, sep, content = value.partition(":")
        if not sep or not name.strip():
            raise click.BadParameter(f"expected 'Name: value', got {value!r}",
                                     param_hint="--header")
        headers[name.strip()] = content.strip()
    return headers


@click.command("sign")
@click.option("--key-id", required=True, help="The HMAC key's id (its token, gwh_...).")
@click.option("--secret", required=True, envvar="GATEWAY_SIGN_SECRET",
              help="The HMAC key's secret (or set GATEWAY_SIGN_SECRET, which keeps it out of "
                   "the shell history).")
@click.argument("method")
@click.argument("url")
@click.option("--data", help="The body: text, or @FILE to read it from a file.")
@click.option("--header", "header_values", multiple=True,
              help="An extra request header 'Name: value' (repeat for more).")
@click.option("--curl", "as_curl", is_flag=True, help="Print a ready curl command.")
def sign(key_id: str, secret: str, method: str, url: str, data: str | None,
         header_values: tuple[str, ...], as_curl: bool) -> None:
    """Sign METHOD URL with an HMAC key (RFC 9421, hmac-sha256) and print the headers to send.

    The URL signed is the URL as `requests` sends it (`%7E` as `~`, no `..`, spaces encoded):
    send exactly that one; the curl command does. The signature is valid for a single use
    within the gateway's clock window (a fresh nonce each time). Example:

    \b
        gateway sign --key-id gwh_... --secret ... --data @body.json --curl \\
            POST http://localhost:8080/vision/detect
    """
    body = _body(data)
    headers = _headers(header_values)
    try:
        added = sign_request(method.upper(), url, key_id=key_id, secret=secret,
                             headers=headers, body=body)
    except (ValueError, UnicodeEncodeError) as exc:
        raise click.ClickException(str(exc)) from None
    if not as_curl:
        for name, value in added.items():
            click.echo(f"{name}: {value}")
        return
    # The URL as signed: curl sends it as it is.
    parts = ["curl", "-sS", "-X", method.upper(), canonical_url(url)]
    for name, value in {**headers, **added}.items():
        parts += ["-H", f"{name}: {value}"]
    if data is not None:
        parts += ["--data-binary", data]
    click.echo(" ".join(shlex.quote(p) for p in parts))
