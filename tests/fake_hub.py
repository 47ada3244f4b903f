"""An in-process fake of the Hugging Face Hub's HTTP API, enough for create_repo, upload_folder (regular
uploads through preupload + ndjson commit), the downloads of from_pretrained and folder listings. It records what
arrived."""

import base64
import hashlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "c" * 40


class FakeHub:
    def __init__(self):
        self.files: dict[tuple[str, str], bytes] = {}
        self.requests: list[str] = []
        self.fail_commits = False  # refuse commits as the Hub refuses a token without write access (403, not retried)
        self.stall_commits = 0.0  # seconds a commit waits before its answer: a Hub that stops answering
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._route(self)

            do_GET = do_POST = do_HEAD

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()

    def repo_files(self, repo: str) -> dict[str, bytes]:
        return {path: data for (name, path), data in self.files.items() if name == repo}

    def commits(self, repo: str) -> int:
        return sum(r == f"POST /api/models/{repo}/commit/main" for r in self.requests)

    def _route(self, request):
        path = request.path.split("?")[0]
        self.requests.append(f"{request.command} {path}")
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if request.command == "POST" and length else b""
        if path == "/api/repos/create":
            payload = json.loads(body)
            repo = f"{payload.get('organization') or 'user'}/{payload['name']}"
            return _reply(request, 200, {"url": f"{self.endpoint}/{repo}", "name": repo})
        if path == "/api/validate-yaml":
            return _reply(request, 200, {"errors": [], "warnings": []})
        if "/preupload/" in path:
            files = json.loads(body)["files"]
            modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            return _reply(request, 200, {"files": modes})
        if "/commit/" in path:
            time.sleep(self.stall_commits)
            if self.fail_commits:
                return _reply(request, 403, {"error": "You don't have the rights to create a commit here"})
            repo = path.split("/api/models/")[1].split("/commit/")[0]
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.files[(repo, item["value"]["path"])] = base64.b64decode(item["value"]["content"])
            return _reply(request, 200, {"commitUrl": f"{self.endpoint}/{repo}/commit/{COMMIT}", "commitOid": COMMIT})
        if "/resolve/" in path:
            repo, rest = path.lstrip("/").split("/resolve/")
            data = self.files.get((repo, rest.split("/", 1)[1]))
            if data is None:
                return _reply(request, 404, {"error": "entry not found"}, {"X-Error-Code": "EntryNotFound"})
            headers = {"ETag": f'"{hashlib.sha1(data).hexdigest()}"', "X-Repo-Commit": COMMIT}
            return _reply(request, 200, data, headers, "application/octet-stream")
        if path.startswith("/api/models/") and "/tree/" in path:  # list_repo_tree: the files in one folder
            repo, rest = path[len("/api/models/") :].split("/tree/")
            folder = rest.partition("/")[2].strip("/")
            entries = [{"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                       for name, data in self.repo_files(repo).items() if name.rpartition("/")[0] == folder]  # fmt: skip
            if not entries:
                return _reply(request, 404, {"error": "entry not found"}, {"X-Error-Code": "EntryNotFound"})
            return _reply(request, 200, entries)
        if path.startswith("/api/models/"):
            repo = path[len("/api/models/") :].split("/revision/")[0]
            siblings = [{"rfilename": name} for name in self.repo_files(repo)]
            return _reply(request, 200, {"id": repo, "sha": COMMIT, "siblings": siblings})
        return _reply(request, 404, {"error": f"the fake Hub has no route {path}"})


def _reply(request, status, body, headers=None, content_type="application/json"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request.send_response(status)
    request.send_header("Content-Type", content_type)
    request.send_header("Content-Length", str(len(data)))
    for key, value in (headers or {}).items():
        request.send_header(key, value)
    request.end_headers()
    if request.command != "HEAD":
        request.wfile.write(data)
