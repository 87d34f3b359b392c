"""A small web page to try the model in a browser: ``mgid web`` -> http://127.0.0.1:7860.

    >>> import mgid
    >>> from mgid.derain.web import create_app, serve
    >>> app = create_app(mgid.load_model(device="cpu"))   # a Flask app (tests use app.test_client())
    >>> serve(port=7860)                                   # loads the shipped weights and serves until Ctrl-C

Endpoints: ``GET /`` (the page, `PAGE`, nothing fetched from elsewhere), ``POST /api/derain`` (an image in, JSON
with the rainy, de-rained and rain images out; errors as JSON ``{"error": message}`` with an HTTP status) and
``GET /health``. Uploads, pixels, memory, jobs and connections are bounded; the server has no authentication and
binds 127.0.0.1 unless told otherwise. The endpoints' fields and statuses, and the limits: docs/DEPLOY.md,
"Design notes".
"""
from __future__ import annotations

import base64
import io
import ipaddress
import math
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from mgid.data.image_header import (
    FORMAT_NAMES,
    AnimatedImageError,
    ImageTooLargeError,
    ImageTooSmallError,
    check_pixels,
    check_still,
    read_header,
)
from mgid.derain.tiling import TILE_AUTO
from mgid.errors import InputError, MgidError, MissingDependencyError

if TYPE_CHECKING:  # Flask and werkzeug are imported where used, so `mgid --help` works without Flask
    from flask import Flask

    from mgid.derain.derainer import Derainer
    from mgid.derain.web_server import BoundedWSGIServer

#: Where `serve` listens by default: this machine only.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_MAX_UPLOAD_MB = 20.0
#: Largest image (width x height) accepted: a decompression bomb (a small PNG of a huge blank image)
#: would otherwise allocate gigabytes before the network even starts.
WEB_MAX_PIXELS = 40_000_000
#: Tiling choices on the page: auto (the whole photo when it fits the memory, else tiles; the default), or
#: tiles of a size in px.
TILE_CHOICES: tuple[int | str, ...] = (TILE_AUTO, 512, 256)
#: Largest tile of automatic tiling on the page: the time limit is checked between tiles, so a tile bounds how
#: far past it a job can run (about 3 s for 1024x1024 in bf16 on the Xeon of the README, 12 s in fp32).
MAX_WEB_TILE = 1024
#: Time limit of one de-raining (``--job-seconds``): a 40-megapixel photo takes about 170 s in bf16 on one
#: core of the Xeon of the README.
DEFAULT_JOB_SECONDS = 300.0
#: Photos that may wait while one is de-rained (``--queue``); more are refused with 503 + Retry-After.
DEFAULT_MAX_WAITING = 4
#: Longest wait for the next bytes of a request (``--read-timeout``), in seconds; a connection that sends
#: nothing for this long is closed.
DEFAULT_READ_TIMEOUT = 30.0
#: Longest time from a connection to its upload read whole (``--upload-timeout``), in seconds: 20 MB in 120 s
#: needs 1.4 Mbit/s; a client trickling bytes is cut here.
DEFAULT_UPLOAD_TIMEOUT = 120.0
#: Connections served at once (one thread each); more are answered 503 and closed.
DEFAULT_MAX_CONNECTIONS = 64
#: Uploads read at once, at least (each buffers up to the upload limit): twice the job slots when that is more.
MIN_READING = 8
#: Formats named in the "not an image" message (those whose headers are read, `mgid.data.image_header`).
READ_FORMATS = f"{FORMAT_NAMES} are read"


class ListenError(MgidError, OSError):
    """The server's address cannot be bound (port in use, address not available)."""


class UploadError(MgidError, ValueError):
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


def decode_image(data: bytes, filename: str = "upload", max_pixels: int = WEB_MAX_PIXELS) -> np.ndarray:
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
    try:
        check_still(header, repr(filename))
    except AnimatedImageError as exc:
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


def parse_tile(value: str | None) -> int | str:
    """The form's ``tile`` field -> `TILE_AUTO` (the default) or one of the sizes of `TILE_CHOICES`;
    UploadError (400) otherwise."""
    if value in (None, "", TILE_AUTO):
        return TILE_AUTO
    sizes = [t for t in TILE_CHOICES if t != TILE_AUTO]
    try:
        tile = int(value)
    except ValueError:
        tile = -1
    if tile not in sizes:
        raise UploadError(f"tile must be {TILE_AUTO!r} (tiles only when the photo needs them) or one of "
                          f"{', '.join(map(str, sizes))}, got {value!r}")
    return tile


def plan_tile(derainer: Derainer, choice: int | str, height: int, width: int) -> int | None:
    """The tile a job runs with: a chosen size, or for `TILE_AUTO` the derainer's automatic choice (the whole
    image when it fits the memory budget) capped at `MAX_WEB_TILE`, so the time limit, checked between
    tiles, is kept to within one tile's time. Raises `mgid.derain.memory_budget.MemoryBudgetError` when the photo
    does not fit the memory at all."""
    if choice != TILE_AUTO:
        return int(choice)
    tile = derainer.auto_tile(1, height, width)
    if max(height, width) > MAX_WEB_TILE and (tile is None or tile > MAX_WEB_TILE):
        return MAX_WEB_TILE
    return tile


class InMemoryUploads:
    """Mixed into Flask's request class so that uploads stay in memory: werkzeug spools any upload over 500 KB
    to a temporary file; here every file part is an ``io.BytesIO`` (the body is at most ``MAX_CONTENT_LENGTH``,
    so memory is bounded anyway)."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()


# ----------------------------------------------------------------------------------------------- app


def create_app(derainer: Derainer, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
               max_pixels: int = WEB_MAX_PIXELS, overlap: int | None = None,
               job_seconds: float | None = DEFAULT_JOB_SECONDS, max_waiting: int = DEFAULT_MAX_WAITING,
               read_timeout: float = DEFAULT_READ_TIMEOUT, upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT,
               max_reading: int | None = None) -> Flask:
    """Build the Flask app that serves the page and the API around ``derainer``.

    Args:
        derainer: The network (`mgid.load_model`); the page calls its ``derain_with_rain`` and ``auto_tile``.
        max_upload_mb: Largest request body in MB (Flask ``MAX_CONTENT_LENGTH``): larger uploads get a 413 JSON
            error (the page refuses them before sending). Default `DEFAULT_MAX_UPLOAD_MB` (20).
        max_pixels: Largest image (width x height), checked from its header before decoding (413 beyond).
            Default `WEB_MAX_PIXELS` (40 million).
        overlap: Tile overlap in px (None, the default: the derainer's default).
        job_seconds: Time limit of one de-raining in seconds, checked between tiles (503 past it; None: none).
            Default `DEFAULT_JOB_SECONDS` (300).
        max_waiting: Photos that may wait while one is de-rained; more get 503 with Retry-After
            (`mgid.derain.web_jobs.JobQueue`). Default `DEFAULT_MAX_WAITING` (4).
        read_timeout: Longest wait, in seconds, for the next bytes of a request under `make_web_server`.
            Default `DEFAULT_READ_TIMEOUT` (30).
        upload_timeout: Seconds from a connection within which its upload must arrive whole under
            `make_web_server` (408 past either). Default `DEFAULT_UPLOAD_TIMEOUT` (120).
        max_reading: Uploads read at once before they take a job slot; more get 503 with Retry-After (None, the
            default: twice the job slots, at least `MIN_READING`).

    Returns:
        The Flask app; every upload's body is read whole (`mgid.derain.web_server.UploadReader`) before it takes
        a job slot.

    Raises:
        MissingDependencyError: Flask is not installed.
        InputError: ``max_upload_mb``, ``read_timeout`` or ``upload_timeout`` is not positive, ``job_seconds`` is
            neither None nor positive, ``max_waiting`` is negative or ``max_reading`` is below 1.
    """
    try:
        from flask import Flask, Request, jsonify, request
    except ImportError as exc:
        raise MissingDependencyError(f"{exc} (install it: pip install flask)") from exc
    from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
    from werkzeug.utils import secure_filename

    from mgid.derain.memory_budget import MemoryBudgetError, is_out_of_memory
    from mgid.derain.time_limit import TimeLimitExceeded
    from mgid.derain.web_jobs import JobQueue, QueueFull
    from mgid.derain.web_server import UploadReader

    if max_upload_mb <= 0:
        raise InputError(f"max_upload_mb must be positive, got {max_upload_mb}")
    if not (read_timeout > 0 and upload_timeout > 0):
        raise InputError(f"read_timeout and upload_timeout must be positive seconds, got {read_timeout} and "
                         f"{upload_timeout}")
    app = Flask(__name__)
    app.request_class = type("InMemoryRequest", (InMemoryUploads, Request), {})
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 1024 * 1024)
    app.config["MGID_READ_TIMEOUT"], app.config["MGID_UPLOAD_TIMEOUT"] = read_timeout, upload_timeout
    jobs = JobQueue(max_waiting, job_seconds)
    uploads = UploadReader(app.wsgi_app, ["/api/derain"], app.config["MAX_CONTENT_LENGTH"],
                           max(MIN_READING, 2 * (max_waiting + 1)) if max_reading is None else max_reading,
                           read_timeout, upload_timeout)
    app.wsgi_app = uploads  # type: ignore[method-assign]
    limit_text = f"{max_upload_mb:g} MB"
    page = (PAGE.replace("__MAX_BYTES__", str(app.config["MAX_CONTENT_LENGTH"]))
            .replace("__MAX_MB__", limit_text).replace("__MAX_MP__", f"{max_pixels / 1e6:g}"))

    def error(message: str, status: int, retry_after: int | None = None):
        headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
        return jsonify(error=message), status, headers

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
                       max_upload_mb=max_upload_mb, max_pixels=max_pixels, job_seconds=job_seconds,
                       max_waiting=max_waiting, busy=jobs.taken, reading=uploads.reading,
                       read_timeout=read_timeout, upload_timeout=upload_timeout, tiles=list(TILE_CHOICES))

    @app.post("/api/derain")
    def derain():
        try:
            with jobs.slot():  # the body is in memory (UploadReader); the slot bounds decoding and the network
                return derain_upload()
        except QueueFull as exc:
            return error(str(exc), 503, exc.retry_after)

    def derain_upload():
        upload = request.files.get("image")  # parsing the form enforces MAX_CONTENT_LENGTH (-> too_large)
        if upload is None or not upload.filename:
            return error("no image uploaded: choose a photo (form field 'image')", 400)
        name = upload.filename
        try:
            choice = parse_tile(request.form.get("tile"))
            rgb = decode_image(upload.read(), name, max_pixels)
        except UploadError as exc:
            return error(str(exc), exc.status)
        h, w = rgb.shape[:2]

        def job():  # planned once the network is ours: the memory available then is what counts
            tile = plan_tile(derainer, choice, h, w)
            return tile, derainer.derain_with_rain(rgb, tile=tile, overlap=overlap)

        try:
            (tile, (derained, rain)), timing = jobs.run(job)
        except MemoryBudgetError as exc:
            return error(f"image too large for this server's memory: {exc}", 413)
        except TimeLimitExceeded as exc:
            return error(f"{exc} (the server's --job-seconds); try a smaller photo", 503)
        except (RuntimeError, MemoryError, ValueError) as exc:  # bad input was refused above: these are ours
            if is_out_of_memory(exc):
                return error("out of memory while de-raining; try again later or with a smaller photo", 503)
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            return error(f"de-raining failed: {last}", 500)
        stem = Path(secure_filename(name)).stem or "image"
        return jsonify(width=w, height=h, tile=tile, tile_choice=choice, seconds=round(timing.seconds, 3),
                       queued_seconds=round(timing.queued, 3), filename=f"{stem}_derained.png",
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


def make_web_server(app: Flask, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                    max_connections: int = DEFAULT_MAX_CONNECTIONS) -> BoundedWSGIServer:
    """Werkzeug's threaded WSGI server for ``app``, bound but not yet serving (call ``serve_forever``).

    Args:
        app: The app (`create_app`): its ``read_timeout`` and ``upload_timeout`` apply to every connection.
        host: Address to bind.
        port: Port to bind; 0 picks a free one (read it back from ``server.port``).
        max_connections: Connections served at once (a thread each); more are answered 503 and closed.

    Returns:
        The server (`mgid.derain.web_server.BoundedWSGIServer`).

    Raises:
        ListenError: The address cannot be bound (an `OSError`).
    """
    from mgid.derain.web_server import BoundedWSGIServer, handler_class

    read_timeout = app.config.get("MGID_READ_TIMEOUT", DEFAULT_READ_TIMEOUT)
    upload_timeout = app.config.get("MGID_UPLOAD_TIMEOUT", DEFAULT_UPLOAD_TIMEOUT)
    try:
        return BoundedWSGIServer(host, port, app, handler_class(read_timeout, upload_timeout), max_connections,
                                 retry_after=max(1, math.ceil(read_timeout)))
    except OSError as exc:
        raise ListenError(f"cannot listen on {host}:{port}: {exc}") from exc


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, weights: str | Path | None = None,
          device: str = "auto", max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, precision: str = "auto",
          max_pixels: int = WEB_MAX_PIXELS, derainer: Derainer | None = None,
          job_seconds: float | None = DEFAULT_JOB_SECONDS, max_waiting: int = DEFAULT_MAX_WAITING,
          max_memory: int | None = None, read_timeout: float = DEFAULT_READ_TIMEOUT,
          upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT) -> None:
    """Load the weights (None: the shipped ones) on ``device`` and serve the page until Ctrl-C.

    Args:
        host: Address to bind (default 127.0.0.1: this machine only); the page is at ``http://HOST:PORT/``.
        port: Port to bind. Default `DEFAULT_PORT` (7860).
        weights: Weights file or folder, as `mgid.load_model` takes (None: the shipped ones).
        device: Device of the network (``auto``, the default, ``cpu``, ``cuda``, ``cuda:N``).
        max_upload_mb: As `create_app`.
        precision: Arithmetic of the network: ``"auto"`` (the default), ``"fp32"`` or ``"bf16"``
            (`mgid.precision.resolve_precision`).
        max_pixels: As `create_app`.
        derainer: Use this one instead of loading ``weights``.
        job_seconds: As `create_app`.
        max_waiting: As `create_app`.
        max_memory: Memory budget of automatic tiling in bytes (None: a share of what is available,
            `mgid.derain.memory_budget`).
        read_timeout: As `create_app`.
        upload_timeout: As `create_app`.

    Raises:
        MissingDependencyError: Flask is missing.
        ListenError: The address cannot be bound (an `OSError`).
        InputError: A limit is not valid, or (when loading) a bad ``precision`` or ``max_memory``.
        FileNotFoundError: ``weights`` is missing (only without ``derainer``).
        mgid.checkpoint.CheckpointError: The weights files are pickled, truncated or inconsistent (only without
            ``derainer``).
        mgid.devices.DeviceError: ``device`` is unknown or not available (only without ``derainer``).
    """
    if derainer is None:
        from mgid.derain.derainer import load_model

        derainer = load_model(weights, device, precision=precision, max_memory=max_memory)
    app = create_app(derainer, max_upload_mb=max_upload_mb, max_pixels=max_pixels, job_seconds=job_seconds,
                     max_waiting=max_waiting, read_timeout=read_timeout, upload_timeout=upload_timeout)
    server = make_web_server(app, host, port)
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
  <p class="sub">Upload a rainy photo (JPEG, PNG, BMP, TIFF or WebP, up to __MAX_MB__ and __MAX_MP__
    megapixels). It is processed in memory on this server and not stored.</p>
  <form id="form">
    <input id="file" name="image" type="file" accept="image/*" required>
    <fieldset>
      <legend>Tiling</legend>
      <label><input type="radio" name="tile" value="auto" checked> automatic</label>
      <label><input type="radio" name="tile" value="512"> 512 px tiles</label>
      <label><input type="radio" name="tile" value="256"> 256 px tiles</label>
    </fieldset>
    <button id="go" type="submit">De-rain</button>
    <div id="hint">Automatic de-rains the whole photo when it fits this server's memory and in tiles (up to
      1024 px) otherwise; tiles share the whole photo's statistics, and larger ones are closer to the whole-image
      result.</div>
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
      let message = data.error || ("HTTP " + response.status);
      if (response.status === 413 && !data.error) message = "upload too large: the limit is __MAX_MB__";
      const retry = response.headers.get("Retry-After");
      if (retry) message += " (retry in about " + retry + " s)";
      say(message, true);
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
    const waited = data.queued_seconds >= 0.5 ? " (after " + data.queued_seconds.toFixed(1) + " s in the queue)" : "";
    $("info").textContent = " " + data.width + " x " + data.height + ", " + tiling + ", " +
                            data.seconds.toFixed(2) + " s" + waited;
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
