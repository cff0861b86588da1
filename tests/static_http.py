"""A static file server with single-range support for download tests (the stdlib handler has none), with
an optional delay per request (to catch a run in the middle of its downloads)."""
from __future__ import annotations

import http.server
import threading
import time
from contextlib import contextmanager
from pathlib import Path


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single-range support (the stdlib handler has none)."""
    ranges: list = []
    served: list = []          # paths answered, in order
    delay_s: float = 0.0

    def log_message(self, *a):
        pass

    def do_GET(self):
        if RangeHandler.delay_s:
            time.sleep(RangeHandler.delay_s)
        RangeHandler.served.append(self.path)
        path = self.translate_path(self.path)
        try:
            data = open(path, "rb").read()
        except OSError:
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        RangeHandler.ranges.append(rng)
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            if start >= len(data):                 # as nginx and Apache answer a range past the end
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def serve(root: Path, delay_s: float = 0.0):
    """Serve `root` on 127.0.0.1; yields the base URL."""
    handler = lambda *a, **k: RangeHandler(*a, directory=str(root), **k)
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    RangeHandler.ranges, RangeHandler.served, RangeHandler.delay_s = [], [], delay_s
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        RangeHandler.delay_s = 0.0
