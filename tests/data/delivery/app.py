"""A tiny link-shortener HTTP service (standard library only)."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LINKS: dict[str, str] = {}


def shorten(url: str) -> str:
    """Store ``url`` and return its short code."""
    if not url.startswith(("http://", "https://")):
        raise ValueError("only http(s) URLs can be shortened")
    code = format(len(LINKS) + 1, "x")
    LINKS[code] = url
    return code


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        try:
            url = json.loads(self.rfile.read(length))["url"]
            code = shorten(url)
        except (ValueError, KeyError, TypeError):
            self.send_response(422)
            self.end_headers()
            return
        body = json.dumps({"code": code}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = LINKS.get(self.path.lstrip("/"))
        self.send_response(302 if url else 404)
        if url:
            self.send_header("Location", url)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        return


def serve(port: int = 0) -> ThreadingHTTPServer:
    return ThreadingHTTPServer(("127.0.0.1", port), Handler)
