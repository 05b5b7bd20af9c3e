"""deploy/nginx/orfeas.conf in a real nginx in front of a real `orfeas serve`: jobs and progress sockets pass,
oversized headers and bodies and slow clients are stopped at the proxy. Skipped where nginx is not installed."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
import websockets.sync.client as ws_client

from tests.e2e.server import Server, free_port, wait_for
from tests.synthetic import EXAMPLES, REPO

CONF = REPO / "deploy" / "nginx" / "orfeas.conf"
CHAIR = (EXAMPLES / "chair.png").read_bytes()


def local_conf(api_port: int, proxy_port: int) -> str:
    """The shipped file with TLS swapped for a plain loopback port and the upstream pointed at the test server."""
    text = CONF.read_text()
    text = text.replace("listen 443 ssl http2;", f"listen 127.0.0.1:{proxy_port};")
    text = re.sub(r"\n\s*ssl_certificate\S* [^\n]*", "", text)
    text = text.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{api_port};")
    return text.replace("server_name studio.example.org;", "server_name 127.0.0.1;")


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    nginx = shutil.which("nginx")
    if nginx is None:
        pytest.skip("nginx is not installed (apt-get install nginx)")
    root = tmp_path_factory.mktemp("proxy")
    server = Server(root / "data", env={"ORFEAS_ALLOWED_HOSTS": "127.0.0.1"}).start()
    port = free_port()
    (root / "orfeas.conf").write_text(local_conf(server.port, port))
    (root / "nginx.conf").write_text(
        f"daemon off; pid {root}/nginx.pid; error_log {root}/error.log; events {{}}\n"
        f"http {{ access_log off; client_body_temp_path {root}/body; proxy_temp_path {root}/proxy;\n"
        f"fastcgi_temp_path {root}/f; uwsgi_temp_path {root}/u; scgi_temp_path {root}/s;\n"
        f"include {root}/orfeas.conf; }}\n"
    )
    checked = subprocess.run([nginx, "-t", "-p", str(root), "-c", str(root / "nginx.conf")], capture_output=True)
    assert checked.returncode == 0, checked.stderr.decode()
    process = subprocess.Popen([nginx, "-p", str(root), "-c", str(root / "nginx.conf")], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "nginx did not start"
            time.sleep(0.1)
    yield server, f"http://127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=10)
    server.stop()


def test_jobs_and_progress_sockets_pass_through_the_proxy(proxied):
    _server, url = proxied
    with httpx.Client(base_url=url, timeout=60) as client:
        response = client.post("/api/jobs", files={"image": ("chair.png", CHAIR, "image/png")}, data={"faces": "2000"})
        assert response.status_code == 202, response.text
        job_id = response.json()["jobs"][0]["id"]
        with ws_client.connect(url.replace("http", "ws") + f"/api/jobs/{job_id}/events", open_timeout=30) as sock:
            events = []
            while not events or events[-1]["type"] != "end":
                events.append(json.loads(sock.recv(timeout=120)))
        assert events[-1]["status"] == "succeeded"
        wait_for(client, [job_id])
        assert client.get(f"/api/jobs/{job_id}/result.glb").content[:4] == b"glTF"


def test_the_proxy_stops_huge_headers_and_bodies_before_the_api(proxied):
    _server, url = proxied
    response = httpx.get(url + "/api/jobs", headers={"X-Big": "a" * 2**20})
    assert response.status_code in (400, 431, 494)
    body = httpx.post(url + "/api/jobs", content=b"\0" * (26 * 2**20), headers={"Content-Type": "application/x"})
    assert body.status_code == 413


def test_the_proxy_cuts_off_slow_headers(proxied):
    _server, url = proxied
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        sock.settimeout(30)
        started = time.monotonic()
        answer = b""
        try:
            while data := sock.recv(4096):
                answer += data
        except (ConnectionResetError, TimeoutError):
            pass
    assert time.monotonic() - started < 20
    assert not answer.startswith(b"HTTP/1.1 200")


def test_the_config_is_the_one_docs_describe():
    guide = (REPO / "docs" / "DEPLOY.md").read_text()
    assert "deploy/nginx/orfeas.conf" in guide
    assert Path(CONF).exists()
