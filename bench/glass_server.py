#!/usr/bin/env python3
"""bench/browser.sh's page server: serves bench/web (hls.js from crates/entry/web/vendor, the
copy the entry servers ship) on 127.0.0.1, a free port, and appends each POST /result body as a
line to RESULTS. Prints the port on stdout once listening.

    glass_server.py RESULTS
"""
import http.server
import os
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))
WEB = os.path.join(ROOT, "web")
HLS = os.path.join(ROOT, "..", "crates", "entry", "web", "vendor", "hls.min.js")
FILES = {
    "/glass.html": (os.path.join(WEB, "glass.html"), "text/html"),
    "/glass.js": (os.path.join(WEB, "glass.js"), "text/javascript"),
    "/vendor/mpegts.min.js": (os.path.join(WEB, "vendor", "mpegts.min.js"), "text/javascript"),
    "/vendor/hls.min.js": (HLS, "text/javascript"),
}


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path not in FILES:
            self.send_error(404)
            return
        name, ctype = FILES[path]
        with open(name, "rb") as f:
            body = f.read()
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        if self.path != "/result":
            self.send_error(404)
            return
        n = min(int(self.headers.get("Content-Length", "0")), 1 << 16)
        body = self.rfile.read(n).decode("utf-8", "replace").replace("\n", " ")
        with open(sys.argv[1], "a") as f:
            f.write(body + "\n")
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
