"""A small web page to try the model in a browser: ``mgid web`` -> http://127.0.0.1:7860.

Over 400 lines because the page itself (`PAGE`, about 200 lines of HTML, CSS and JavaScript) is inline:
one file to serve, nothing fetched from elsewhere.

    >>> import mgid
    >>> from mgid.web import create_app, serve
    >>> app = create_app(mgid.load_model(device="cpu"))   # a Flask app (tests use app.test_client())
    >>> serve(port=7860)                                   # loads the shipped weights and serves until Ctrl-C

The page (`PAGE`: one HTML document with inline CSS and JavaScript, nothing fetched from elsewhere, so it
works without internet) uploads a photo to ``POST /api/derain`` and shows rainy | de-rained | rain layer
side by side, a before/after slider and a download link of the de-rained PNG. Endpoints:

* ``GET /``: the page.
* ``POST /api/derain``: multipart form with ``image`` (the file) and ``tile`` (``none``, ``256`` or ``512``);
  answers JSON ``{"width", "height", "tile", "seconds", "filename", "rainy", "derained", "rain"}``, the
  three images as ``data:image/png;base64,...`` URLs. Errors are JSON ``{"error": message}`` with HTTP 400
  (not an image, bad form), 413 (upload or image too large) or 500 (the network failed, e.g. out of memory).
* ``GET /health``: ``{"status": "ok", ...}`` with the weights, device and limits.

Uploads are decoded in memory (`decode_image`, OpenCV) and never written to disk. One de-raining runs at
a time (a lock around the network): the network is not re-entrant on one device and two concurrent
photos would only compete for the same cores or GPU memory. The server is werkzeug's threaded server,
bound to 127.0.0.1 unless ``--host`` says otherwise: it has no authentication, so exposing it is a
deliberate choice (``mgid web`` warns).
"""
from __future__ import annotations

import base64
import ipaddress
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from mgid.data.image_header import FORMAT_NAMES, ImageTooLargeError, ImageTooSmallError, check_pixels, read_header

if TYPE_CHECKING:  # Flask and werkzeug are imported where used, so `mgid --help` works without Flask
    from flask import Flask
    from werkzeug.serving import BaseWSGIServer

    from mgid.api import Derainer

#: Where `serve` listens by default: this machine only.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_UPLOAD_MB = 20.0
#: Largest image (width x height) accepted: a decompression bomb (a small PNG of a huge blank image)
#: would otherwise allocate gigabytes before the network even starts.
DEFAULT_MAX_PIXELS = 40_000_000
#: Tiling choices on the page: None = whole image (fastest, most memory), else tile size in px.
TILE_CHOICES: tuple[int | None, ...] = (None, 256, 512)
#: Formats named in the "not an image" message (those whose headers are read, `mgid.data.image_header`).
READ_FORMATS = f"{FORMAT_NAMES} are read"


class UploadError(ValueError):
    """A refused upload; ``status`` is the HTTP status of the JSON error answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------------------------------ decoding


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """16-bit and float pixels -> uint8 (the network takes 8-bit images)."""
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (img.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    return (np.clip(img.astype(np.float32), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def decode_image(data: bytes, filename: str = "upload", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """The bytes of an image file -> HxWx3 uint8 RGB, decoded in memory with OpenCV.

    The header is read first (`mgid.data.image_header`): data no header parser of the formats read here
    recognises, and images too small for the network, are refused (400), and images over ``max_pixels`` (413)
    before a single pixel is decoded, so a few-kilobyte PNG claiming 400 megapixels costs nothing.
    Grey images get 3 equal channels; an alpha channel is composited over white (what a browser shows
    for a transparent PNG; dropping alpha would expose whatever colour the transparent pixels happen
    to store); 16-bit images are reduced to 8 bits; JPEG EXIF orientation is applied. Raises
    `UploadError` (400) for empty or undecodable data.
    """
    if not data:
        raise UploadError(f"not an image: {filename!r} is empty")
    header = read_header(data)
    if header is None:
        raise UploadError(f"not an image: could not decode {filename!r} ({READ_FORMATS})")
    try:
        check_pixels(header, repr(filename), max_pixels)
    except ImageTooLargeError as exc:
        raise UploadError(str(exc), status=413) from exc
    except ImageTooSmallError as exc:
        raise UploadError(str(exc)) from exc
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error:  # some codecs raise instead of returning None
        img = None
    if img is None or img.size == 0:
        raise UploadError(f"not an image: could not decode {filename!r} ({READ_FORMATS})")
    if img.shape[0] * img.shape[1] > max_pixels:  # a header that understated the size
        raise UploadError(f"image too large: {filename!r} decodes to {img.shape[1]} x {img.shape[0]} pixels",
                          status=413)
    if img.ndim == 3 and img.shape[2] == 4:
        bgra = _to_uint8(img).astype(np.float32)
        alpha = bgra[..., 3:] / 255.0
        bgr = (bgra[..., :3] * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)
    else:
        # IMREAD_COLOR (a second decode, cheap next to the network) expands grey to 3 channels, reduces
        # 16 bits and, unlike IMREAD_UNCHANGED, turns phone photos upright by their EXIF orientation.
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        if bgr is None:
            raise UploadError(f"not an image: could not decode {filename!r} ({READ_FORMATS})")
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def png_data_url(rgb: np.ndarray) -> str:
    """HxWx3 uint8 RGB -> ``data:image/png;base64,...`` (lossless, so the page shows exact pixels)."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - PNG encoding of uint8 pixels does not fail
        raise RuntimeError("OpenCV could not encode the result as PNG")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def parse_tile(value: str | None) -> int | None:
    """The form's ``tile`` field -> None (whole image) or one of `TILE_CHOICES`; UploadError otherwise."""
    if value in (None, "", "none", "whole"):
        return None
    allowed = [t for t in TILE_CHOICES if t is not None]
    try:
        tile = int(value)
    except ValueError:
        tile = -1
    if tile not in allowed:
        raise UploadError(f"tile must be 'none' (whole image) or one of {', '.join(map(str, allowed))}, "
                          f"got {value!r}")
    return tile


# ----------------------------------------------------------------------------------------------- app


def create_app(derainer: Derainer, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
               max_pixels: int = DEFAULT_MAX_PIXELS, overlap: int | None = None) -> Flask:
    """A Flask app serving the page and the API around ``derainer`` (`mgid.load_model`).

    ``max_upload_mb``: largest request body (Flask ``MAX_CONTENT_LENGTH``; larger uploads get a 413 JSON
    error, and the page refuses them before sending). ``max_pixels``: largest decoded image.
    ``overlap``: tile overlap in px (None: the derainer's default).
    """
    from flask import Flask, jsonify, request
    from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
    from werkzeug.utils import secure_filename

    if max_upload_mb <= 0:
        raise ValueError(f"max_upload_mb must be positive, got {max_upload_mb}")
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 1024 * 1024)
    lock = threading.Lock()
    limit_text = f"{max_upload_mb:g} MB"
    page = (PAGE.replace("__MAX_BYTES__", str(app.config["MAX_CONTENT_LENGTH"]))
            .replace("__MAX_MB__", limit_text))

    def error(message: str, status: int):
        return jsonify(error=message), status

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_exc: RequestEntityTooLarge):
        return error(f"upload too large: the limit is {limit_text} (resize or re-compress the photo, or start "
                     f"the server with a larger --max-upload-mb)", 413)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        # JSON for the API (the page shows the message); the default HTML pages elsewhere.
        if request.path.startswith("/api/"):
            return error(f"{exc.code} {exc.name}: {exc.description}", exc.code or 500)
        return exc

    @app.after_request
    def headers(response):
        # Everything the page needs is inline or a data: URL; the policy makes any outside fetch fail
        # loudly instead of silently depending on the internet.
        response.headers.setdefault(
            "Content-Security-Policy", "default-src 'none'; img-src 'self' data: blob:; style-src 'unsafe-inline'; "
                                       "script-src 'unsafe-inline'; connect-src 'self'; form-action 'self'")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.get("/")
    def index():
        return page, 200, {"Content-Type": "text/html; charset=utf-8"}

    @app.get("/health")
    def health():
        return jsonify(status="ok", weights=str(derainer.weights) if derainer.weights else None,
                       device=str(derainer.device), precision=derainer.precision,
                       max_upload_mb=max_upload_mb, max_pixels=max_pixels,
                       tiles=[t or "none" for t in TILE_CHOICES])

    @app.post("/api/derain")
    def derain():
        upload = request.files.get("image")  # reading the form enforces MAX_CONTENT_LENGTH (-> too_large)
        if upload is None or not upload.filename:
            return error("no image uploaded: choose a photo (form field 'image')", 400)
        name = upload.filename
        try:
            tile = parse_tile(request.form.get("tile"))
            rgb = decode_image(upload.read(), name, max_pixels)
        except UploadError as exc:
            return error(str(exc), exc.status)
        start = time.perf_counter()
        try:
            with lock:
                derained, rain = derainer.derain_with_rain(rgb, tile=tile, overlap=overlap)
        except RuntimeError as exc:  # out of memory (CUDA OOM is a RuntimeError too) and other failures
            hint = " (for large photos pick 512 or 256 px tiles)" if tile is None else ""
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            return error(f"de-raining failed: {last}{hint}", 500)
        seconds = time.perf_counter() - start
        stem = Path(secure_filename(name)).stem or "image"
        h, w = rgb.shape[:2]
        return jsonify(width=w, height=h, tile=tile, seconds=round(seconds, 3), filename=f"{stem}_derained.png",
                       rainy=png_data_url(rgb), derained=png_data_url(derained), rain=png_data_url(rain))

    return app


# -------------------------------------------------------------------------------------------- server


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def make_web_server(app: Flask, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> BaseWSGIServer:
    """Werkzeug's threaded WSGI server for ``app``, bound (not yet serving: call ``serve_forever``).

    ``port=0`` picks a free port (read it back from ``server.port``); tests use that.
    """
    from werkzeug.serving import make_server

    return make_server(host, port, app, threaded=True)


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, weights: str | Path | None = None,
          device: str = "auto", max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, precision: str = "auto",
          max_pixels: int = DEFAULT_MAX_PIXELS, derainer: Derainer | None = None) -> None:
    """Load the weights (None: the shipped ones) on ``device`` and serve the page until Ctrl-C.

    ``derainer``: use this one instead of loading ``weights``. Binds ``host`` (default 127.0.0.1: this
    machine only); the page is at ``http://HOST:PORT/``.
    """
    if derainer is None:
        from mgid.api import load_model

        derainer = load_model(weights, device, precision=precision)
    server = make_web_server(create_app(derainer, max_upload_mb=max_upload_mb, max_pixels=max_pixels), host, port)
    shown = f"[{host}]" if ":" in host else host
    print(f"mgid web: {derainer} on http://{shown}:{server.port}/ (Ctrl-C stops); arithmetic: "
          f"{derainer.arithmetic.describe()}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


# ---------------------------------------------------------------------------------------------- page

#: The page: one document, inline CSS/JS, no outside assets. __MAX_BYTES__ / __MAX_MB__ are filled in by
#: `create_app` (a plain replace: the JavaScript's own braces and ${...} would trip a template engine).
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>MGID de-raining</title>
<link rel="icon" href="data:,">
<style>
  :root { --fg: #1d232a; --muted: #5b6670; --line: #d5dbe0; --accent: #1f6feb; --bad: #b42318; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
         background: #f6f8fa; }
  main { max-width: 1180px; margin: 0 auto; padding: 20px 24px 40px; }
  h1 { font-size: 22px; margin: 0 0 4px; }
  .sub { color: var(--muted); margin: 0 0 16px; }
  form { display: flex; flex-wrap: wrap; gap: 12px 20px; align-items: center; background: #fff;
         border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; }
  fieldset { border: 0; padding: 0; margin: 0; display: flex; gap: 12px; align-items: center; }
  legend { float: left; margin-right: 8px; font-weight: 600; }
  button { background: var(--accent); color: #fff; border: 0; border-radius: 6px; padding: 7px 16px;
           font: inherit; cursor: pointer; }
  button:disabled { opacity: .55; cursor: progress; }
  #status { min-height: 1.5em; margin: 12px 2px; color: var(--muted); }
  #status.error { color: var(--bad); font-weight: 600; }
  #hint { color: var(--muted); font-size: 13px; width: 100%; }
  #result[hidden] { display: none; }
  .row { display: grid; grid-template-columns: repeat(3, 1fr); gap: 12px; }
  figure { margin: 0; background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 8px; }
  figcaption { font-weight: 600; margin-bottom: 6px; }
  figure img { width: 100%; height: auto; display: block; image-rendering: auto; }
  h2 { font-size: 17px; margin: 22px 0 8px; }
  .compare { position: relative; width: 512px; max-width: 100%; user-select: none; line-height: 0;
             border-radius: 8px; overflow: hidden; border: 1px solid var(--line); }
  .compare img { width: 100%; height: auto; display: block; }
  .compare .over { position: absolute; inset: 0; clip-path: inset(0 50% 0 0); }
  .compare .bar { position: absolute; top: 0; bottom: 0; left: 50%; width: 2px; background: #fff;
                  box-shadow: 0 0 3px rgba(0,0,0,.6); pointer-events: none; }
  .compare .tag { position: absolute; top: 8px; padding: 2px 8px; font: 12px/1.6 system-ui, sans-serif;
                  color: #fff; background: rgba(0,0,0,.55); border-radius: 4px; }
  .slider { width: 512px; max-width: 100%; display: flex; gap: 10px; align-items: center; margin-top: 8px; }
  .slider input { flex: 1; }
  .actions { margin-top: 14px; }
  .actions a { color: var(--accent); font-weight: 600; }
  @media (max-width: 760px) { .row { grid-template-columns: 1fr; } }
</style>
</head>
<body>
<main>
  <h1>MGID: memory-guided image de-raining</h1>
  <p class="sub">Upload a rainy photo (JPEG, PNG, BMP, TIFF or WebP, up to __MAX_MB__). It is processed in
    memory on this server and not stored.</p>
  <form id="form">
    <input id="file" name="image" type="file" accept="image/*" required>
    <fieldset>
      <legend>Tiling</legend>
      <label><input type="radio" name="tile" value="none" checked> whole image</label>
      <label><input type="radio" name="tile" value="256"> 256 px tiles</label>
      <label><input type="radio" name="tile" value="512"> 512 px tiles</label>
    </fieldset>
    <button id="go" type="submit">De-rain</button>
    <div id="hint">Whole image is best for photos up to about 2 megapixels; tiles bound the memory for larger
      ones (512 px tiles are closer to the whole-image result than 256).</div>
  </form>
  <div id="status" role="status" aria-live="polite"></div>
  <section id="result" hidden>
    <div class="row">
      <figure><figcaption>rainy (input)</figcaption><img id="img-rainy" alt="rainy input"></figure>
      <figure><figcaption>de-rained</figcaption><img id="img-derained" alt="de-rained result"></figure>
      <figure><figcaption>rain layer (removed)</figcaption><img id="img-rain" alt="rain layer"></figure>
    </div>
    <h2>Before / after</h2>
    <div class="compare" id="compare">
      <img id="cmp-derained" alt="de-rained (right of the line)">
      <img id="cmp-rainy" class="over" alt="rainy (left of the line)">
      <div class="bar" id="bar"></div>
      <span class="tag" style="left:8px">rainy</span><span class="tag" style="right:8px">de-rained</span>
    </div>
    <div class="slider"><span>rainy</span>
      <input id="slider" type="range" min="0" max="100" value="50" aria-label="before/after position">
      <span>de-rained</span></div>
    <div class="actions"><a id="download" download="derained.png" href="#">Download the de-rained PNG</a>
      <span id="info"></span></div>
  </section>
</main>
<script>
"use strict";
const MAX_BYTES = __MAX_BYTES__;
const $ = (id) => document.getElementById(id);
const statusEl = $("status");

function say(text, isError) {
  statusEl.textContent = text;
  statusEl.className = isError ? "error" : "";
}

function setSplit(percent) {
  // The rainy overlay shows left of the line: clip away its right (100 - percent)%.
  $("cmp-rainy").style.clipPath = "inset(0 " + (100 - percent) + "% 0 0)";
  $("bar").style.left = percent + "%";
}
$("slider").addEventListener("input", (e) => setSplit(Number(e.target.value)));

$("file").addEventListener("change", () => {
  const file = $("file").files[0];
  if (!file) return;
  if (file.size > MAX_BYTES) {
    say("upload too large: " + file.name + " is " + (file.size / 1048576).toFixed(1) +
        " MB, the limit is __MAX_MB__", true);
    return;
  }
  say("");
});

$("form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const file = $("file").files[0];
  if (!file) { say("choose a photo first", true); return; }
  if (file.size > MAX_BYTES) {
    // Refused here rather than sent: a server may reset the connection mid-upload after its 413.
    say("upload too large: " + file.name + " is " + (file.size / 1048576).toFixed(1) +
        " MB, the limit is __MAX_MB__", true);
    return;
  }
  const body = new FormData($("form"));
  $("go").disabled = true;
  say("de-raining " + file.name + " ...");
  try {
    const response = await fetch("api/derain", { method: "POST", body });
    let data;
    try { data = await response.json(); } catch (_) { data = { error: "HTTP " + response.status }; }
    if (!response.ok) {
      const message = data.error || ("HTTP " + response.status);
      say(response.status === 413 && !data.error ? "upload too large: the limit is __MAX_MB__" : message, true);
      return;
    }
    $("img-rainy").src = data.rainy;
    $("img-derained").src = data.derained;
    $("img-rain").src = data.rain;
    $("cmp-rainy").src = data.rainy;
    $("cmp-derained").src = data.derained;
    $("download").href = data.derained;
    $("download").download = data.filename;
    setSplit(Number($("slider").value));
    // Natural size, but at least 480 px so small images can be compared, and at most 760 px.
    const shown = Math.min(760, Math.max(480, data.width)) + "px";
    $("compare").style.width = shown;
    document.querySelector(".slider").style.width = shown;
    const tiling = data.tile ? data.tile + " px tiles" : "whole image";
    $("info").textContent = " " + data.width + " x " + data.height + ", " + tiling + ", " +
                            data.seconds.toFixed(2) + " s";
    $("result").hidden = false;
    say("done: " + file.name + " (" + data.width + " x " + data.height + ")");
  } catch (err) {
    say("request failed: " + err, true);
  } finally {
    $("go").disabled = false;
  }
});
</script>
</body>
</html>
"""
