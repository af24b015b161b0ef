"""A local HTTP server answering the Hugging Face hub's endpoints for one dataset repository, so
the real ``huggingface_hub`` client can download from it in tests (this machine has no hub).

It answers what ``snapshot_download(repo_type="dataset")`` asks (huggingface_hub 1.x / 2.x):
``/api/datasets/<repo>/revision/<rev>`` (the commit), ``/api/datasets/<repo>/tree/<commit>``
(the file list), and HEAD / GET ``/datasets/<repo>/resolve/<commit>/<file>`` (the files).
Anything else is a 404 with the hub's ``RepoNotFound`` error code. ``requests`` records each
(method, path) asked.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HubServer:
    def __init__(self, repo_id: str, files: dict[str, bytes], commit: str = "a" * 40):
        self.repo_id, self.files, self.commit = repo_id, files, commit
        self.requests: list[tuple[str, str]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server._answer(self, head=False)

            def do_HEAD(self) -> None:
                server._answer(self, head=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _answer(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        self.requests.append((h.command, h.path))
        path = h.path.split("?")[0]
        repo = self.repo_id
        if path.startswith(f"/api/datasets/{repo}/revision/"):
            info = {"id": repo, "sha": self.commit, "siblings": [{"rfilename": f} for f in self.files]}
            return _send(h, 200, json.dumps(info).encode(), {"Content-Type": "application/json"}, head)
        if path.startswith(f"/api/datasets/{repo}/tree/"):
            tree = [{"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                    for f, b in self.files.items()]
            return _send(h, 200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, head)
        prefix = f"/datasets/{repo}/resolve/{self.commit}/"
        if path.startswith(prefix) and path[len(prefix):] in self.files:
            body = self.files[path[len(prefix):]]
            etag = '"' + hashlib.sha1(body).hexdigest() + '"'
            return _send(h, 200, body, {"X-Repo-Commit": self.commit, "ETag": etag}, head)
        return _send(h, 404, b'{"error": "Repository not found"}',
                     {"X-Error-Code": "RepoNotFound", "Content-Type": "application/json"}, head)


def _send(h: BaseHTTPRequestHandler, code: int, body: bytes, headers: dict[str, str], head: bool) -> None:
    h.send_response(code)
    for k, v in headers.items():
        h.send_header(k, v)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    if not head:
        h.wfile.write(body)
