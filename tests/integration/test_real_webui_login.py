"""Who may call ``/supir/v1/*`` on a real webui started with a login (see test_real_webui.py for the setup).

One server per login flag, started in turn (a module-scoped parametrized fixture: the first is stopped
before the second starts). ``--gradio-auth``: the routes follow the page's login (its session cookie);
``--api-auth``: its users, with HTTP Basic, as the webui's own API routes.
"""

from __future__ import annotations

import base64
import http.cookiejar
import json
import urllib.error
import urllib.parse
import urllib.request

import pytest

from .test_real_webui import WEBUI, Webui, sd_checkpoint, start_webui

pytestmark = pytest.mark.skipif(WEBUI is None, reason="set SD_WEBUI_DIR (see test_real_webui.py)")

USER, PASSWORD = "supir-tester", "pa55-word"
ROUTES = [("GET", "/supir/v1/models"), ("GET", "/supir/v1/status"), ("GET", "/supir/v1/args")]
ROUTES += [("POST", "/supir/v1/upscale")]
FLAGS = {
    "gradio-auth": ["--gradio-auth", f"{USER}:{PASSWORD}"],
    "api-auth": ["--api-auth", f"{USER}:{PASSWORD}"],
}


@pytest.fixture(scope="module", params=sorted(FLAGS))
def protected(request, tmp_path_factory) -> tuple[str, Webui]:
    config = {"show_progress_type": "Approx cheap"}
    flags = FLAGS[request.param]
    for server in start_webui(tmp_path_factory, sd_checkpoint(), {}, config, extra_flags=flags):
        yield request.param, server


def send(
    webui: Webui, method: str, path: str, opener=None, headers: dict | None = None, form: dict | None = None
) -> tuple[int, bytes]:
    """(status, body) of one call; a body for POST routes that makes no sense past the login check."""
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers = {**(headers or {}), "Content-Type": "application/x-www-form-urlencoded"}
    else:
        data = json.dumps({"image": ""}).encode() if method == "POST" else None
        headers = {**(headers or {}), "Content-Type": "application/json"}
    request = urllib.request.Request(webui.url + path, data=data, headers=headers, method=method)
    try:
        with (opener or urllib.request.build_opener()).open(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def logged_in_opener(webui: Webui, password: str):
    """A client holding the page's session cookie after ``POST /login`` (gradio's login form)."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    send(webui, "POST", "/login", opener, form={"username": USER, "password": password})
    return opener


def test_routes_refuse_callers_without_login(protected):
    kind, webui = protected
    for method, path in ROUTES:
        status, body = send(webui, method, path)
        assert status == 401, (kind, path, status, body[:300])
    wrong = logged_in_opener(webui, "wrong") if kind == "gradio-auth" else None
    headers = basic(USER, "wrong") if kind == "api-auth" else None
    for method, path in ROUTES:
        assert send(webui, method, path, wrong, headers)[0] == 401, (kind, path)
    if kind == "gradio-auth":  # a page login does not open the routes to HTTP Basic callers
        assert send(webui, "GET", "/supir/v1/models", headers=basic(USER, PASSWORD))[0] == 401


def test_routes_answer_the_login(protected):
    kind, webui = protected
    opener = logged_in_opener(webui, PASSWORD) if kind == "gradio-auth" else None
    headers = basic(USER, PASSWORD) if kind == "api-auth" else None
    status, body = send(webui, "GET", "/supir/v1/models", opener, headers)
    assert status == 200, body[:300]
    assert json.loads(body)["missing"] == ["SUPIR-v0Q", "SUPIR-v0F"]  # no SUPIR file in this data folder
    status, body = send(webui, "GET", "/supir/v1/args", opener, headers)
    assert status == 200 and json.loads(body)[0]["name"] == "enabled"
    status, body = send(webui, "POST", "/supir/v1/upscale", opener, headers)
    assert status == 400 and b"not an image" in body  # past the login: the request itself is judged
