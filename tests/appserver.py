"""A tiny application for engine tests: serves /healthz and /version from its work dir.

Started by the deploy script of the test config repo (``python3 appserver.py PORT``);
``/healthz`` answers 500 while a file named ``unhealthy`` exists in the directory.
"""

import http.server
import os
import sys


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if self.path == "/healthz":
            code = 500 if os.path.exists("unhealthy") else 200
            body = b"bad\n" if code == 500 else b"ok\n"
        elif self.path == "/version":
            with open("version", "rb") as f:
                code, body = 200, f.read()
        else:
            code, body = 404, b""
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


http.server.ThreadingHTTPServer.allow_reuse_address = True
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
