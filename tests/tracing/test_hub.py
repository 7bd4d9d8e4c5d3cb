"""``vl.load("org/name")`` follows the Hugging Face convention, checked without a network: a fake hub on
127.0.0.1 serves a tiny checkpoint. Online, an id is downloaded into the cache (and loads the very weights of the
folder it came from); with ``HF_HUB_OFFLINE=1`` the cache is read and nothing is requested; an id that is neither
cached nor on the hub is refused with the library's error, at once when offline."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"

#: Run in a fresh process (HF_HUB_OFFLINE and HF_ENDPOINT are read when huggingface_hub is imported).
SCRIPT = r"""
import json, sys
import torch
import vlm_lens as vl

folder, ids = sys.argv[1], sys.argv[2:]
reference = vl.load(folder).model.state_dict()
out = {}
for name in ids:
    try:
        model = vl.load(name).model.state_dict()
        out[name] = {"same_weights": list(model) == list(reference) and all(
            torch.equal(model[k], reference[k]) for k in reference)}
    except vl.VlmLensError as err:
        out[name] = {"error": str(err)}
print("RESULT" + json.dumps(out))
"""


class FakeHub(BaseHTTPRequestHandler):
    """The few endpoints ``from_pretrained`` asks for, serving ``checkpoint`` as the repository ``org/tiny``."""

    checkpoint: Path
    requests: list[str]

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        self.requests.append(f"{self.command} {self.path}")
        path = self.path.split("?")[0]
        parts = path.split("/")
        if path.startswith("/api/models/org/tiny/tree/"):
            return self._send(json.dumps([]).encode(), body, {"Content-Type": "application/json"})
        if path == "/api/models/org/tiny":
            info = {"id": "org/tiny", "sha": COMMIT, "siblings": [{"rfilename": p.name}
                                                                 for p in self.checkpoint.iterdir()]}
            return self._send(json.dumps(info).encode(), body, {"Content-Type": "application/json"})
        file = self.checkpoint / "/".join(parts[5:]) if parts[1:4] == ["org", "tiny", "resolve"] else None
        if file is None or not file.is_file():
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound" if file is not None else "RepoNotFound")
            self.end_headers()
            return
        data = file.read_bytes()
        self._send(data, body, {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": COMMIT})

    def _send(self, data: bytes, body: bool, headers: dict[str, str]) -> None:
        self.send_response(200)
        for key, value in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(key, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hub(checkpoints):
    handler = type("Hub", (FakeHub,), {"checkpoint": Path(checkpoints["mha"]), "requests": []})
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server, handler.requests
    server.shutdown()


def load_in_a_fresh_process(server, cache: Path, offline: bool, folder: str, *ids: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1" if offline else "0", "HF_HUB_CACHE": str(cache),
           "HF_ENDPOINT": f"http://127.0.0.1:{server.server_port}", "HF_HUB_DISABLE_TELEMETRY": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, folder, *ids], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.split("RESULT", 1)[1])


def test_hub_ids_download_unless_offline(hub, checkpoints, tmp_path):
    server, requests = hub
    cache = tmp_path / "cache"
    online = load_in_a_fresh_process(server, cache, False, checkpoints["mha"], "org/tiny", "org/absent")
    assert online["org/tiny"] == {"same_weights": True}
    assert any(r.startswith("GET /org/tiny/resolve/") and r.endswith("/model.safetensors") for r in requests)
    assert "could not be fetched from the Hugging Face hub" in online["org/absent"]["error"]
    assert any("org/absent" in r for r in requests)

    requests.clear()
    offline = load_in_a_fresh_process(server, cache, True, checkpoints["mha"], "org/tiny", "org/absent")
    assert offline["org/tiny"] == {"same_weights": True}  # from the cache just filled
    error = offline["org/absent"]["error"]
    assert "neither a local folder nor a hub id in the local cache" in error and "HF_HUB_OFFLINE" in error
    assert requests == []  # offline: nothing was asked of the network (so no retries either)
