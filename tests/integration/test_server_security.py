"""Audio by reference is refused unless allowlisted, and the allowlist cannot be escaped
(.., symlinks, look-alike prefixes, redirects); oversized bodies are refused before they are
read. Two real `lalm serve` processes on 127.0.0.1 and a loopback file server."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import ClassVar

import pytest

pytest.importorskip("fastapi")

from lalm.testing.server import running_server, save_tiny_checkpoint, wav_bytes

pytestmark = pytest.mark.integration


class _Files(http.server.SimpleHTTPRequestHandler):
    requested: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        _Files.requested.append(self.path)
        if self.path == "/ok/redirect.wav":
            self.send_response(302)
            self.send_header("Location", "/secret/clip.wav")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A loopback HTTP server over a folder with ok/clip.wav and secret/clip.wav."""
    root = tmp_path_factory.mktemp("www")
    for sub in ("ok", "okay", "secret"):
        (root / sub).mkdir()
        (root / sub / "clip.wav").write_bytes(wav_bytes(0.5))
    handler = lambda *a: _Files(*a, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    allowed, outside = tmp_path_factory.mktemp("allowed"), tmp_path_factory.mktemp("outside")
    (allowed / "clip.wav").write_bytes(wav_bytes(0.5))
    (outside / "secret.wav").write_bytes(wav_bytes(0.5))
    (allowed / "link.wav").symlink_to(outside / "secret.wav")
    return allowed, outside


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from conftest import shared_fixture

    return save_tiny_checkpoint(tmp_path_factory.mktemp("m") / "tiny",
                                shared_fixture("qwen2_audio_tokenizer"))


@pytest.fixture(scope="module")
def plain(model, tmp_path_factory):
    """A server without any allowlist, with a 1 MiB body limit."""
    with running_server(model, "--max-body-mb", "1",
                        log=tmp_path_factory.mktemp("log") / "plain.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def allowing(model, files, dirs, tmp_path_factory):
    with running_server(model, "--allow-audio-dir", str(dirs[0]), "--allow-audio-url",
                        f"{files}/ok", log=tmp_path_factory.mktemp("log") / "allow.log") as srv:
        yield srv


def _chat(server, url: str) -> tuple[int, dict]:
    body = {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": [
        {"type": "audio_url", "audio_url": {"url": url}}, {"type": "text", "text": "Hi"}]}]}
    request = urllib.request.Request(f"{server.url}/v1/chat/completions",
                                     json.dumps(body).encode(),
                                     {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_references_are_refused_without_an_allowlist(plain, files, dirs) -> None:
    allowed, _ = dirs
    _Files.requested.clear()
    for url in (str(allowed / "clip.wav"), f"file://{allowed / 'clip.wav'}",
                f"{files}/ok/clip.wav", "/etc/passwd", "ftp://127.0.0.1/clip.wav"):
        status, body = _chat(plain, url)
        assert status == 400, url
        assert body["error"]["param"] == "messages[0].content[0].audio_url.url"
        assert "not allowed" in body["error"]["message"] or "unsupported" in body["error"][
            "message"]
    assert _Files.requested == []  # nothing was fetched


def test_allowlist_admits_only_what_it_names(allowing, files, dirs) -> None:
    allowed, outside = dirs
    assert _chat(allowing, str(allowed / "clip.wav"))[0] == 200
    assert _chat(allowing, f"file://{allowed / 'clip.wav'}")[0] == 200
    assert _chat(allowing, f"{files}/ok/clip.wav")[0] == 200
    _Files.requested.clear()
    for url in (str(outside / "secret.wav"), f"{allowed}/../{outside.name}/secret.wav",
                str(allowed / "link.wav"), "clip.wav", f"{files}/secret/clip.wav",
                f"{files}/okay/clip.wav", f"{files}/ok/../secret/clip.wav",
                f"{files}/ok/%2e%2e/secret/clip.wav", f"{files}/ok/..%5csecret/clip.wav",
                f"http://user@{files[7:]}/ok/clip.wav"):
        status, body = _chat(allowing, url)
        assert status == 400, (url, body)
    assert not any(p.startswith(("/secret", "/okay")) for p in _Files.requested)
    status, body = _chat(allowing, f"{files}/ok/redirect.wav")  # redirect out of the prefix
    assert status == 400 and "allowlist" in body["error"]["message"]
    assert "/secret/clip.wav" not in _Files.requested
    assert _chat(allowing, str(allowed / "missing.wav"))[0] == 400


def _raw(server, head: bytes, body_chunks: list[bytes] = ()) -> tuple[int, float]:
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head)
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except OSError:  # the server answered and closed while we were still sending
            pass
        reply = sock.recv(65536).decode("latin-1")
    return int(reply.split()[1]), time.monotonic() - start


def test_oversized_bodies_are_refused_before_reading(plain) -> None:
    # a declared 1 GB body: refused at once, without sending a byte of it
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nContent-Length: 1000000000\r\n\r\n")
    status, seconds = _raw(plain, head)
    assert status == 413 and seconds < 5
    # a chunked body without a length: refused once it passes 1 MiB
    head = (b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (256 * 1024, b"a" * 256 * 1024)
    status, _ = _raw(plain, head, [chunk] * 8 + [b"0\r\n\r\n"])
    assert status == 413
    with urllib.request.urlopen(f"{plain.url}/health", timeout=10) as response:
        assert response.status == 200
