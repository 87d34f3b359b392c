"""``mgid web``: serve the page where one tries the model in a browser (`mgid.derain.web`)."""
from __future__ import annotations

import argparse
import sys

from mgid.cli import common


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``mgid web``'s parser to ``sub``."""
    from mgid.derain.web import (
        DEFAULT_HOST,
        DEFAULT_JOB_SECONDS,
        DEFAULT_MAX_UPLOAD_MB,
        DEFAULT_MAX_WAITING,
        DEFAULT_PORT,
        DEFAULT_READ_TIMEOUT,
        DEFAULT_UPLOAD_TIMEOUT,
        WEB_MAX_PIXELS,
    )

    p = sub.add_parser(
        "web", help="a web page to try the model in a browser (http://127.0.0.1:7860)",
        description="Serve a page where you upload a photo and see it rainy | de-rained | rain layer, with a "
                    "before/after slider and a download of the de-rained PNG. Uploads are processed in "
                    "memory and never written to disk. Limits: upload size, pixels (from the image's header, "
                    "before decoding), memory (automatic tiling), one photo at a time with a bounded queue "
                    "(503 + Retry-After beyond it) and a time limit per photo; an upload takes a place in the "
                    "queue only once it has arrived whole, and connections that stall are closed (--read-timeout, "
                    "--upload-timeout). Listens on this machine only "
                    "unless --host says otherwise (there is no authentication). Needs Flask (pip install flask).")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port to listen on [default: %(default)s]")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to bind; 0.0.0.0 exposes the page to the network [default: %(default)s]")
    common.add_weights_argument(p, "weights to use")
    common.add_device_argument(p)
    common.add_precision_arguments(p, channels_last=False)
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB, metavar="MB",
                   help="largest upload accepted [default: %(default)s]")
    common.add_max_megapixels_argument(p, WEB_MAX_PIXELS / 1e6, "largest image accepted", zero_unlimited=False)
    common.add_max_memory_argument(p, "one de-raining")
    p.add_argument("--job-seconds", type=float, default=DEFAULT_JOB_SECONDS, metavar="S",
                   help="time limit of one photo, checked between tiles (503 past it) [default: %(default)g]")
    p.add_argument("--queue", type=int, default=DEFAULT_MAX_WAITING, metavar="N",
                   help="photos that may wait while one is de-rained; more get 503 with Retry-After "
                        "[default: %(default)s]")
    p.add_argument("--read-timeout", type=float, default=DEFAULT_READ_TIMEOUT, metavar="S",
                   help="longest wait for the next bytes of a request; a connection silent this long is closed "
                        "(408 for an upload) [default: %(default)g]")
    p.add_argument("--upload-timeout", type=float, default=DEFAULT_UPLOAD_TIMEOUT, metavar="S",
                   help="an upload must arrive whole within S seconds of its connection, however it trickles "
                        "(408 past it) [default: %(default)g]")
    p.set_defaults(run=run, prog=p.prog)


def run(args: argparse.Namespace) -> int:
    """Serve the page until Ctrl-C; the exit code.

    Raises:
        common.UsageError: A limit is not positive.
        MgidError: Flask is missing, the weights cannot be loaded, or the address cannot be bound
            (`mgid.derain.web.ListenError`).
    """
    from mgid.derain.web import is_loopback, serve

    if not is_loopback(args.host):
        print(f"{args.prog}: warning: --host {args.host} makes the page reachable from other machines, and it has no "
              f"authentication: anyone who can reach port {args.port} can use this computer's CPU/GPU",
              file=sys.stderr)
    if args.max_upload_mb <= 0:
        raise common.UsageError(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    if args.max_megapixels <= 0 or args.job_seconds <= 0 or args.queue < 0:
        raise common.UsageError("--max-megapixels and --job-seconds must be positive and --queue >= 0, got "
                                f"{args.max_megapixels:g}, {args.job_seconds:g} and {args.queue}")
    if not (args.read_timeout > 0 and args.upload_timeout > 0):
        raise common.UsageError("--read-timeout and --upload-timeout must be positive seconds, got "
                                f"{args.read_timeout:g} and {args.upload_timeout:g}")
    serve(args.host, args.port, args.weights, args.device, args.max_upload_mb, args.precision,
          max_pixels=int(args.max_megapixels * 1e6), job_seconds=args.job_seconds, max_waiting=args.queue,
          max_memory=args.max_memory, read_timeout=args.read_timeout, upload_timeout=args.upload_timeout)
    return common.EXIT_OK
