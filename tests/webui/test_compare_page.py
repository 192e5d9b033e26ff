"""supir.js's Before/after button on the txt2img gallery as gradio 3.41 (A1111, reForge) and gradio 4.40
(Forge, Forge Neo) lay it out, in headless Chromium.

The pages reproduce the DOM each gradio version's Gallery renders in preview mode (its class names and
nesting, read from the gradio 3.41.2 bundle and gradio 4.40.0's Gallery.svelte), plus the webui globals the
script uses (gradioApp, onAfterUiUpdate, the hidden generation_info textbox).
"""

from __future__ import annotations

import importlib.util
import io
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "javascript" / "supir.js"
CHROMIUM = Path("/usr/bin/chromium")
ORIGIN = "http://webui.test"
TIMESTAMP = "20260101120000"


def _missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "the playwright Python package is not installed (pip install playwright)"
    if not CHROMIUM.exists():
        return "Chromium is not installed at /usr/bin/chromium"
    return None


def _png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), "gray").save(buffer, "PNG")
    return buffer.getvalue()


# Elements as [tag, attributes, children]: the page builds them with the DOM API, as svelte does, since
# the HTML parser would not nest gradio 4's buttons.
def _thumbnails(count: int, selected: int) -> list:
    items = [
        [
            "button",
            {"class": "thumbnail-item thumbnail-small" + (" selected" if i == selected else "")},
            [["img", {"src": "/result.png", "alt": ""}, []]],
        ]
        for i in range(count)
    ]
    return ["div", {"class": "thumbnails scroll-hide", "data-testid": "container_el"}, items]


def _detailed_image() -> list:
    return ["img", {"data-testid": "detailed-image", "src": "/result.png", "alt": ""}, []]


def gallery_341(count: int, selected: int) -> list:
    """gradio 3.41: div.preview > (div.icon-buttons, img[detailed-image], div.thumbnails > button...)."""
    icons = ["div", {"class": "icon-buttons"}, []]
    return ["div", {"class": "preview"}, [icons, _detailed_image(), _thumbnails(count, selected)]]


def gallery_440(count: int, selected: int) -> list:
    """gradio 4.40: button.preview > (div.icon-buttons, button.image-button > img, div.thumbnails)."""
    icons = ["div", {"class": "icon-buttons"}, []]
    image = [
        "button",
        {"class": "image-button", "aria-label": "detailed view of selected image"},
        [_detailed_image()],
    ]
    return ["button", {"class": "preview"}, [icons, image, _thumbnails(count, selected)]]


def page_html(gallery: list, infotexts: list[str]) -> str:
    info = json.dumps({"infotexts": infotexts, "index_of_first_image": 0, "job_timestamp": TIMESTAMP})
    return f"""<!doctype html><html><head><style>
#txt2img_gallery {{ position: relative; width: 400px; height: 320px; }}
.preview {{ display: block; width: 100%; height: 100%; }}
.preview img {{ max-width: 100%; max-height: 240px; object-fit: contain; }}
.supir-compare {{ position: absolute; }}
</style><script>
const uiUpdateCallbacks = [];
function onAfterUiUpdate(fn) {{ uiUpdateCallbacks.push(fn); }}
function gradioApp() {{ return document; }}
function build([tag, attributes, children]) {{
    const element = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, value);
    children.forEach(child => element.appendChild(build(child)));
    return element;
}}
</script><script src="/supir.js"></script></head><body>
<div id="generation_info_txt2img" style="display: none"><textarea></textarea></div>
<div id="txt2img_gallery"></div>
<script>
document.getElementById("txt2img_gallery").appendChild(build({json.dumps(gallery)}));
document.querySelector("#generation_info_txt2img textarea").value = {json.dumps(info)};
uiUpdateCallbacks.forEach(fn => fn());
</script></body></html>"""


@pytest.fixture(scope="module")
def browser():
    if _missing():
        pytest.skip(_missing())
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        yield browser
        browser.close()


def open_page(browser, html: str):
    png, script, requested = _png(), SCRIPT.read_text(), []
    page = browser.new_page(viewport={"width": 800, "height": 600})

    def serve(route):
        url = route.request.url
        requested.append(url)
        if url.endswith("/supir.js"):
            route.fulfill(body=script, content_type="text/javascript")
        elif url.endswith(".png") or "/supir/v1/before/" in url:
            route.fulfill(body=png, content_type="image/png")
        else:
            route.fulfill(body=html, content_type="text/html")

    page.route(f"{ORIGIN}/**", serve)
    page.goto(f"{ORIGIN}/", wait_until="load")
    return page, requested


def shown(page, selector: str) -> bool:
    return page.evaluate(
        "s => { const e = document.querySelector(s); return !!e && getComputedStyle(e).display !== 'none'; }",
        selector,
    )


SUPIR_INFO = "a photo\nSteps: 20, Seed: 1, Size: 128x96, SUPIR scale: 2"
PLAIN_INFO = "a photo\nSteps: 20, Seed: 2, Size: 64x48"


@pytest.mark.parametrize("gallery", [gallery_341, gallery_440], ids=["gradio-3.41", "gradio-4.40"])
def test_before_after_button_appears_and_toggles_the_comparison(browser, gallery):
    page, requested = open_page(browser, page_html(gallery(2, 1), [PLAIN_INFO, SUPIR_INFO]))
    try:
        # the layout is gradio's: for 4.40 the image sits in a button nested in the preview button
        nesting = "img => [img.parentElement.className, img.parentElement.parentElement.className]"
        layout = page.eval_on_selector("#txt2img_gallery [data-testid=detailed-image]", nesting)
        assert layout == (["image-button", "preview"] if gallery is gallery_440 else ["preview", ""])
        assert shown(page, "#txt2img_gallery > .supir-compare-toggle")
        assert not shown(page, "#txt2img_gallery > .supir-compare")
        page.click("#txt2img_gallery > .supir-compare-toggle")
        page.wait_for_function(
            "() => document.querySelector('.supir-compare-before')?.complete"
            " && document.querySelector('.supir-compare-before').naturalWidth > 0"
        )
        assert shown(page, "#txt2img_gallery > .supir-compare")
        # the second image is selected: its original is asked for, at position 1 of this generation
        assert f"{ORIGIN}/supir/v1/before/{TIMESTAMP}/1" in requested
        assert (
            page.evaluate("() => document.querySelector('.supir-compare').getBoundingClientRect().width") > 0
        )
        page.click("#txt2img_gallery > .supir-compare-toggle")
        assert not shown(page, "#txt2img_gallery > .supir-compare")
    finally:
        page.close()


@pytest.mark.parametrize("gallery", [gallery_341, gallery_440], ids=["gradio-3.41", "gradio-4.40"])
def test_no_button_on_an_image_supir_did_not_make(browser, gallery):
    page, _ = open_page(browser, page_html(gallery(2, 0), [PLAIN_INFO, SUPIR_INFO]))
    try:
        assert page.locator("#txt2img_gallery > .supir-compare-toggle").count() == 1  # made, hidden
        assert not shown(page, "#txt2img_gallery > .supir-compare-toggle")
    finally:
        page.close()
