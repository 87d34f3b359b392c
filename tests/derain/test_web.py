"""The try-it web page (`mgid.derain.web`): Flask test-client tests, then the page in a real headless Chromium.

The API tests use a tiny untrained network (fast; only sizes and messages are checked). The browser test
uses the shipped weights on a 96x96 synthetic rainy photo, so "the result differs from the input where
the rain was" is a real check of the whole chain: upload, decode, network, PNG data URL, page.

The browser test skips without Playwright or Chromium (``MGID_WEB_REQUIRE_BROWSER=1``: fails instead).
``MGID_WEB_SCREENSHOT=1`` makes the browser test also write ``docs/images/web_demo.png`` (a 256x256 rainy
photo, after the page has shown its result); otherwise its screenshot goes to ``tmp_path``.
"""
from __future__ import annotations

import base64
import contextlib
import http.client
import inspect
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

import mgid
from tests.derain.tiny_network import tiny_weights

pytest.importorskip("flask", reason="mgid.derain.web needs Flask (pip install flask)")

from mgid.cli import web as web_cli
from mgid.cli.common import run_command
from mgid.data.photos import load_photo  # noqa: E402
from mgid.data.synthetic_rain import add_rain  # noqa: E402
from mgid.derain import web  # noqa: E402 - after the Flask check, so a missing Flask skips instead of erroring
from mgid.derain.derainer import Derainer  # noqa: E402
from mgid.derain.memory_budget import PLANNED_SHARE  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "images" / "web_demo.png"


def png_bytes(rgb: np.ndarray) -> bytes:
    """HxWx3 RGB (or HxW grey, HxWx4 RGBA) uint8 -> PNG file bytes."""
    conv = {3: cv2.COLOR_RGB2BGR, 4: cv2.COLOR_RGBA2BGRA}
    arr = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, conv[rgb.shape[2]])
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    return buf.tobytes()


def decode_data_url(url: str) -> np.ndarray:
    """``data:image/png;base64,...`` -> HxWx3 uint8 RGB."""
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix), url[:40]
    bgr = cv2.imdecode(np.frombuffer(base64.b64decode(url[len(prefix):]), np.uint8), cv2.IMREAD_COLOR)
    assert bgr is not None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def rainy_photo(size: int, name: str = "chelsea", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rainy HxWx3 uint8, rain layer HxW float in [0, 1]): a crop of a bundled photo with synthetic streaks.

    No illumination change and no veil: those alter every pixel, and the test needs pixels without rain
    that the network should leave alone.
    """
    photo = load_photo(name)
    y, x = (photo.shape[0] - size) // 2, (photo.shape[1] - size) // 2
    clean = photo[y:y + size, x:x + size].astype(np.float32) / 255.0
    rainy, rain = add_rain(clean, np.random.default_rng(seed), illumination=False, veil=False)
    return (rainy * 255.0 + 0.5).astype(np.uint8), rain


@pytest.fixture(scope="module")
def tiny_derainer(tmp_path_factory: pytest.TempPathFactory) -> mgid.Derainer:
    return mgid.load_model(tiny_weights(tmp_path_factory.mktemp("tiny")), device="cpu", precision="fp32")


@pytest.fixture()
def client(tiny_derainer: mgid.Derainer):
    return web.create_app(tiny_derainer, max_upload_mb=0.05).test_client()  # 52 KB: "too large" is cheap to send


def post_image(client, data: bytes, filename: str, tile: str = "auto"):
    return client.post("/api/derain", data={"image": (io.BytesIO(data), filename), "tile": tile},
                       content_type="multipart/form-data")


# ------------------------------------------------------------------------------------------- API


@pytest.mark.parametrize("tile", ["auto", "256"])
def test_upload_png_returns_three_images_of_the_input_size(client, tile: str) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    resp = post_image(client, png_bytes(rgb), "street photo.png", tile)
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert (body["width"], body["height"]) == (56, 40)
    assert body["tile"] == (None if tile == "auto" else 256)  # auto: a small photo fits whole
    assert body["tile_choice"] == (tile if tile == "auto" else 256) and body["queued_seconds"] >= 0
    assert body["filename"] == "street_photo_derained.png"
    for key in ("rainy", "derained", "rain"):
        assert decode_data_url(body[key]).shape == (40, 56, 3), key
    np.testing.assert_array_equal(decode_data_url(body["rainy"]), rgb)  # lossless round trip of the input


def test_grey_and_rgba_uploads_become_rgb(client) -> None:
    grey = np.full((24, 32), 90, np.uint8)
    body = post_image(client, png_bytes(grey), "grey.png").get_json()
    assert (decode_data_url(body["rainy"]) == 90).all()
    rgba = np.zeros((24, 32, 4), np.uint8)
    rgba[..., 0] = 200  # red, half of it fully transparent: composited over white
    rgba[:, :16, 3] = 255
    shown = decode_data_url(post_image(client, png_bytes(rgba), "rgba.png").get_json()["rainy"])
    assert (shown[:, :16] == (200, 0, 0)).all() and (shown[:, 16:] == 255).all()


def test_non_image_is_refused_with_a_message(client) -> None:
    resp = post_image(client, b"shopping list: milk, eggs\n", "notes.txt")
    assert resp.status_code == 400
    assert resp.get_json()["error"] == ("not an image: could not decode 'notes.txt' "
                                        "(JPEG, PNG, BMP, TIFF and WebP are read)")
    assert "is empty" in post_image(client, b"", "empty.png").get_json()["error"]
    resp = client.post("/api/derain", data={}, content_type="multipart/form-data")
    assert resp.status_code == 400 and "no image uploaded" in resp.get_json()["error"]
    rgb = np.zeros((16, 16, 3), np.uint8)
    resp = post_image(client, png_bytes(rgb), "a.png", tile="100")
    assert resp.status_code == 400 and "tile must be" in resp.get_json()["error"]


def test_too_large_upload_is_413_with_a_message(client) -> None:
    resp = post_image(client, os.urandom(80_000), "huge.jpg")  # over the fixture's 0.05 MB
    assert resp.status_code == 413
    assert resp.get_json()["error"].startswith("upload too large: the limit is 0.05 MB")


def test_too_many_pixels_is_413(tiny_derainer: mgid.Derainer) -> None:
    # A few hundred bytes of PNG that would decode to a large blank image (a decompression bomb).
    app = web.create_app(tiny_derainer, max_pixels=10_000)
    resp = post_image(app.test_client(), png_bytes(np.zeros((200, 300, 3), np.uint8)), "bomb.png")
    assert resp.status_code == 413
    assert "300 x 200" in resp.get_json()["error"]


def test_page_and_health(client, tiny_derainer: mgid.Derainer) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    for needle in ('type="file"', 'type="range"', 'value="256"', 'value="512"', "download"):
        assert needle in html
    assert "__MAX" not in html and "http://" not in html and "https://" not in html  # filled in; no outside assets
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    health = client.get("/health").get_json()
    assert health["status"] == "ok" and health["device"] == "cpu"
    assert health["weights"] == str(tiny_derainer.weights)


def test_server_binds_localhost_by_default(tiny_derainer: mgid.Derainer) -> None:
    assert inspect.signature(web.serve).parameters["host"].default == "127.0.0.1"
    assert inspect.signature(web.serve).parameters["port"].default == 7860
    server = web.make_web_server(web.create_app(tiny_derainer), port=0)
    try:
        assert server.server_address[0] == "127.0.0.1" and server.port > 0
    finally:
        server.server_close()


def test_cli_subcommand(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="mgid")
    web_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["web"])
    assert (args.host, args.port, args.weights, args.device, args.max_upload_mb) == ("127.0.0.1", 7860, None,
                                                                                     "auto", 20.0)
    calls = []
    monkeypatch.setattr(web, "serve", lambda *a, **k: calls.append((a, k)))
    args = parser.parse_args(["web", "--host", "0.0.0.0", "--port", "8000", "--weights", "w.safetensors",
                              "--device", "cpu", "--max-upload-mb", "5"])
    assert run_command(args.run, args, args.prog) == 0
    assert calls == [(("0.0.0.0", 8000, "w.safetensors", "cpu", 5.0, "auto"),
                      {"max_pixels": 40_000_000, "job_seconds": 300.0, "max_waiting": 4, "max_memory": None,
                       "read_timeout": 30.0, "upload_timeout": 120.0})]
    calls.clear()
    args = parser.parse_args(["web", "--max-megapixels", "12", "--job-seconds", "60", "--queue", "0",
                              "--max-memory", "2G", "--read-timeout", "5", "--upload-timeout", "20"])
    assert run_command(args.run, args, args.prog) == 0
    assert calls[0][1] == {"max_pixels": 12_000_000, "job_seconds": 60.0, "max_waiting": 0, "max_memory": 2 << 30,
                           "read_timeout": 5.0, "upload_timeout": 20.0}
    assert run_command(args.run, parser.parse_args(["web", "--job-seconds", "0"]), args.prog) == 2
    assert run_command(args.run, parser.parse_args(["web", "--read-timeout", "0"]), args.prog) == 2
    assert "reachable from other machines" in capsys.readouterr().err
    assert run_command(args.run, parser.parse_args(["web", "--host", "localhost"]), args.prog) == 0
    assert capsys.readouterr().err == ""
    assert web.is_loopback("::1") and web.is_loopback("127.0.0.2") and not web.is_loopback("example.org")


# --------------------------------------------------------------------------------------- browser


def chromium_path() -> str | None:
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextlib.contextmanager
def running_server(derainer: mgid.Derainer, max_connections: int | None = None, **app_kwargs) -> Iterator:
    """The app served by `mgid.derain.web.make_web_server` on a free localhost port, in a thread; yields the
    server (its port: ``server.port``)."""
    bound = {} if max_connections is None else {"max_connections": max_connections}
    server = web.make_web_server(web.create_app(derainer, **app_kwargs), port=0, **bound)
    thread = threading.Thread(target=server.serve_forever, name="mgid-web-test", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@contextlib.contextmanager
def live_server(derainer: mgid.Derainer, **app_kwargs) -> Iterator[str]:
    """`running_server`, yielding its URL."""
    with running_server(derainer, **app_kwargs) as server:
        yield f"http://127.0.0.1:{server.port}/"


def upload_and_wait(page, path: Path) -> None:
    """Choose ``path`` in the page's file input, press De-rain, wait for the status line to settle."""
    page.set_input_files("#file", str(path))
    page.click("#go")
    page.wait_for_function("() => !document.getElementById('go').disabled"
                           " && document.getElementById('status').textContent !== ''", timeout=60_000)


def browser_missing(reason: str) -> None:
    """Skip, or fail where ``MGID_WEB_REQUIRE_BROWSER=1`` (CI, which installs the browser: a skip would hide
    a broken installation)."""
    if os.environ.get("MGID_WEB_REQUIRE_BROWSER") == "1":
        pytest.fail(f"MGID_WEB_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def test_page_in_headless_chromium(tmp_path: Path) -> None:
    try:
        from playwright import sync_api
    except ImportError:
        browser_missing("playwright is not installed (pip install playwright)")
    exe = chromium_path()
    if exe is None:
        browser_missing("no Chromium (/usr/bin/chromium); on Debian: apt-get install -y --no-install-recommends "
                        "chromium")
    derainer = mgid.load_model(None, device="cpu")
    rainy, rain = rainy_photo(96)
    image = tmp_path / "rainy.png"
    image.write_bytes(png_bytes(rainy))
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo\n")
    big = tmp_path / "big.jpg"
    big.write_bytes(os.urandom(1_200_000))  # over the 1 MB limit below: refused by the page before sending

    with live_server(derainer, max_upload_mb=1) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            failed: list[str] = []
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.goto(url)
            assert page.title() == "MGID de-raining"

            upload_and_wait(page, image)
            assert page.is_visible("#result"), page.text_content("#status")
            assert "done: rainy.png (96 x 96)" in page.text_content("#status")
            out = decode_data_url(page.evaluate("document.getElementById('img-derained').src"))
            assert out.shape == rainy.shape
            size = page.evaluate("(() => { const i = document.getElementById('img-derained');"
                                 " return [i.naturalWidth, i.naturalHeight]; })()")
            assert size == [96, 96]
            diff = np.abs(out.astype(np.float32) - rainy.astype(np.float32)).mean(axis=2)
            on_rain, off_rain = diff[rain > 0.1].mean(), diff[rain < 0.01].mean()
            assert on_rain > 10.0 and on_rain > 5 * off_rain, (on_rain, off_rain)
            assert decode_data_url(page.get_attribute("#download", "href")).shape == rainy.shape
            assert page.get_attribute("#download", "download") == "rainy_derained.png"

            # The slider moves the rainy overlay's clip: at 20 only the left 20% shows rainy.
            page.fill("#slider", "20")
            assert "80%" in page.evaluate("document.getElementById('cmp-rainy').style.clipPath")

            upload_and_wait(page, notes)
            assert page.get_attribute("#status", "class") == "error"
            assert "not an image: could not decode 'notes.txt'" in page.text_content("#status")

            page.set_input_files("#file", str(big))
            page.click("#go")
            page.wait_for_selector("#status.error")
            assert "upload too large: big.jpg is 1.1 MB, the limit is 1 MB" in page.text_content("#status")
            # The server's own 413 (a client that skips the page's check) reaches the browser as JSON.
            status, text = page.evaluate("""async () => {
                const body = new FormData();
                body.append('image', new Blob([new Uint8Array(2 * 1048576)]), 'big.jpg');
                const r = await fetch('api/derain', {method: 'POST', body});
                return [r.status, (await r.json()).error]; }""")
            assert status == 413 and text.startswith("upload too large: the limit is 1 MB")
            assert failed == []
            page.screenshot(path=str(tmp_path / "web_demo.png"), full_page=True)

            if os.environ.get("MGID_WEB_SCREENSHOT") == "1":
                write_screenshot(browser, derainer, tmp_path)
        finally:
            browser.close()


def write_screenshot(browser, derainer: mgid.Derainer, tmp_path: Path) -> None:
    """docs/images/web_demo.png: the page (default limits) after de-raining a 256x256 rainy photo, slider at 40%."""
    rainy, _ = rainy_photo(256, "coffee", seed=3)
    path = tmp_path / "rainy_coffee.png"
    path.write_bytes(png_bytes(rainy))
    with live_server(derainer) as url:
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.goto(url)
        upload_and_wait(page, path)
        assert page.is_visible("#result"), page.text_content("#status")
        page.fill("#slider", "40")
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        page.close()


# ------------------------------------------------------------------------------------------- hostile uploads


def test_tiny_image_is_400_not_500(client) -> None:
    """A 1x1 PNG is refused from its header with the network's size rule (was a 500 and a traceback)."""
    for h, w in ((1, 1), (8, 8), (3, 5)):
        resp = post_image(client, png_bytes(np.zeros((h, w, 3), np.uint8)), "dot.png")
        assert resp.status_code == 400, (h, w, resp.get_json())
        assert "is too small" in resp.get_json()["error"]


def test_bomb_is_413_from_the_header_with_flat_memory(tiny_derainer: mgid.Derainer) -> None:
    """A 27 KB PNG claiming 15000x15000 (and a 16-bit RGBA one claiming 8000x8000) is refused from its header:
    Pillow's own check would refuse to say the size above 179 MP, and decoding first would take GBs. In a child
    process four such uploads grow the RSS by less than 100 MB."""
    from tests.image_bombs import png_bomb
    from tests.peak_memory import run_measured

    app = web.create_app(tiny_derainer, max_upload_mb=1)
    bombs = {"grey.png": png_bomb(15000, 15000), "rgba16.png": png_bomb(8000, 8000, bit_depth=16, colour_type=6)}
    for name, data in bombs.items():
        resp = post_image(app.test_client(), data, name)
        assert resp.status_code == 413, resp.get_json()
        assert "image too large" in resp.get_json()["error"] and "the limit is 40" in resp.get_json()["error"]
    run = run_measured(f"""
import io
import mgid
from mgid.derain import web
from tests.image_bombs import png_bomb
client = web.create_app(mgid.load_model({str(tiny_derainer.weights)!r}, device="cpu"), max_upload_mb=1).test_client()
data = png_bomb(15000, 15000)
mark_baseline()
for i in range(4):
    resp = client.post("/api/derain", data={{"image": (io.BytesIO(data), "b.png")}}, content_type="multipart/form-data")
    print("STATUS", resp.status_code)
""", limit_bytes=4 << 30)
    assert run.stdout.count("STATUS 413") == 4, run.stderr[-3000:]
    assert run.growth < 100 << 20, f"four bombs grew the RSS by {run.growth / 2**20:.0f} MB"


class BlockingDerainer:
    """The tiny derainer, whose de-raining waits for ``release`` (to hold the network while others queue)."""

    def __init__(self, inner: mgid.Derainer) -> None:
        self.inner, self.release, self.started = inner, threading.Event(), threading.Event()

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def derain_with_rain(self, rgb, tile=None, overlap=None):
        self.started.set()
        assert self.release.wait(timeout=30)
        return self.inner.derain_with_rain(rgb, tile=tile, overlap=overlap)


def _post_in_thread(client, data: bytes, results: list) -> threading.Thread:
    thread = threading.Thread(target=lambda: results.append(post_image(client, data, "a.png")))
    thread.start()
    return thread


def test_full_queue_is_503_with_retry_after_and_seconds_exclude_the_wait(tiny_derainer) -> None:
    """One photo runs, one waits (max_waiting=1): a third is refused at once with 503 + Retry-After. The
    waiting photo's "seconds" are its own de-raining; the wait is reported apart."""
    slow = BlockingDerainer(tiny_derainer)
    app = web.create_app(slow, max_waiting=1)
    data = png_bytes(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8))
    first, second = [], []
    t1 = _post_in_thread(app.test_client(), data, first)
    assert slow.started.wait(timeout=30)
    t2 = _post_in_thread(app.test_client(), data, second)
    deadline = time.monotonic() + 30
    while app.test_client().get("/health").get_json()["busy"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    refused = post_image(app.test_client(), data, "third.png")
    assert refused.status_code == 503 and "busy" in refused.get_json()["error"]
    assert int(refused.headers["Retry-After"]) >= 1
    time.sleep(0.5)
    slow.release.set()
    t1.join(timeout=30)
    t2.join(timeout=30)
    assert first[0].status_code == second[0].status_code == 200
    body = second[0].get_json()
    assert body["queued_seconds"] >= 0.4 and body["seconds"] < body["queued_seconds"]
    assert post_image(app.test_client(), data, "later.png").status_code == 200  # the slots are free again


def test_time_limit_is_503(tiny_derainer) -> None:
    """Past --job-seconds the job stops at the next tile with a 503 naming the limit; the server goes on."""
    app = web.create_app(tiny_derainer, job_seconds=1e-6)
    data = png_bytes(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8))
    resp = post_image(app.test_client(), data, "a.png", tile="256")
    assert resp.status_code == 503 and "time limit of 1e-06 s" in resp.get_json()["error"]
    assert post_image(web.create_app(tiny_derainer).test_client(), data, "a.png", tile="256").status_code == 200


def test_memory_budget_is_a_413_and_auto_tiles_large_photos(tiny_derainer, monkeypatch) -> None:
    """A photo that fits the budget only in tiles is tiled (at most MAX_WEB_TILE); one that fits not even in
    the smallest tiles is a 413; tile=none is no longer offered (400)."""
    costs = Derainer(tiny_derainer.net, "cpu", precision="fp32").memory_costs
    # room for 256-pixel tiles in the plan, which uses PLANNED_SHARE of --max-memory
    derainer = Derainer(tiny_derainer.net, "cpu", precision="fp32",
                        max_memory=int(costs.tiled(400 * 600, 256 * 256) / PLANNED_SHARE) + 1)
    client = web.create_app(derainer).test_client()
    data = png_bytes(np.random.default_rng(0).integers(0, 256, (400, 600, 3), dtype=np.uint8))
    body = post_image(client, data, "a.png").get_json()
    assert body["tile"] == 256 and body["tile_choice"] == "auto", body
    tight = Derainer(tiny_derainer.net, "cpu", precision="fp32", max_memory=1 << 20)
    resp = post_image(web.create_app(tight).test_client(), data, "a.png")
    assert resp.status_code == 413 and "memory" in resp.get_json()["error"]
    assert post_image(client, data, "a.png", tile="none").status_code == 400


def test_uploads_never_touch_the_disk(client, tiny_derainer, monkeypatch) -> None:
    """werkzeug spools uploads over 500 KB to a temporary file; the page keeps them in memory."""
    import werkzeug.formparser

    def no_disk(*_args, **_kwargs):
        raise AssertionError("an upload went to a temporary file")

    monkeypatch.setattr(werkzeug.formparser, "SpooledTemporaryFile", no_disk)
    monkeypatch.setattr(werkzeug.formparser, "TemporaryFile", no_disk, raising=False)
    noise = np.random.default_rng(0).integers(0, 256, (400, 500, 3), dtype=np.uint8)
    data = png_bytes(noise)
    assert len(data) > 500 * 1024
    resp = post_image(web.create_app(tiny_derainer, max_upload_mb=2).test_client(), data, "big.png")
    assert resp.status_code == 200, resp.get_json()


# ------------------------------------------------------------------------------------- stalled connections

BOUNDARY = "mgid-test-boundary"


def multipart(data: bytes, filename: str = "a.png") -> bytes:
    """A multipart/form-data body (boundary `BOUNDARY`) holding ``data`` as the form's ``image``."""
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
            f"Content-Type: image/png\r\n\r\n").encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def http_upload(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """POST ``data`` to /api/derain as a real client would; (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", "/api/derain", body=multipart(data),
                     headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def stalled_upload(port: int, declared: int = 100_000) -> socket.socket:
    """A client that sends a POST's headers (Content-Length ``declared``) and the start of a multipart body, then
    nothing."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    start = multipart(b"\x89PNG\r\n\x1a\n")[:120]
    sock.sendall((f"POST /api/derain HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                  f"boundary={BOUNDARY}\r\nContent-Length: {declared}\r\n\r\n").encode() + start)
    return sock


def still_open(sock: socket.socket) -> bool:
    """Whether the server has neither answered nor closed ``sock``."""
    sock.setblocking(False)
    try:
        sock.recv(1)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        sock.setblocking(True)
    return False


def wait_closed(sock: socket.socket, timeout: float = 15.0) -> bytes:
    """Read ``sock`` until the server closes it (a socket.timeout past ``timeout``); what the server sent."""
    sock.settimeout(timeout)
    got = b""
    try:
        while data := sock.recv(65536):
            got += data
    except ConnectionResetError:  # closed with the client's unread bytes: a reset
        pass
    finally:
        sock.close()
    return got


def health(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/health")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def test_stalled_uploads_do_not_hold_the_job_slots(tiny_derainer: mgid.Derainer) -> None:
    """Issue 27: six clients that send a POST's headers and the start of an upload, then nothing, held the five job
    slots (503 "busy" for every real upload, as long as they stayed open). Now a slot is taken only once an upload
    has arrived whole: a real upload is de-rained while they are open, and the server closes them after the read
    timeout, freeing everything."""
    read_timeout = 3.0
    rgb = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    with running_server(tiny_derainer, read_timeout=read_timeout) as server:
        opened = time.monotonic()
        stalled = [stalled_upload(server.port) for _ in range(6)]  # more than the 5 job slots
        deadline = time.monotonic() + 10
        while health(server.port)["reading"] < 6 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert health(server.port)["reading"] == 6 and health(server.port)["busy"] == 0

        status, _, body = http_upload(server.port, png_bytes(rgb))
        assert status == 200, body[:300]
        assert decode_data_url(json.loads(body)["derained"]).shape == rgb.shape
        assert time.monotonic() - opened < read_timeout and all(still_open(s) for s in stalled)

        answers = [wait_closed(s) for s in stalled]
        waited = time.monotonic() - opened
        assert read_timeout - 0.2 < waited < read_timeout + 6, waited
        for answer in answers:  # a 408 when it could still be written, else just the close
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert any(b"upload timed out: no data for 3 s" in a for a in answers), answers[0][:300]
        after = health(server.port)
        assert (after["reading"], after["busy"]) == (0, 0)


def test_trickling_upload_is_cut_at_the_upload_timeout(tiny_derainer: mgid.Derainer) -> None:
    """A client sending a byte every 0.3 s never trips the 1 s read timeout; the 2 s upload deadline cuts it."""
    with running_server(tiny_derainer, read_timeout=1.0, upload_timeout=2.0) as server:
        opened = time.monotonic()
        sock = stalled_upload(server.port)
        stop = threading.Event()

        def trickle() -> None:
            while not stop.wait(0.3):
                try:
                    sock.send(b"x")
                except OSError:
                    return

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        try:
            answer = wait_closed(sock)
        finally:
            stop.set()
            thread.join(timeout=5)
        waited = time.monotonic() - opened
        assert 1.8 < waited < 7, waited
        assert answer == b"" or (answer.startswith(b"HTTP/1.1 408") and b"within 2 s" in answer), answer[:300]
        assert health(server.port)["reading"] == 0


def test_uploads_being_read_and_connections_are_bounded(tiny_derainer: mgid.Derainer) -> None:
    """Past ``max_reading`` uploads being read, one more is a 503 with Retry-After; past ``max_connections``, a
    connection is answered 503 and closed at once; once the stalled ones time out, uploads go through again."""
    rgb = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    with running_server(tiny_derainer, read_timeout=1.5, max_reading=2, max_connections=4) as server:
        stalled = [stalled_upload(server.port) for _ in range(2)]
        deadline = time.monotonic() + 10
        while health(server.port)["reading"] < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        status, headers, body = http_upload(server.port, png_bytes(rgb))
        assert status == 503 and int(headers["Retry-After"]) >= 1
        assert "2 uploads are being received" in json.loads(body)["error"]

        while server.connections > 2 and time.monotonic() < deadline:  # the answered ones have gone
            time.sleep(0.02)
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(2)]  # 4 open
        while server.connections < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        extra = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        refused = wait_closed(extra, timeout=5)
        assert refused.startswith(b"HTTP/1.1 503") and b"Retry-After: 2" in refused, refused[:300]
        assert b"4 connections are open" in refused

        for sock in stalled + idle:  # each closed after the read timeout
            wait_closed(sock)
        assert http_upload(server.port, png_bytes(rgb))[0] == 200


# ---------------------------------------------------------------------------------------------- footprint

#: Modules de-raining does not need that the page's process imported at startup before issue 27 (the trainer's,
#: through the full command-line parser, and torch._dynamo with sympy, through building a network on the meta
#: device): 210 MB and 160 MB of its 754 MB.
NOT_FOR_INFERENCE = ("mgid.train.trainer", "mgid.eval.metrics", "scipy", "skimage", "torch._dynamo", "sympy",
                     "triton", "matplotlib", "tensorboard", "onnx", "onnxruntime")


def test_web_startup_imports_nothing_inference_does_not_need(tiny_derainer: mgid.Derainer) -> None:
    """`mgid web`, as started from the command line, up to the moment it serves: none of `NOT_FOR_INFERENCE`."""
    script = f"""
import sys
import werkzeug.serving
def report(self, *args, **kwargs):
    print("LOADED", [m for m in {NOT_FOR_INFERENCE!r} if m in sys.modules], flush=True)
werkzeug.serving.BaseWSGIServer.serve_forever = report
from mgid.cli import main
sys.exit(main(["web", "--port", "0", "--device", "cpu", "--weights", {str(tiny_derainer.weights)!r}]))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, cwd=REPO,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "LOADED []" in run.stdout, run.stdout
