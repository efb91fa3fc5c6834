"""The admin web page (`/ui/`, SPEC §8) in a real headless Chromium, against a real gateway and
Redis: an operator's whole key life cycle by clicking, the security headers, and hostile names
rendered as text. Screenshots of each step go to test-artifacts/ui/."""

from __future__ import annotations

import asyncio
import base64
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.client import sign_request
from gateway.config import build_config
from tests.conftest import api_key, make_config

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("no browser for the admin page tests: install Debian's Chromium "
                "(apt-get install chromium) to run them", allow_module_level=True)
async_api = pytest.importorskip(
    "playwright.async_api",
    reason="Playwright is missing: pip install 'playwright>=1.40' (or the [test] extras)")

TOKEN = "ui-admin-token-0123456789"
VISION = "yc.ai.vision.execute"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
WIDE = {"width": 1280, "height": 800}
NARROW = {"width": 390, "height": 844}
PAGE_SIZE = 50  # what the page asks the API for at a time (PAGE in app.js)


@pytest.fixture
async def gateway(redis_clean, upstream, start_gateway):  # type: ignore[no-untyped-def]
    config = make_config(
        redis_clean.url,
        [{"name": "vision", "prefix": "/vision/", "upstream":
          f"http://127.0.0.1:{upstream.port}", "scopes": [VISION]},
         {"name": "status", "prefix": "/status/", "public": True,
          "upstream": f"http://127.0.0.1:{upstream.port}"}],
        admin={"host": "127.0.0.1", "port": 0, "token": TOKEN})
    return await start_gateway(config)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with async_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM),
                                                   args=CHROMIUM_ARGS, headless=True)
        yield browser
        await browser.close()


class Page:
    """A page that records console errors, uncaught exceptions and alert() calls."""

    def __init__(self, page: Any, name: str) -> None:
        self.page, self.name, self.step = page, name, 0
        self.problems: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.problems.append(m.text))
        page.on("pageerror", lambda e: self.problems.append(f"uncaught: {e}"))
        page.on("dialog", self._dialog)

    async def _dialog(self, dialog: Any) -> None:
        self.problems.append(f"{dialog.type}: {dialog.message}")
        await dialog.dismiss()

    async def shot(self, label: str) -> None:
        self.step += 1
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await self.page.screenshot(path=str(ARTIFACTS / f"{self.name}-{self.step:02d}-{label}.png"),
                                   full_page=True)


async def new_page(browser: Any, name: str) -> tuple[Any, Page]:
    context = await browser.new_context(viewport=WIDE)
    page = await context.new_page()
    page.set_default_timeout(10_000)
    return context, Page(page, name)


async def sign_in(page: Any, admin_url: str) -> None:
    await page.goto(admin_url + "/ui/")
    await page.fill("#token", TOKEN)
    await page.click("#signin-submit")
    await page.wait_for_selector("#view-keys:not([hidden])")


async def admin_get(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url, headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        assert response.status == 200
        return await response.json()


async def test_an_operator_runs_the_whole_key_life_cycle_from_the_page(gateway, browser,
                                                                        http) -> None:
    context, ui = await new_page(browser, "lifecycle")
    page = ui.page

    # Sign in: a wrong token is refused and said so; the right one opens the keys.
    await page.goto(gateway.admin_url + "/ui/")
    await page.fill("#token", "not-the-token")
    await page.click("#signin-submit")
    error = page.locator("#signin-error")
    await error.wait_for(state="visible")
    assert "Wrong token" in await error.text_content()
    assert await page.evaluate("sessionStorage.length") == 0
    await ui.shot("signin-wrong-token")
    await page.fill("#token", TOKEN)
    await page.click("#signin-submit")
    await page.wait_for_selector("#view-keys:not([hidden])")
    await page.locator("#keys-empty").wait_for(state="visible")  # once the keys have loaded
    assert await context.cookies() == [] and TOKEN not in page.url
    await ui.shot("keys-empty")

    # Create accounts: one with API access, one without.
    await page.click("#tab-accounts")
    await page.fill("#account-name", "billing-service")
    await page.click("#account-create")
    await page.wait_for_selector("#accounts-body tr:has-text('billing-service')")
    await page.fill("#account-name", "legacy-batch")
    await page.uncheck("#account-api-access")
    await page.click("#account-create")
    row = page.locator("#accounts-body tr", has_text="legacy-batch")
    await row.wait_for()
    assert "None" in await row.text_content()
    await ui.shot("accounts")
    accounts = (await admin_get(http, gateway.admin_url + "/admin/accounts"))["items"]
    by_name = {a["name"]: a for a in accounts}
    assert by_name["billing-service"]["api_access"] is True
    assert by_name["legacy-batch"]["api_access"] is False

    # Create a key: the account without API access is offered but disabled.
    await page.click("#tab-keys")
    await page.click("#create-key")
    await page.wait_for_selector("#key-dialog[open]")
    legacy = page.locator("#key-account option", has_text="legacy-batch")
    assert await legacy.is_disabled() and "no API access" in await legacy.text_content()
    await page.select_option("#key-account", label="billing-service")
    await page.check(f"#scope-options input[value='{VISION}']")
    await page.fill("#key-description", "invoice exporter")
    await ui.shot("create-key")
    await page.click("#key-save")

    # The secret, once, with a ready curl example.
    await page.wait_for_selector("#secret-dialog[open]")
    secret = (await page.text_content("#secret-value")) or ""
    key_id = (await page.text_content("#secret-id")) or ""
    assert re.fullmatch(r"gwk_\w{36}", secret), secret
    assert "will not be shown again" in (await page.text_content("#secret-dialog") or "")
    example = await page.text_content("#secret-example") or ""
    assert f"Authorization: Api-Key {secret}" in example
    assert f":{gateway.running.proxy_port}/vision/" in example
    await ui.shot("secret-shown-once")
    async with http.get(gateway.url + "/vision/x", headers=api_key(secret)) as response:
        assert response.status == 200
    await page.click("#secret-done")
    assert await page.text_content("#secret-value") == ""
    key_row = page.locator(f"#keys-body tr[data-id='{key_id}']")
    await key_row.wait_for()
    assert "Active" in (await key_row.text_content() or "")
    assert secret not in (await page.content())

    # Keyboard: Enter on a focused row opens the editor too.
    await key_row.focus()
    await page.keyboard.press("Enter")
    await page.wait_for_selector("#key-dialog[open]")
    await page.keyboard.press("Escape")
    await page.wait_for_selector("#key-dialog:not([open])", state="attached")

    # Edit the expiry (double-click): only expiry and description can change.
    await key_row.dblclick()
    await page.wait_for_selector("#key-dialog[open]")
    assert not await page.locator("#key-account").is_visible()
    assert key_id in (await page.text_content("#key-readonly") or "")
    await page.select_option("#key-expiry-preset", "custom")
    await page.fill("#key-expiry", "2031-02-03T04:05")
    expected = await page.evaluate(
        "new Date('2031-02-03T04:05').toISOString().replace(/\\.\\d{3}Z$/, 'Z')")
    await ui.shot("edit-key")
    await page.click("#key-save")
    await page.wait_for_selector("#key-dialog:not([open])", state="attached")
    stored = await admin_get(http, f"{gateway.admin_url}/admin/keys/{key_id}")
    assert stored["expires_at"] == expected
    assert stored["description"] == "invoice exporter"
    await page.wait_for_selector(f"#keys-body tr[data-id='{key_id}'] td:has-text('2031-02-03')")
    await ui.shot("key-edited")

    # The same screen at 390 px: rows become cards, nothing overflows sideways.
    await page.set_viewport_size(NARROW)
    await ui.shot("keys-390px")
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= NARROW["width"], width
    await page.set_viewport_size(WIDE)

    # Delete it with the checkbox and one confirmation.
    await key_row.locator("input.row-check").check()
    await page.click("#delete-selected")
    await page.wait_for_selector("#delete-dialog[open]")
    assert key_id in (await page.text_content("#delete-list") or "")
    await ui.shot("delete-confirm")
    await page.click("#delete-confirm")
    await key_row.wait_for(state="detached")
    await ui.shot("key-deleted")
    async with http.get(gateway.url + "/vision/x", headers=api_key(secret)) as response:
        assert response.status == 401

    # Sign out forgets the token.
    await page.click("#sign-out")
    await page.wait_for_selector("#view-signin:not([hidden])")
    assert await page.evaluate("sessionStorage.length") == 0
    # The wrong token's 401 is the only thing the browser complained about.
    assert [p for p in ui.problems if "status of 401" not in p] == []
    await context.close()


async def test_the_page_is_served_under_a_strict_policy(gateway, http) -> None:
    bodies = {}
    for path, kind in (("/ui/", "text/html"), ("/ui/app.js", "text/javascript"),
                       ("/ui/api.js", "text/javascript"), ("/ui/format.js", "text/javascript"),
                       ("/ui/style.css", "text/css")):
        async with http.get(gateway.admin_url + path) as response:
            assert response.status == 200, path
            assert response.headers["Content-Security-Policy"] == CSP
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.headers["Referrer-Policy"] == "no-referrer"
            assert response.headers["Content-Type"].startswith(kind)
            assert "Set-Cookie" not in response.headers
            bodies[path] = await response.text()
    html = bodies["/ui/"]
    assert re.findall(r"<script[^>]*>", html) == ['<script type="module" src="app.js">']
    assert "style=" not in html and "<style" not in html
    assert re.search(r"<[^>]*\son[a-z]+\s*=", html, re.IGNORECASE) is None  # no inline handlers
    for path in ("/ui/app.js", "/ui/api.js", "/ui/format.js"):
        assert "innerHTML" not in bodies[path] and "insertAdjacentHTML" not in bodies[path]
    for path in ("/ui/nothing.js", "/ui/..%2Fapi.py", "/ui/%2e%2e/app.py"):
        async with http.get(gateway.admin_url + path) as response:
            assert response.status == 404, path
    async with http.get(gateway.admin_url + "/ui", allow_redirects=False) as response:
        assert response.status == 302 and response.headers["Location"] == "/ui/"


async def test_hostile_names_are_rendered_as_text(gateway, browser, http) -> None:
    hostile = "<img src=x onerror=alert(1)>"
    async with http.post(gateway.admin_url + "/admin/accounts", json={"name": hostile},
                         headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        assert response.status == 201
        account = await response.json()
    async with http.post(gateway.admin_url + "/admin/keys",
                         json={"account_id": account["id"], "description": hostile,
                               "scopes": [VISION]},
                         headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        assert response.status == 201
    context, ui = await new_page(browser, "hostile")
    page = ui.page
    await sign_in(page, gateway.admin_url)
    cell = page.locator("#keys-body td[data-label='Account']")
    assert await cell.text_content() == hostile
    await page.click("#tab-accounts")
    name = page.locator("#accounts-body td.name")
    assert await name.text_content() == hostile
    await page.click("#tab-keys")
    await page.locator("#keys-body tr").first.dblclick()
    assert hostile in (await page.text_content("#key-readonly") or "")
    assert await page.input_value("#key-description") == hostile
    await ui.shot("hostile-name")
    assert await page.locator("img").count() == 0
    assert ui.problems == []
    await context.close()


# -- HMAC keys, reissue, accounts, and the list's filters, sorting and paging -------------------

MASTER_ENV = {"GATEWAY_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}


@pytest.fixture
async def hmac_gateway(redis_clean, upstream, start_gateway):  # type: ignore[no-untyped-def]
    data = {"listen": {"host": "127.0.0.1", "port": 0},
            "admin": {"host": "127.0.0.1", "port": 0, "token": TOKEN},
            "redis": {"url": redis_clean.url, "timeout": "0.5s"},
            "routes": [{"name": "vision", "prefix": "/vision/",
                        "upstream": f"http://127.0.0.1:{upstream.port}", "scopes": [VISION]}]}
    return await start_gateway(build_config(data, "<test>", MASTER_ENV))


async def admin_post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    async with http.post(url, json=body,
                         headers={"Authorization": f"Bearer {TOKEN}"}) as response:
        assert response.status in (200, 201), await response.text()
        return await response.json()


async def status_of(http: aiohttp.ClientSession, url: str,
                    headers: dict[str, str]) -> tuple[int, str]:
    async with http.get(url, headers=headers) as response:
        return response.status, await response.text()


async def eventually(http: aiohttp.ClientSession, url: str, headers: Any, status: int,
                     code: str | None = None, seconds: float = 5.0) -> None:
    """The gateway answers `status` (and names `code`) within a few seconds; `headers` may be
    a callable for signed requests, which need fresh signatures."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        got, text = await status_of(http, url, headers() if callable(headers) else headers)
        if got == status and (code is None or code in text):
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"expected {status} {code}, got {got}: {text}")
        await asyncio.sleep(0.1)


async def create_account_via_page(page: Any, name: str) -> None:
    await page.click("#tab-accounts")
    await page.fill("#account-name", name)
    await page.click("#account-create")
    await page.wait_for_selector(f"#accounts-body tr:has-text('{name}')")


async def test_an_hmac_key_is_created_reissued_and_signs_requests(hmac_gateway, browser,
                                                                   http) -> None:
    gateway = hmac_gateway
    context, ui = await new_page(browser, "hmac")
    page = ui.page
    await sign_in(page, gateway.admin_url)
    await create_account_via_page(page, "signer-service")
    await page.click("#tab-keys")

    # HMAC keys need an expiry: "No expiry" is not offered, and an empty date is refused.
    await page.click("#create-key")
    await page.wait_for_selector("#key-dialog[open]")
    await page.select_option("#key-account", label="signer-service")
    await page.check("input[name=key-type][value=hmac]")
    assert await page.locator("#key-expiry-preset option[value='']").is_disabled()
    assert "HMAC keys need an expiry" in (await page.text_content("#key-expiry-hint") or "")
    await page.check(f"#scope-options input[value='{VISION}']")
    await page.select_option("#key-expiry-preset", "custom")
    await page.fill("#key-expiry", "")
    await page.click("#key-save")
    error = page.locator("#key-error")
    await error.wait_for(state="visible")
    assert "expiry" in (await error.text_content() or "")
    assert await page.locator("#key-dialog[open]").count() == 1
    await ui.shot("hmac-expiry-required")
    keys = await admin_get(http, gateway.admin_url + "/admin/keys")
    assert keys["items"] == []

    # With an expiry: the token, the secret and a `gateway sign` command, once.
    await page.select_option("#key-expiry-preset", "30d")
    await page.click("#key-save")
    await page.wait_for_selector("#secret-dialog[open]")
    token = (await page.text_content("#secret-id")) or ""
    secret = (await page.text_content("#secret-value")) or ""
    assert token and secret
    assert "Token" in (await page.text_content("#secret-id-label") or "")
    example = await page.text_content("#secret-example") or ""
    assert example.startswith("gateway sign ") and token in example and secret in example
    assert f":{gateway.running.proxy_port}/vision/" in example
    await ui.shot("hmac-secret-shown")
    stored = await admin_get(http, f"{gateway.admin_url}/admin/keys/{token}")
    assert stored["type"] == "hmac" and stored["expires_at"]
    url = gateway.url + "/vision/x"

    def signed(with_secret: str) -> Any:
        return lambda: sign_request("GET", url, key_id=token, secret=with_secret)

    assert (await status_of(http, url, signed(secret)()))[0] == 200
    await page.click("#secret-done")

    # Reissue from the edit dialog (opened with the row's Edit button), with a grace period.
    row = page.locator(f"#keys-body tr[data-id='{token}']")
    await row.wait_for()
    await row.locator("button.edit-key").click()
    await page.wait_for_selector("#key-dialog[open]")
    assert token in (await page.text_content("#key-readonly") or "")
    await page.select_option("#reissue-grace", "5m")
    await ui.shot("hmac-reissue")
    await page.click("#reissue")
    await page.wait_for_selector("#secret-dialog[open]")
    assert "reissued" in (await page.text_content("#secret-dialog-title") or "")
    assert await page.text_content("#secret-id") == token
    new_secret = (await page.text_content("#secret-value")) or ""
    assert new_secret and new_secret != secret
    await ui.shot("hmac-reissued-secret")
    await page.click("#secret-done")
    assert await page.text_content("#secret-value") == ""
    assert new_secret not in await page.content()
    assert (await status_of(http, url, signed(new_secret)()))[0] == 200
    assert (await status_of(http, url, signed(secret)()))[0] == 200  # within the grace
    stored = await admin_get(http, f"{gateway.admin_url}/admin/keys/{token}")
    assert stored["previous_secret_valid_until"]
    # The editor shows until when the old secret works.
    await row.dblclick()
    await page.wait_for_selector("#key-dialog[open]")
    assert "Old secret valid until" in (await page.text_content("#key-readonly") or "")
    await page.keyboard.press("Escape")

    # A reissue without grace ends the old secret at once.
    await row.locator("button.edit-key").click()
    await page.wait_for_selector("#key-dialog[open]")
    await page.select_option("#reissue-grace", "")
    await page.click("#reissue")
    await page.wait_for_selector("#secret-dialog[open]")
    newest = (await page.text_content("#secret-value")) or ""
    await page.click("#secret-done")
    assert (await status_of(http, url, signed(newest)()))[0] == 200
    assert (await status_of(http, url, signed(new_secret)()))[0] == 401
    assert ui.problems == []
    await context.close()


async def test_accounts_are_disabled_and_lose_api_access_from_the_page(gateway, browser,
                                                                       http) -> None:
    context, ui = await new_page(browser, "accounts")
    page = ui.page
    account = await admin_post(http, gateway.admin_url + "/admin/accounts", {"name": "ops-bot"})
    key = await admin_post(http, gateway.admin_url + "/admin/keys",
                           {"account_id": account["id"], "scopes": [VISION]})
    url, headers = gateway.url + "/vision/x", api_key(key["secret"])
    await eventually(http, url, headers, 200)
    await sign_in(page, gateway.admin_url)
    await page.click("#tab-accounts")
    row = page.locator(f"#accounts-body tr[data-id='{account['id']}']")
    await row.wait_for()
    assert (await row.locator("td[data-label='Keys']").text_content()) == "1"

    await row.get_by_role("button", name="Disable ops-bot").click()
    await row.locator("td[data-label='Status']:has-text('Disabled')").wait_for()
    await ui.shot("account-disabled")
    assert (await admin_get(http, f"{gateway.admin_url}/admin/accounts/{account['id']}")
            )["enabled"] is False
    await eventually(http, url, headers, 403, "account_disabled")
    # The keys list says why.
    await page.click("#tab-keys")
    key_row = page.locator(f"#keys-body tr[data-id='{key['id']}']")
    assert "Account disabled" in (await key_row.text_content() or "")
    await page.click("#tab-accounts")

    await row.get_by_role("button", name="Enable ops-bot").click()
    await row.locator("td[data-label='Status']:has-text('Enabled')").wait_for()
    await eventually(http, url, headers, 200)

    await row.get_by_role("button", name="Revoke API access of ops-bot").click()
    await row.locator("td[data-label='API access']:has-text('None')").wait_for()
    await ui.shot("api-access-revoked")
    assert (await admin_get(http, f"{gateway.admin_url}/admin/accounts/{account['id']}")
            )["api_access"] is False
    await eventually(http, url, headers, 403, "api_access_denied")

    await row.get_by_role("button", name="Grant API access to ops-bot").click()
    await row.locator("td[data-label='API access']:has-text('Granted')").wait_for()
    await eventually(http, url, headers, 200)
    await ui.shot("api-access-granted")
    assert ui.problems == []
    await context.close()


async def test_the_key_list_filters_sorts_and_pages(hmac_gateway, browser, http) -> None:
    gateway = hmac_gateway
    admin = gateway.admin_url
    alpha = await admin_post(http, admin + "/admin/accounts", {"name": "alpha"})
    beta = await admin_post(http, admin + "/admin/accounts", {"name": "beta"})
    made: dict[str, list[str]] = {}
    for account in (alpha, beta):
        for kind in ("api_key", "hmac"):
            body = {"account_id": account["id"], "type": kind, "scopes": [VISION]}
            if kind == "hmac":
                body["expires_in"] = "30d"
            key = await admin_post(http, admin + "/admin/keys", body)
            made.setdefault(account["name"], []).append(key["id"])
            made.setdefault(kind, []).append(key["id"])

    context, ui = await new_page(browser, "list")
    page = ui.page
    await sign_in(page, admin)
    rows = page.locator("#keys-body tr")

    async def shown_ids() -> list[str]:
        return [i for i in await rows.evaluate_all("rs => rs.map(r => r.dataset.id)")]

    await async_api.expect(rows).to_have_count(4)
    # The account filter asks the API again; the type filter narrows what is loaded.
    await page.select_option("#filter-account", label="alpha")
    await async_api.expect(rows).to_have_count(2)
    assert sorted(await shown_ids()) == sorted(made["alpha"])
    await page.select_option("#filter-type", "hmac")
    assert await shown_ids() == [i for i in made["alpha"] if i in made["hmac"]]
    assert "1 of 2" in (await page.text_content("#keys-summary") or "")
    await ui.shot("filter-alpha-hmac")
    await page.select_option("#filter-account", label="All accounts")
    await async_api.expect(rows).to_have_count(2)
    assert sorted(await shown_ids()) == sorted(made["hmac"])
    await page.select_option("#filter-type", "api_key")
    assert sorted(await shown_ids()) == sorted(made["api_key"])
    await page.select_option("#filter-type", "")
    assert len(await shown_ids()) == 4

    # Sorting: a header click sorts ascending, a second click descending.
    await page.click("button.sort[data-sort='id']")
    ids = await shown_ids()
    assert ids == sorted(ids)
    assert await page.get_attribute("th:has(button.sort[data-sort='id'])",
                                    "aria-sort") == "ascending"
    await page.click("button.sort[data-sort='id']")
    assert await shown_ids() == sorted(ids, reverse=True)
    await page.click("button.sort[data-sort='account']")
    names = await page.locator("#keys-body td[data-label='Account']").all_text_contents()
    assert names == ["alpha", "alpha", "beta", "beta"]
    await page.click("button.sort[data-sort='type']")
    types = await page.locator("#keys-body td[data-label='Type']").all_text_contents()
    assert types == sorted(types)
    await ui.shot("sorted-by-type")

    # Paging: the page asks for 50 keys at a time; the 51st onwards come with "Load more".
    for _ in range(PAGE_SIZE + 3 - 4):
        await admin_post(http, admin + "/admin/keys",
                         {"account_id": beta["id"], "scopes": [VISION]})
    await page.click("#refresh-keys")
    await async_api.expect(rows).to_have_count(PAGE_SIZE)
    more = page.locator("#load-more")
    assert await more.is_visible()
    assert "more available" in (await page.text_content("#keys-summary") or "")
    first_page = await shown_ids()
    await ui.shot("first-page")
    await more.click()
    await async_api.expect(rows).to_have_count(PAGE_SIZE + 3)
    everything = await shown_ids()
    assert set(first_page) < set(everything) and len(set(everything)) == PAGE_SIZE + 3
    listed = await admin_get(http, admin + f"/admin/keys?limit={PAGE_SIZE + 10}")
    assert set(everything) == {k["id"] for k in listed["items"]}
    await more.wait_for(state="hidden")
    await ui.shot("all-loaded")
    assert ui.problems == []
    await context.close()
