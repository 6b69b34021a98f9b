"""Tests of the link shortener through its HTTP interface."""

import http.client
import json
import threading

import pytest
from backend.app import serve, shorten


@pytest.fixture
def server():
    httpd = serve()
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()


def request(port, method, path, body=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request(method, path, body=json.dumps(body) if body is not None else None)
    response = conn.getresponse()
    return response.status, response.getheader("Location"), response.read()


def test_create_then_redirect(server):
    status, _, body = request(server, "POST", "/", {"url": "https://example.com/a"})
    assert status == 201
    code = json.loads(body)["code"]
    status, location, _ = request(server, "GET", f"/{code}")
    assert (status, location) == (302, "https://example.com/a")


def test_unknown_code_is_404(server):
    assert request(server, "GET", "/nope")[0] == 404


def test_bad_url_is_refused(server):
    assert request(server, "POST", "/", {"url": "ftp://x"})[0] == 422
    with pytest.raises(ValueError):
        shorten("javascript:alert(1)")
