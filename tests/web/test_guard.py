"""Must show: requests without the token, or with a foreign Host header, are refused; every
answer carries the strict Content-Security-Policy; writes need this page's own header."""

from __future__ import annotations

from pathlib import Path

import httpx
from playwright.async_api import expect

from samizdat.web.guard import CSP, cookie_name
from tests.web.conftest import Browsing, UiProc


async def test_token_host_and_csp(tmp_path: Path, uis: list[UiProc], browsing: Browsing) -> None:
    ui = UiProc(tmp_path / "home")
    uis.append(await ui.start())
    base = ui.origin
    cookie = {"Cookie": f"{cookie_name(ui.port)}={ui.token}"}
    write = {"X-Samizdat-Request": "1"}
    async with httpx.AsyncClient(trust_env=False, follow_redirects=False) as http:
        # No token: refused, for the page, the API and the event stream alike.
        for path in ("/", "/api/state", "/api/events", "/static/app.js"):
            answer = await http.get(base + path)
            assert answer.status_code == 403, path
            assert answer.headers["content-security-policy"] == CSP
        assert (await http.get(base + "/?token=wrong")).status_code == 403
        assert (
            await http.get(base + "/", headers={"X-Samizdat-Token": "wrong"})
        ).status_code == 403

        # The right token once: a cookie for this port, and the token leaves the URL.
        first = await http.get(ui.url)
        assert first.status_code == 303 and first.headers["location"] == "/"
        set_cookie = first.headers["set-cookie"]
        assert f"{cookie_name(ui.port)}={ui.token}" in set_cookie
        assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie

        page = await http.get(base + "/", headers=cookie)
        assert page.status_code == 200
        assert page.headers["content-security-policy"] == CSP
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["referrer-policy"] == "no-referrer"
        assert '<script src="/static/app.js"' in page.text and "<script>" not in page.text
        assert (await http.get(base + "/api/state", headers=cookie)).json() == {
            "ready": False,
            "locked": False,
            "exists": False,
            "flows": {},
        }
        # The header works in place of the cookie (scripts, tests).
        assert (
            await http.get(base + "/api/state", headers={"X-Samizdat-Token": ui.token})
        ).status_code == 200

        # DNS rebinding: the right cookie, but a page of another name.
        for host in (f"evil.example:{ui.port}", "127.0.0.1", f"127.0.0.1:{ui.port + 1}"):
            answer = await http.get(base + "/api/state", headers={**cookie, "Host": host})
            assert answer.status_code == 403, host
        assert (
            await http.get(base + "/api/state", headers={**cookie, "Host": f"localhost:{ui.port}"})
        ).status_code == 200

        # Writes: only with this page's header, and never from another origin.
        body = {"server": "x", "name": "y"}
        assert (
            await http.post(base + "/api/do/setup", json=body, headers=cookie)
        ).status_code == 403
        other = {**write, "Origin": "http://evil.example"}
        assert (
            await http.post(base + "/api/do/setup", json=body, headers={**cookie, **other})
        ).status_code == 403
        bad = await http.post(base + "/api/do/setup", json=body, headers={**cookie, **write})
        assert bad.status_code == 400 and "error" in bad.json()  # passed the guard

    # In the browser: the page works under its own CSP (no script error, no violation).
    tab = await browsing.open(ui)
    await expect(tab.locator("#view-title")).to_have_text("Set up samizdat")
    browsing.check()
