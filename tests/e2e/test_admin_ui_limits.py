"""Rate limits and quotas on the admin web page (issue 20) in a real headless Chromium, against a
real gateway and Redis: a key created with a rate and a quota from the page, refused by the
proxy once over them; its edit dialog's remaining count and hourly chart; limits changed (and a
bad one refused) from the page; an account's quota set and removed from the page. Screenshots
go to test-artifacts/ui/ (limits-*)."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.conftest import api_key
from tests.e2e import test_admin_ui as base
from tests.e2e.test_admin_ui import NARROW, VISION, WIDE, admin_get, admin_post, new_page, sign_in

# The page's other tests' fixtures (a gateway with an admin token and a /vision/ route; Chromium).
gateway = base.gateway
browser = base.browser

USAGE_WAIT = 20.0  # seconds: the gateway flushes usage counters to Redis every few seconds


async def over_the_limits(http: aiohttp.ClientSession, url: str, secret: str) -> dict[str, int]:
    """Requests in small bursts until the quota is used up: a count of each answer."""
    seen: dict[str, int] = {}
    deadline = asyncio.get_running_loop().time() + 15
    while "quota_exhausted" not in seen or "rate_limited" not in seen:
        assert asyncio.get_running_loop().time() < deadline, seen
        for _ in range(3):
            async with http.get(url, headers=api_key(secret)) as response:
                text = await response.text()
                if response.status == 200:
                    name = "ok"
                else:
                    assert response.status == 429, (response.status, text)
                    name = next((code for code in ("rate_limited", "quota_exhausted")
                                 if code in text), text)
                seen[name] = seen.get(name, 0) + 1
        await asyncio.sleep(0.6)
    return seen


async def usage_shows(http: aiohttp.ClientSession, admin: str, key_id: str,
                      seen: dict[str, int]) -> dict[str, int]:
    """Poll the usage API (bounded) until every request sent is counted, as it was answered."""
    deadline = asyncio.get_running_loop().time() + USAGE_WAIT
    while True:
        usage = await admin_get(http, f"{admin}/admin/keys/{key_id}/usage?days=1&step=hour")
        totals: dict[str, int] = {}
        for entry in usage["usage"]:
            totals["ok"] = totals.get("ok", 0) + entry["ok"]
            for reason, n in entry["refused"].items():
                totals[reason] = totals.get(reason, 0) + n
        if totals == seen:
            return totals
        assert asyncio.get_running_loop().time() < deadline, totals
        await asyncio.sleep(0.5)


async def test_limits_are_set_shown_and_changed_from_the_page(gateway, browser, http) -> None:
    admin = gateway.admin_url
    account = await admin_post(http, admin + "/admin/accounts", {"name": "metered-service"})
    context, ui = await new_page(browser, "limits")
    page = ui.page
    await sign_in(page, admin)

    # Create a key with a rate of 2/s and a quota of 5 a day.
    await page.click("#create-key")
    await page.wait_for_selector("#key-dialog[open]")
    assert await page.get_attribute("#key-rate", "placeholder") == "100/s"
    assert await page.get_attribute("#key-quota", "placeholder") == "10000/month"
    await page.select_option("#key-account", label="metered-service")
    await page.check(f"#scope-options input[value='{VISION}']")
    await page.fill("#key-rate", "2/s")
    await page.fill("#key-quota", "5/day")
    await ui.shot("create-with-limits")
    await page.click("#key-save")
    await page.wait_for_selector("#secret-dialog[open]")
    key_id = (await page.text_content("#secret-id")) or ""
    secret = (await page.text_content("#secret-value")) or ""
    await page.click("#secret-done")
    stored = await admin_get(http, f"{admin}/admin/keys/{key_id}")
    assert (stored["rate"], stored["burst"], stored["quota"]) == ("2/s", None, "5/day")
    row = page.locator(f"#keys-body tr[data-id='{key_id}']")
    await row.wait_for()
    assert "2/s · 5/day" in (await row.locator(".key-limits").text_content() or "")
    await page.set_viewport_size(NARROW)
    await ui.shot("key-list-limits-390px")
    assert await page.evaluate("document.documentElement.scrollWidth") <= NARROW["width"]
    await page.set_viewport_size(WIDE)

    # A key without limits shows none, and its chart is empty.
    plain = await admin_post(http, admin + "/admin/keys",
                             {"account_id": account["id"], "scopes": [VISION]})
    await page.click("#refresh-keys")
    plain_row = page.locator(f"#keys-body tr[data-id='{plain['id']}']")
    await plain_row.wait_for()
    assert await plain_row.locator(".key-limits").count() == 0
    await plain_row.locator("button.edit-key").click()
    await page.wait_for_selector("#key-dialog[open]")
    await page.locator("#key-usage .chart-empty").wait_for()
    assert "No requests in the last 7 days" in (await page.text_content("#key-usage") or "")
    assert "No quota" in (await page.text_content("#key-quotas") or "")
    assert await page.input_value("#key-rate") == ""
    await ui.shot("edit-no-usage")
    await page.keyboard.press("Escape")

    # Over the limits through the proxy: some admitted, some 429 rate_limited, then
    # quota_exhausted.
    seen = await over_the_limits(http, gateway.url + "/vision/x", secret)
    assert seen["ok"] == 5, seen
    totals = await usage_shows(http, admin, key_id, seen)
    quotas = (await admin_get(http, f"{admin}/admin/keys/{key_id}"))["quotas"]
    assert [(q["policy"], q["remaining"]) for q in quotas] == [("key-quota", 0)], quotas

    # The edit dialog: limits prefilled, the quota's remaining count, the chart.
    await row.locator("button.edit-key").click()
    await page.wait_for_selector("#key-dialog[open]")
    assert await page.input_value("#key-rate") == "2/s"
    assert await page.input_value("#key-burst") == ""
    assert await page.input_value("#key-quota") == "5/day"
    quota = page.locator("#key-quotas li[data-policy='key-quota']")
    await quota.wait_for()
    text = await quota.text_content() or ""
    assert "0 of 5 left today" in text and "resets" in text, text
    chart = page.locator("#key-usage svg.chart")
    await chart.wait_for()
    for kind in ("ok", "rate_limited", "quota_exhausted"):
        assert await chart.locator(f"rect[data-kind='{kind}']").count() >= 1, kind
    counted = await chart.locator("rect").evaluate_all(
        "rs => rs.reduce((t, r) => { t[r.dataset.kind] = (t[r.dataset.kind] || 0) + "
        "Number(r.dataset.count); return t; }, {})")
    assert counted["ok"] == 5 and counted["rate_limited"] == totals["rate_limited"], counted
    assert counted["quota_exhausted"] == totals["quota_exhausted"], counted
    summary = await page.text_content("#usage-summary") or ""
    assert "5 admitted" in summary and "rate limited" in summary, summary
    assert "quota exhausted" in summary, summary
    assert await chart.get_attribute("aria-labelledby") == "usage-summary"
    legend = await page.text_content("#key-usage .chart-legend") or ""
    assert "Admitted 5" in legend and "Rate limited" in legend and "Quota exhausted" in legend
    assert await page.locator("#key-usage .chart-days span").count() == 7
    await page.locator("#key-usage .chart-summary").scroll_into_view_if_needed()
    await ui.shot("edit-with-usage")
    # At 390 px the dialog and its chart fit the screen.
    await page.set_viewport_size(NARROW)
    await page.locator("#key-usage .chart-summary").scroll_into_view_if_needed()
    await ui.shot("edit-with-usage-390px")
    box = await chart.bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= NARROW["width"], box
    assert await page.evaluate("document.documentElement.scrollWidth") <= NARROW["width"]
    await page.set_viewport_size(WIDE)

    # A bad rate: the API's 422 message in the dialog, which stays open; nothing changes.
    await page.fill("#key-rate", "fast")
    await page.click("#key-save")
    error = page.locator("#key-error")
    await error.wait_for(state="visible")
    message = await error.text_content() or ""
    assert message.startswith("rate:") and "100/s" in message, message
    assert await page.get_attribute("#key-rate", "aria-invalid") == "true"
    assert await page.locator("#key-dialog[open]").count() == 1
    await ui.shot("bad-rate")
    assert (await admin_get(http, f"{admin}/admin/keys/{key_id}"))["rate"] == "2/s"

    # Change the rate and give a burst; the quota stays.
    await page.fill("#key-rate", "10/min")
    await page.fill("#key-burst", "3")
    await page.click("#key-save")
    await page.wait_for_selector("#key-dialog:not([open])", state="attached")
    stored = await admin_get(http, f"{admin}/admin/keys/{key_id}")
    assert (stored["rate"], stored["burst"], stored["quota"]) == ("10/min", 3, "5/day")
    await row.locator(".key-limits:has-text('10/min')").wait_for()
    assert "10/min · burst 3 · 5/day" in (await row.locator(".key-limits").text_content() or "")

    # An emptied field removes that limit.
    await row.locator("button.edit-key").click()
    await page.wait_for_selector("#key-dialog[open]")
    assert await page.input_value("#key-burst") == "3"
    await page.fill("#key-burst", "")
    await page.fill("#key-quota", "")
    await page.click("#key-save")
    await page.wait_for_selector("#key-dialog:not([open])", state="attached")
    stored = await admin_get(http, f"{admin}/admin/keys/{key_id}")
    assert (stored["rate"], stored["burst"], stored["quota"]) == ("10/min", None, None)
    await ui.shot("limits-changed")

    # An account's quota, set from the Accounts view, then removed.
    await page.click("#tab-accounts")
    arow = page.locator(f"#accounts-body tr[data-id='{account['id']}']")
    await arow.wait_for()
    assert await arow.locator("td[data-label='Limits']").text_content() == "none"
    await arow.get_by_role("button", name="Edit limits of metered-service").click()
    await page.wait_for_selector("#limits-dialog[open]")
    await page.fill("#account-quota", "monthly")
    await page.click("#limits-save")
    await page.locator("#limits-error").wait_for(state="visible")
    assert (await page.text_content("#limits-error") or "").startswith("quota:")
    await page.fill("#account-quota", "1000/month")
    await page.fill("#account-rate", "50/s")
    await ui.shot("account-limits")
    await page.click("#limits-save")
    await page.wait_for_selector("#limits-dialog:not([open])", state="attached")
    stored = await admin_get(http, f"{admin}/admin/accounts/{account['id']}")
    assert (stored["rate"], stored["burst"], stored["quota"]) == ("50/s", None, "1000/month")
    await arow.locator("td[data-label='Limits']:has-text('1000/month')").wait_for()
    assert "50/s · 1000/month" in (await arow.text_content() or "")
    await ui.shot("account-limits-set")
    await page.set_viewport_size(NARROW)
    await ui.shot("account-limits-390px")
    assert await page.evaluate("document.documentElement.scrollWidth") <= NARROW["width"]
    await page.set_viewport_size(WIDE)

    # The key's dialog now lists the account's quota too.
    await page.click("#tab-keys")
    await row.locator("button.edit-key").click()
    account_quota = page.locator("#key-quotas li[data-policy='account-quota']")
    await account_quota.wait_for()
    assert "of 1,000 left this month" in (await account_quota.text_content() or "")
    await page.keyboard.press("Escape")

    await page.click("#tab-accounts")
    await arow.get_by_role("button", name="Edit limits of metered-service").click()
    await page.wait_for_selector("#limits-dialog[open]")
    assert await page.input_value("#account-quota") == "1000/month"
    await page.fill("#account-quota", "")
    await page.fill("#account-rate", "")
    await page.click("#limits-save")
    await page.wait_for_selector("#limits-dialog:not([open])", state="attached")
    stored = await admin_get(http, f"{admin}/admin/accounts/{account['id']}")
    assert (stored["rate"], stored["burst"], stored["quota"]) == (None, None, None)
    await arow.locator("td[data-label='Limits']:has-text('none')").wait_for()

    # The 422s are the only things the browser complained about (as failed requests).
    assert [p for p in ui.problems if "status of 422" not in p] == [], ui.problems
    await context.close()


async def test_the_usage_chart_places_hours_and_names_every_reason(gateway, browser) -> None:
    """chart.js alone, on made-up usage: one bar per hour with requests, stacked by kind, placed
    in its day; hours older than the 7 days left out; a reason it does not know drawn as
    "other"; the same counts in the legend and the summary."""
    context, ui = await new_page(browser, "chart")
    page = ui.page
    await sign_in(page, gateway.admin_url)
    result = await page.evaluate("""async () => {
      const { renderUsage } = await import("./chart.js");
      const now = new Date(2026, 4, 20, 15, 30).getTime();  // local time, like the chart
      const at = (daysBack, hour) => new Date(2026, 4, 20 - daysBack, hour).toISOString();
      const usage = [
        { hour: at(9, 10), ok: 50, refused: {} },  // older than 7 days: left out
        { hour: at(6, 0), ok: 3, refused: {} },
        { hour: at(2, 12), ok: 1, refused: { rate_limited: 4, quota_exhausted: 2 } },
        { hour: at(0, 15), ok: 0, refused: { key_store_unavailable: 1, teapot: 2 } },
      ];
      const box = document.createElement("div");
      document.body.append(box);
      renderUsage(box, usage, now);
      const svg = box.querySelector("svg.chart");
      const bars = [...svg.querySelectorAll("g.chart-bar")].map((g) => ({
        x: Number(g.querySelector("rect").getAttribute("x")),
        kinds: [...g.querySelectorAll("rect")].map((r) => `${r.dataset.kind}=${r.dataset.count}`),
      }));
      const out = {
        viewBox: svg.getAttribute("viewBox"), bars,
        days: box.querySelectorAll(".chart-days span").length,
        legend: box.querySelector(".chart-legend").textContent,
        summary: box.querySelector(".chart-summary").textContent,
      };
      renderUsage(box, [{ hour: at(8, 1), ok: 5, refused: {} }], now);
      out.empty = box.textContent;
      box.remove();
      return out;
    }""")
    assert result["viewBox"] == "0 0 168 100"
    assert [b["kinds"] for b in result["bars"]] == [
        ["ok=3"], ["ok=1", "rate_limited=4", "quota_exhausted=2"],
        ["key_store_unavailable=1", "other=2"]]
    assert [round(b["x"], 1) for b in result["bars"]] == [0.1, 4 * 24 + 12 + 0.1,
                                                         6 * 24 + 15 + 0.1]
    assert result["days"] == 7
    legend = result["legend"]
    for part in ("Admitted 4", "Rate limited 4", "Quota exhausted 2", "Key store unavailable 1",
                 "Other refusals 2"):
        assert part in legend, legend
    assert result["summary"].startswith("13 requests in the last 7 days: 4 admitted, 9 refused "
                                        "(4 rate limited, 2 quota exhausted, 1 key store "
                                        "unavailable, 2 other refusals)"), result["summary"]
    assert result["empty"] == "No requests in the last 7 days"
    assert ui.problems == []
    await context.close()
