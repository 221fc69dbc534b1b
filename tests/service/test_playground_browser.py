"""The playground page in a real browser (Debian's chromium driven by Playwright) against a real uvicorn.

Without chromium or Playwright these tests skip, unless `FLOWS_REQUIRE_BROWSER=1` (set by CI) makes that
a failure. Screenshots of each state go to `test-artifacts/playground/` (git-ignored).
"""

from __future__ import annotations

import base64
import io
import os
import re
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from .conftest import ROOT, SHIPPED, RealServer

CHROMIUM = os.environ.get("FLOWS_CHROMIUM", "/usr/bin/chromium")
REQUIRE = os.environ.get("FLOWS_REQUIRE_BROWSER") == "1"
ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SHOTS = ROOT / "test-artifacts" / "playground"
KEY = "playground-test-key"
QUEUE = 32  # the server's --max-queue-images: asking for more samples is answered 503 at once
# Interpolations run on the model whose encode and decode are both fast on a CPU (convolutions only).
FAST = "glow-mnist" if "glow-mnist" in SHIPPED else (SHIPPED or [""])[0]
TIMINGS = re.compile(r"queue \d+\.\d ms · inference \d+\.\d ms · total \d+\.\d ms")
VERDICT = re.compile(r"(?P<verdict>outlier|in distribution) \((?P<score>-?\d+)\)")

pytestmark = pytest.mark.skipif(not SHIPPED, reason="no shipped checkpoints")


def _missing(reason: str) -> None:
    if REQUIRE:
        pytest.fail(f"{reason} (FLOWS_REQUIRE_BROWSER=1: CI must run the browser tests)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def server() -> Iterator[RealServer]:
    # One torch thread: on a busy 2-core machine, the solves' many small ops are ~100× slower with two
    # threads contending (measured: inverse-flow scoring of one image 12 s vs 0.1 s).
    args = ["--no-warmup", "--torch-threads", "1", "--api-key", KEY]
    args += ["--max-batch-images", "16", "--max-queue-images", str(QUEUE)]
    with RealServer(*args) as server:
        yield server


@pytest.fixture(scope="module")
def api(server: RealServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"X-API-Key": KEY}, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[dev]')")
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"no chromium at {CHROMIUM} (apt-get install -y chromium)")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        browser.close()


def open_page(browser, server: RealServer, width: int = 1000, height: int = 900, key: str | None = KEY):
    """A fresh tab (its own sessionStorage) on the playground; with `key`, the key is already entered.
    Every request the page makes is recorded, to check that it never leaves this server."""
    context = browser.new_context(viewport={"width": width, "height": height})
    if key:
        context.add_init_script(f"sessionStorage.setItem('flowserve-api-key', {key!r})")
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.requests = []
    page.on("request", lambda r: page.requests.append(r.url))
    page.goto(server.url + "/")
    if key:
        page.wait_for_selector("#model option", state="attached")
    return page


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def png_array(b64_or_src: str) -> np.ndarray:
    data = base64.b64decode(b64_or_src.split(",", 1)[-1])
    return np.asarray(Image.open(io.BytesIO(data)))


def wait_for_images(page, selector: str, count: int) -> None:
    """Wait until `count` images match `selector` and every one of them has loaded."""
    page.wait_for_function("([s, n]) => document.querySelectorAll(s).length === n", arg=[selector, count])
    page.wait_for_function("s => [...document.querySelectorAll(s)].every(i => i.naturalWidth)", arg=selector)


def image_sources(page, selector: str) -> list[str]:
    return page.eval_on_selector_all(
        selector, "els => els.map(e => e.complete && e.naturalWidth ? e.src : '')"
    )


def draw_stroke(page) -> None:
    box = page.locator("#pad").bounding_box()
    x, y, w, h = box["x"], box["y"], box["width"], box["height"]
    page.mouse.move(x + 0.5 * w, y + 0.2 * h)
    page.mouse.down()
    for i in range(1, 13):  # a "7": across the top, then down to the left
        if i <= 4:
            page.mouse.move(x + (0.3 + 0.1 * i) * w, y + 0.2 * h)
        else:
            page.mouse.move(x + (0.7 - 0.04 * (i - 4)) * w, y + (0.2 + 0.08 * (i - 4)) * h)
    page.mouse.up()


def preview_pixels(page) -> list[list[int]]:
    """The 28×28 preview the page scores, read back from its canvas (grey = red channel here)."""
    return page.evaluate(
        """() => { const c = document.getElementById('preview');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; const rows = [];
        for (let y = 0; y < c.height; y++) { const row = [];
          for (let x = 0; x < c.width; x++) row.push(d[4 * (y * c.width + x)]); rows.push(row); }
        return rows; }"""
    )


def test_the_page_asks_for_the_api_key_once_and_loads_only_from_this_server(browser, server):
    for path in ("/encode", "/decode", "/interpolate"):  # the latent endpoints are keyed like /sample
        assert httpx.post(server.url + path, json={}).status_code == 401
    assert httpx.get(server.url + "/").status_code == 200  # the page itself is open: it asks for the key
    page = open_page(browser, server, key=None)
    page.wait_for_selector("#key-form:not([hidden])")
    assert page.locator("#app").is_hidden()
    shot(page, "01-api-key")
    page.fill("#api-key", "wrong")
    page.press("#api-key", "Enter")
    page.wait_for_selector("#message:has-text('Not authorised (401)')")
    assert page.locator("#key-form").is_visible()
    page.fill("#api-key", KEY)
    page.click("#key-form button")
    page.wait_for_selector("#app:not([hidden])")
    assert page.locator("#message").is_hidden()
    assert sorted(page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")) == SHIPPED
    page.reload()
    page.wait_for_selector("#app:not([hidden])")
    assert page.locator("#key-form").is_hidden()  # asked once: the tab keeps the key
    assert page.requests and all(
        u.startswith(server.url + "/") or u.startswith("data:") for u in page.requests
    )
    page.context.close()


def test_sample_every_model_shows_the_requested_grid_and_timings(browser, server, api):
    page = open_page(browser, server)
    for i, model in enumerate(SHIPPED):
        n, seed = 2 + 2 * i, 100 + i
        page.select_option("#model", model)
        info = page.inner_text("#model-info")
        assert "bits/dim" in info and ("torch:" in info or "onnxruntime:" in info)
        page.fill("#num-samples", str(n))
        page.fill("#seed", str(seed))
        page.locator("#temperature").fill("0.8")
        page.click("#sample-button")
        wait_for_images(page, "#grid img", n)
        assert TIMINGS.search(page.inner_text("#sample-timings")), page.inner_text("#sample-timings")
        shown = [png_array(s) for s in image_sources(page, "#grid img")]
        assert len(shown) == n and all(a.shape == (28, 28) for a in shown)
        direct = api.post(
            "/sample", json={"model": model, "num_samples": n, "seed": seed, "temperature": 0.8}
        ).json()
        assert all(np.array_equal(a, png_array(b)) for a, b in zip(shown, direct["images"], strict=True))
        shot(page, f"02-sample-{model}")
    old = page.input_value("#seed")
    page.click("#new-seed")
    assert page.input_value("#seed") != old
    page.context.close()


def assert_ood_cells(row, api, model: str, pixels: list) -> dict | None:
    """The row's percentile and out-of-distribution verdict are the API's (`ood: true`), or say that the
    model has no statistics; returns the API's result."""
    if not api.get(f"/models/{model}").json()["ood"]["available"]:
        assert row.locator("td.ood").inner_text() == "no statistics"
        return None
    scored = api.post("/logprob", json={"model": model, "images": [pixels], "ood": True}).json()["results"][0]
    assert row.locator("td.percentile").inner_text() == f"{scored['log_prob_percentile']:.1f}%"
    verdict = VERDICT.fullmatch(row.locator("td.ood").inner_text())
    assert verdict, row.locator("td.ood").inner_text()
    assert (verdict["verdict"] == "outlier") == scored["is_outlier"]
    assert float(verdict["score"]) == pytest.approx(scored["ood_score"], abs=0.5)
    assert ("outlier" in row.locator("td.ood").get_attribute("class")) == scored["is_outlier"]
    return scored


def test_a_drawn_digit_is_scored_by_every_model_like_a_direct_logprob(browser, server, api):
    page = open_page(browser, server)
    page.click("#tab-score")
    draw_stroke(page)
    page.fill("#k-samples", "4")
    page.click("#score-button")
    page.wait_for_function(f"() => document.querySelectorAll('#scores td.bpd-k').length === {len(SHIPPED)}")
    shot(page, "03-score")
    pixels = preview_pixels(page)
    assert sum(map(sum, pixels)) > 0  # the stroke reached the 28×28 preview
    for model in SHIPPED:
        row = page.locator(f"#scores tr[data-model='{model}']")
        shown_bpd = float(row.locator("td.bpd").inner_text())
        shown_logp = float(row.locator("td.logp").inner_text())
        shown_k = float(row.locator("td.bpd-k").inner_text())
        one = api.post("/logprob", json={"model": model, "images": [pixels]}).json()["results"][0]
        four = api.post(
            "/logprob", json={"model": model, "images": [pixels], "dequantization_samples": 4}
        ).json()["results"][0]
        assert abs(shown_bpd - one["bits_per_dim"]) <= 5e-5
        assert abs(shown_logp - one["log_prob"]) <= 5e-3
        assert abs(shown_k - four["bits_per_dim"]) <= 5e-5
        assert_ood_cells(row, api, model, pixels)
    page.click("#clear")
    assert sum(map(sum, preview_pixels(page))) == 0
    page.context.close()


def test_interpolation_strip_ends_are_the_decoded_endpoint_latents(browser, server, api):
    page = open_page(browser, server)
    page.click("#tab-score")
    draw_stroke(page)
    pixels = preview_pixels(page)
    page.select_option("#model", FAST)
    page.click("#tab-interpolate")
    page.select_option("#start-source", "drawing")
    page.select_option("#end-source", "seed")
    page.fill("#end-seed", "5")
    page.fill("#steps", "6")
    page.click("#interpolate-button")
    wait_for_images(page, "#strip img", 6)
    assert TIMINGS.search(page.inner_text("#interp-timings"))
    shot(page, "04-interpolate")
    strip = [png_array(s) for s in image_sources(page, "#strip img")]
    model = page.input_value("#model")
    temperature = float(page.input_value("#temperature"))

    encoded = api.post("/encode", json={"model": model, "images": [pixels]}).json()
    start = api.post("/decode", json={"model": model, "latents": encoded["latents"]}).json()["images"][0]
    assert np.array_equal(strip[0], png_array(start))
    assert np.array_equal(strip[0], np.asarray(pixels, dtype=np.uint8))  # encoding is exact
    generator = torch.Generator().manual_seed(5)  # the seed's latents, drawn as the server draws them
    latents = [(torch.randn((1, *s), generator=generator) * temperature) for s in encoded["latent_shapes"]]
    end = api.post("/decode", json={"model": model, "latents": [z.tolist() for z in latents]}).json()
    assert np.array_equal(strip[-1], png_array(end["images"][0]))
    assert not np.array_equal(strip[0], strip[-1])
    page.context.close()


def test_interpolating_between_two_samples_of_the_grid(browser, server):
    page = open_page(browser, server)
    page.select_option("#model", FAST)
    page.fill("#num-samples", "2")
    page.click("#sample-button")
    page.wait_for_function("() => document.querySelectorAll('#grid img').length === 2")
    samples = [png_array(s) for s in image_sources(page, "#grid img")]
    page.click("#tab-interpolate")
    page.select_option("#start-source", "sample:0")
    page.select_option("#end-source", "sample:1")
    page.select_option("#method", "linear")
    page.fill("#steps", "5")
    page.click("#interpolate-button")
    wait_for_images(page, "#strip img", 5)
    strip = [png_array(s) for s in image_sources(page, "#strip img")]
    assert np.array_equal(strip[0], samples[0]) and np.array_equal(strip[-1], samples[1])
    page.context.close()


def test_api_errors_are_shown_as_readable_messages(browser, server):
    page = open_page(browser, server)
    page.evaluate(  # a model that went away since the page loaded (the picker only lists served ones)
        "() => { const o = new Option('gone-mnist', 'gone-mnist', true, true); "
        "document.getElementById('model').append(o); }"
    )
    page.click("#sample-button")
    page.wait_for_selector("#message:not([hidden])")
    message = page.inner_text("#message")
    assert "Request rejected (404 unknown_model)" in message and "gone-mnist" in message, message
    shot(page, "05-error-unknown-model")
    page.select_option("#model", SHIPPED[0])
    page.fill("#num-samples", str(2 * QUEUE))  # more than the queue holds: 503 at once
    page.click("#sample-button")
    page.wait_for_selector("#message:has-text('overloaded')")
    message = page.inner_text("#message")
    assert "The server is overloaded (503)" in message and "Try again in 1 s" in message, message
    assert page.locator("#sample-form").is_visible()  # a message, never a blank page
    shot(page, "06-error-overloaded")
    page.fill("#num-samples", "1")
    page.click("#sample-button")
    page.wait_for_function("() => document.querySelectorAll('#grid img').length === 1")
    assert page.locator("#message").is_hidden()  # the next success clears it
    page.context.close()


def test_phone_width_and_keyboard_only_use(browser, server):
    page = open_page(browser, server, width=390, height=844)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    page.focus("#tab-sample")
    page.keyboard.press("ArrowRight")
    assert (
        page.get_attribute("#tab-score", "aria-selected") == "true"
        and page.locator("#panel-score").is_visible()
    )
    assert page.evaluate("() => document.activeElement.id") == "tab-score"
    draw_stroke(page)
    page.fill("#k-samples", "1")
    page.focus("#score-button")
    page.keyboard.press("Enter")
    page.wait_for_function(f"() => document.querySelectorAll('#scores td.bpd').length === {len(SHIPPED)}")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    shot(page, "07-phone-score")
    page.focus("#tab-score")
    page.keyboard.press("ArrowRight")
    assert page.locator("#panel-interpolate").is_visible()
    shot(page, "07-phone-interpolate")
    page.keyboard.press("Home")
    assert page.locator("#panel-sample").is_visible()
    page.focus("#num-samples")
    page.keyboard.press("Control+A")
    page.keyboard.type("9")
    page.keyboard.press("Enter")  # submits the form, as a keyboard user would
    wait_for_images(page, "#grid img", 9)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    shot(page, "07-phone-sample")
    page.context.close()


def test_uploading_an_image_file_scores_its_pixels(browser, server, api, tmp_path):
    from model.data import load_mnist

    digit = load_mnist().test[0, 0].numpy()
    path = tmp_path / "digit.png"
    Image.fromarray(digit).save(path)
    page = open_page(browser, server)
    page.click("#tab-score")
    page.set_input_files("#upload", str(path))
    page.wait_for_function("() => document.querySelector('#start-source option[value=drawing]') !== null")
    pixels = np.asarray(preview_pixels(page))
    assert np.abs(pixels - digit.astype(int)).max() <= 1  # a 28×28 file is the preview, pixel for pixel
    page.fill("#k-samples", "1")
    page.click("#score-button")
    page.wait_for_function(f"() => document.querySelectorAll('#scores td.bpd').length === {len(SHIPPED)}")
    direct = api.post("/logprob", json={"model": SHIPPED[0], "images": [pixels.tolist()]}).json()
    shown = float(page.locator(f"#scores tr[data-model='{SHIPPED[0]}'] td.bpd").inner_text())
    assert abs(shown - direct["results"][0]["bits_per_dim"]) <= 5e-5
    assert shown < 3  # a real digit is likely under every model
    verdicts = {}
    for model in SHIPPED:
        row = page.locator(f"#scores tr[data-model='{model}']")
        scored = assert_ood_cells(row, api, model, pixels.tolist())
        if scored is not None:
            verdicts[model] = scored["is_outlier"]
    if "finc-fashion-mnist" in verdicts:  # likelier than its own clothes, and flagged all the same
        assert verdicts.pop("finc-fashion-mnist") and not any(verdicts.values()), verdicts
    shot(page, "08-score-upload")
    page.context.close()
