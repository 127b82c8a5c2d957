"""Audio by reference is refused unless allowlisted, and the allowlist cannot be escaped
(.., symlinks, look-alike prefixes, redirects); malformed references and seeds are typed 4xx
errors naming the input; a slow download is cut at its total deadline and a local file over
the body limit is not read; oversized bodies are refused before they are read; half-sent
requests do not hold connections; a foreign Host header is refused; --protect-all guards every
route. Real `lalm serve` processes on 127.0.0.1 and a loopback file server."""

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
        if self.path == "/ok/drip.wav":  # one byte every 0.2 s: 60 s for the whole file
            self.send_response(200)
            self.send_header("Content-Length", "300")
            self.end_headers()
            try:
                for _ in range(300):
                    self.wfile.write(b"R")
                    self.wfile.flush()
                    time.sleep(0.2)
            except OSError:  # the lalm server gave up and closed
                pass
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
    """A server without any allowlist, with a 1 MiB body limit and a 2-s read timeout."""
    with running_server(model, "--max-body-mb", "1", "--read-timeout", "2",
                        log=tmp_path_factory.mktemp("log") / "plain.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def allowing(model, files, dirs, tmp_path_factory):
    with running_server(model, "--allow-audio-dir", str(dirs[0]), "--allow-audio-url",
                        f"{files}/ok", "--max-body-mb", "1", "--fetch-timeout", "2",
                        log=tmp_path_factory.mktemp("log") / "allow.log") as srv:
        yield srv


def _chat(server, url: str, **extra: object) -> tuple[int, dict]:
    body = {"model": "tiny", "max_tokens": 2, **extra, "messages": [{"role": "user", "content": [
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


def _raw(server, head: bytes, body_chunks: list[bytes] = ()) -> int:
    """The HTTP status the server answers to a hand-written request."""
    # generous: a busy CI machine is slow, and a server that waited for the body would answer
    # 408 (its read timeout), never 413, so the status alone tells
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(head)
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except OSError:  # the server answered and closed while we were still sending
            pass
        reply = sock.recv(65536).decode("latin-1")
    return int(reply.split()[1])


def test_oversized_bodies_are_refused_before_reading(plain) -> None:
    # a declared 1 GB body: refused at once, without sending a byte of it
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000000000\r\n\r\n")
    assert _raw(plain, head) == 413  # and not one byte of the body was sent
    # a chunked body without a length: refused once it passes 1 MiB
    head = (b"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (256 * 1024, b"a" * 256 * 1024)
    status = _raw(plain, head, [chunk] * 8 + [b"0\r\n\r\n"])
    assert status == 413
    with urllib.request.urlopen(f"{plain.url}/health", timeout=10) as response:
        assert response.status == 200


AUDIO_URL = "messages[0].content[0].audio_url.url"


@pytest.mark.parametrize("case", [
    "seed 2**64", "negative seed", "port out of range", "port not a number", "CR LF in URL",
    "NUL in URL", "broken IPv6 host", "NUL in path", "NUL in file URL", "300-char file name",
    "path past PATH_MAX"])
def test_malformed_inputs_are_typed_4xx_naming_the_input(allowing, files, dirs, case) -> None:
    allowed, _ = dirs
    host = files[len("http://"):].rsplit(":", 1)[0]
    clip, param, extra = str(allowed / "clip.wav"), AUDIO_URL, {}
    url = {
        "seed 2**64": clip, "negative seed": clip,
        "port out of range": f"http://{host}:99999/ok/clip.wav",
        "port not a number": f"http://{host}:eighty/ok/clip.wav",
        "CR LF in URL": f"{files}/ok/clip.wav\r\nX-Injected: 1",
        "NUL in URL": f"{files}/ok/cl\x00ip.wav",
        "broken IPv6 host": "http://[::1/ok/clip.wav",
        "NUL in path": str(allowed / "cl\x00ip.wav"),
        "NUL in file URL": f"file://{allowed}/cl%00ip.wav",
        "300-char file name": str(allowed / ("a" * 296 + ".wav")),
        "path past PATH_MAX": str(allowed) + "/a" * 2100 + ".wav",
    }[case]
    if "seed" in case:
        extra = {"seed": 2**64 if case == "seed 2**64" else -1, "temperature": 1.0}
        param = "seed"
    status, body = _chat(allowing, url, **extra)
    assert 400 <= status < 500, (case, status, body)
    assert body["error"]["type"] == "invalid_request_error", body
    assert body["error"]["param"] == param, body
    assert _chat(allowing, clip)[0] == 200  # and the server goes on


def test_a_local_file_over_the_body_limit_is_not_read(allowing, dirs) -> None:
    allowed, _ = dirs
    big = allowed / "big.wav"
    with open(big, "wb") as f:  # 2 MiB, sparse: the server's limit is 1 MiB
        f.truncate(2 * 2**20)
    status, body = _chat(allowing, str(big))
    assert (status, body["error"]["code"]) == (413, "audio_too_large"), body
    assert body["error"]["param"] == AUDIO_URL


def test_a_dripping_download_is_cut_at_its_total_deadline(allowing, files) -> None:
    # the file server sends a byte every 0.2 s (60 s in all); the deadline is 2 s in all
    status, body = _chat(allowing, f"{files}/ok/drip.wav")  # _chat waits 60 s at most
    assert (status, body["error"]["code"]) == (400, "audio_fetch_failed"), body
    assert "within 2 s" in body["error"]["message"]


def _health_status(server, host: str) -> int:
    head = f"GET /health HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head)
        return int(sock.recv(65536).split()[1])


def test_a_foreign_host_header_is_refused(plain) -> None:
    assert _health_status(plain, "evil.example") == 400  # a DNS-rebinding page's host
    assert _health_status(plain, f"evil.example:{plain.port}") == 400
    for host in (f"127.0.0.1:{plain.port}", f"localhost:{plain.port}", "LOCALHOST", "[::1]"):
        assert _health_status(plain, host) == 200, host


@pytest.mark.parametrize("sent", [b"POST /v1/chat/compl", b"GET /health HTTP/1.1\r\nHo",
                                  b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                  b"Content-Length: 100\r\n\r\n{\"mod"])
def test_a_half_sent_request_does_not_hold_its_connection(plain, sent: bytes) -> None:
    # the server's read timeout is 2 s; a server that never closes fails the 30-s recv
    with socket.create_connection(("127.0.0.1", plain.port), timeout=30) as sock:
        sock.sendall(sent)
        reply = b""
        while chunk := sock.recv(65536):  # until the server closes the connection
            reply += chunk
    assert reply == b"" or reply.split()[1] == b"408", reply  # closed, or told why
    with urllib.request.urlopen(f"{plain.url}/health", timeout=30) as response:
        assert response.status == 200


def test_protect_all_guards_every_route(model, tmp_path_factory) -> None:
    with running_server(model, "--api-key", "k3y", "--protect-all", api_key="k3y",
                        log=tmp_path_factory.mktemp("log") / "guarded.log") as srv:
        for path in ("/health", "/metrics", "/openapi.json", "/v1/models", "/"):
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(f"{srv.url}{path}", timeout=30)
            assert info.value.code == 401, path
            request = urllib.request.Request(f"{srv.url}{path}",
                                             headers={"authorization": "bearer k3y"})
            with urllib.request.urlopen(request, timeout=30) as response:
                assert response.status == 200, path
