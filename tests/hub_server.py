"""A small HTTP server on 127.0.0.1 that speaks the parts of the Hugging Face Hub API that
`huggingface_hub` and `transformers` use: whoami, create/delete repo, preupload, commit, model
info, tree, paths-info, refs, branches, resolve (with X-Repo-Commit and ETag headers), tokens
and private repos. Repos persist under a directory, so a restarted server sees them again.

Run it in a thread with `HubServer(root).start()`; point the real client at `server.endpoint`
through HF_ENDPOINT (set before `huggingface_hub` is imported, hence tests use subprocesses).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# token -> user; org membership gives write access to the org's repos.
TOKENS = {"hf_alice_token": "alice", "hf_bob_token": "bob", "hf_org_token": "orgadmin"}
ORGS = {"org": {"orgadmin", "alice"}}


def _git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubState:
    """Repos, commits and blobs, persisted as JSON plus content-addressed blob files."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.lock = threading.Lock()
        os.makedirs(os.path.join(root, "blobs"), exist_ok=True)
        self.index_path = os.path.join(root, "repos.json")
        self.repos: dict[str, Any] = {}
        if os.path.exists(self.index_path):
            with open(self.index_path) as handle:
                self.repos = json.load(handle)

    def save(self) -> None:
        tmp = self.index_path + ".tmp"
        with open(tmp, "w") as handle:
            json.dump(self.repos, handle)
        os.replace(tmp, self.index_path)

    def put_blob(self, data: bytes) -> str:
        oid = _git_blob_sha(data)
        path = os.path.join(self.root, "blobs", oid)
        if not os.path.exists(path):
            with open(path, "wb") as handle:
                handle.write(data)
        return oid

    def blob(self, oid: str) -> bytes:
        with open(os.path.join(self.root, "blobs", oid), "rb") as handle:
            return handle.read()

    def resolve(self, repo: dict, revision: str) -> str | None:
        revision = urllib.parse.unquote(revision)
        if revision in repo["branches"]:
            return repo["branches"][revision]
        if revision in repo["commits"]:
            return revision
        return None

    def commit(self, repo: dict, branch: str, message: str, files: dict[str, str | None]) -> str:
        parent = repo["branches"].get(branch)
        tree = dict(repo["commits"][parent]["files"]) if parent else {}
        for path, oid in files.items():
            if oid is None:
                for existing in [p for p in tree if p == path or p.startswith(path.rstrip("/") + "/")]:
                    del tree[existing]
            else:
                tree[path] = oid
        payload = json.dumps({"parent": parent, "files": tree, "message": message, "t": time.time_ns()})
        sha = hashlib.sha1(payload.encode()).hexdigest()
        repo["commits"][sha] = {"parent": parent, "files": tree, "message": message, "date": time.time()}
        repo["branches"][branch] = sha
        return sha


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        if os.environ.get("HUB_SERVER_VERBOSE"):
            super().log_message(format, *args)

    # ----- helpers ---------------------------------------------------------------------
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False):
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None):
        self._send(status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})})

    def _error(self, status: int, code: str | None, message: str, head: bool = False):
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        body = json.dumps({"error": message}).encode()
        self._send(status, body, {"Content-Type": "application/json", **headers}, head=head)

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return TOKENS.get(auth[len("Bearer ") :]) if auth.startswith("Bearer ") else None

    def _can_write(self, user: str | None, repo_id: str) -> bool:
        namespace = repo_id.split("/")[0]
        return user is not None and (user == namespace or user in ORGS.get(namespace, set()))

    def _repo(self, repo_id: str, head: bool = False, write: bool = False) -> dict | None:
        state = self.server.state
        repo = state.repos.get(repo_id)
        user = self._user()
        visible = repo is not None and (not repo["private"] or self._can_write(user, repo_id))
        if not visible:
            # The real Hub answers 401 for a private repo without a token, 404 when it does not exist.
            status = 401 if repo is not None and user is None else 404
            self._error(status, "RepoNotFound", "Repository not found", head=head)
            return None
        if write and not self._can_write(user, repo_id):
            self._error(403, None, f"You don't have the rights to write to {repo_id}", head=head)
            return None
        return repo

    def _file_entry(self, path: str, oid: str) -> dict:
        return {"type": "file", "path": path, "oid": oid, "size": len(self.server.state.blob(oid))}

    # ----- routing ---------------------------------------------------------------------
    def do_HEAD(self):
        self._route("HEAD")

    def do_GET(self):
        self._route("GET")

    def do_POST(self):
        self._route("POST")

    def do_DELETE(self):
        self._route("DELETE")

    def _route(self, method: str) -> None:
        body = self._body() if method in ("POST", "DELETE") else b""
        url = urllib.parse.urlsplit(self.path)
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        with self.server.state.lock:
            try:
                self._dispatch(method, parts, body, urllib.parse.parse_qs(url.query))
            except BrokenPipeError:
                pass

    def _dispatch(self, method: str, parts: list[str], body: bytes, query: dict) -> None:
        state = self.server.state
        if parts[:2] == ["api", "whoami-v2"]:
            user = self._user()
            if user is None:
                return self._error(401, None, "Invalid credentials in Authorization header")
            orgs = [{"name": org} for org, members in ORGS.items() if user in members]
            return self._json(
                200,
                {
                    "type": "user",
                    "name": user,
                    "orgs": orgs,
                    "auth": {"type": "access_token", "accessToken": {"role": "write"}},
                },
            )
        if parts[:2] == ["api", "validate-yaml"] and method == "POST":
            content = json.loads(body or b"{}").get("content", "")
            if not content.startswith("---"):
                return self._json(400, {"error": "README.md metadata must start with ---"})
            return self._json(200, {"warnings": []})
        if parts[:3] == ["api", "repos", "create"] and method == "POST":
            data = json.loads(body or b"{}")
            repo_id = f"{data.get('organization') or self._user()}/{data['name']}"
            if not self._can_write(self._user(), repo_id):
                return self._error(401, None, "You must be authenticated with write rights to create a repo")
            url = f"{self.server.endpoint}/{repo_id}"
            if repo_id in state.repos:
                return self._json(409, {"error": "You already created this model repo", "url": url})
            private = bool(data.get("private")) or data.get("visibility") == "private"
            state.repos[repo_id] = {"private": private, "branches": {}, "commits": {}}
            state.commit(state.repos[repo_id], "main", "initial commit", {".gitattributes": state.put_blob(b"")})
            state.save()
            return self._json(200, {"url": url, "name": repo_id})
        if parts[:3] == ["api", "repos", "delete"] and method == "DELETE":
            data = json.loads(body or b"{}")
            repo_id = f"{data.get('organization') or self._user()}/{data['name']}"
            if self._repo(repo_id, write=True) is None:
                return None
            del state.repos[repo_id]
            state.save()
            return self._json(200, {})
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            return self._model_api(method, f"{parts[2]}/{parts[3]}", parts[4:], body)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(method, f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]))
        return self._error(404, None, f"Not found: {'/'.join(parts)}", head=method == "HEAD")

    def _model_api(self, method: str, repo_id: str, rest: list[str], body: bytes) -> None:
        state = self.server.state
        write = method == "POST" and rest[:1] in (["preupload"], ["commit"], ["branch"])
        repo = self._repo(repo_id, write=write)
        if repo is None:
            return None
        if not rest or rest[0] == "revision":
            revision = rest[1] if len(rest) > 1 else "main"
            sha = state.resolve(repo, revision)
            if sha is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            files = repo["commits"][sha]["files"]
            siblings = [{"rfilename": p, "size": len(state.blob(o))} for p, o in sorted(files.items())]
            modified = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(repo["commits"][sha]["date"]))
            return self._json(
                200,
                {
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": sha,
                    "private": repo["private"],
                    "siblings": siblings,
                    "lastModified": modified,
                    "tags": [],
                    "downloads": 0,
                    "likes": 0,
                    "disabled": False,
                    "gated": False,
                },
            )
        if rest[0] == "refs":
            branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": s} for b, s in repo["branches"].items()]
            return self._json(200, {"branches": branches, "tags": [], "converts": []})
        if rest[0] == "branch" and method == "POST":
            data = json.loads(body or b"{}")
            start = state.resolve(repo, data.get("startingPoint") or "main")
            if rest[1] in repo["branches"]:
                return self._error(409, None, f"Branch {rest[1]} already exists")
            repo["branches"][rest[1]] = start
            state.save()
            return self._json(200, {})
        if rest[0] in ("tree", "paths-info", "preupload", "commit"):
            revision = rest[1] if len(rest) > 1 else "main"
            sha = state.resolve(repo, revision)
            if sha is None and rest[0] != "commit":
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            files = repo["commits"][sha]["files"] if sha else {}
            if rest[0] == "tree":
                prefix = "/".join(rest[2:])
                entries = [
                    self._file_entry(p, o)
                    for p, o in sorted(files.items())
                    if not prefix or p.startswith(prefix.rstrip("/") + "/")
                ]
                return self._json(200, entries)
            if rest[0] == "paths-info":
                data = urllib.parse.parse_qs(body.decode())
                paths = data.get("paths") or json.loads(body or b"{}").get("paths", [])
                return self._json(200, [self._file_entry(p, files[p]) for p in paths if p in files])
            if rest[0] == "preupload":
                data = json.loads(body)
                return self._json(
                    200,
                    {
                        "files": [
                            {
                                "path": f["path"],
                                "uploadMode": "regular",
                                "shouldIgnore": False,
                                "oid": files.get(f["path"]),
                            }
                            for f in data["files"]
                        ]
                    },
                )
            return self._commit(repo_id, repo, urllib.parse.unquote(revision), body)
        return self._error(404, None, f"Not found: {'/'.join(rest)}")

    def _commit(self, repo_id: str, repo: dict, branch: str, body: bytes) -> None:
        state = self.server.state
        if branch not in repo["branches"]:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {branch}")
        message, changes = "", {}
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "header":
                message = value.get("summary", "")
            elif item["key"] == "file":
                changes[value["path"]] = state.put_blob(base64.b64decode(value["content"]))
            elif item["key"] in ("deletedFile", "deletedFolder"):
                changes[value["path"]] = None
            else:
                return self._error(400, None, f"Unsupported commit operation {item['key']}")
        sha = state.commit(repo, branch, message, changes)
        state.save()
        return self._json(
            200,
            {
                "commitUrl": f"{self.server.endpoint}/{repo_id}/commit/{sha}",
                "commitOid": sha,
                "pullRequestUrl": None,
                "success": True,
            },
        )

    def _resolve(self, method: str, repo_id: str, revision: str, path: str) -> None:
        head = method == "HEAD"
        state = self.server.state
        repo = self._repo(repo_id, head=head)
        if repo is None:
            return None
        sha = state.resolve(repo, revision)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head=head)
        oid = repo["commits"][sha]["files"].get(path)
        if oid is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist at {revision}", head=head)
        data = state.blob(oid)
        headers = {"X-Repo-Commit": sha, "ETag": f'"{oid}"', "Content-Type": "application/octet-stream"}
        self.server.downloads.append((repo_id, path, sha))
        return self._send(200, data, headers, head=head)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: HubState
    endpoint: str
    downloads: list


class HubServer:
    """Owns the HTTP server thread; `endpoint` is what HF_ENDPOINT should be set to."""

    def __init__(self, root: str) -> None:
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.state = HubState(root)
        self.httpd.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.httpd.downloads = []
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return self.httpd.endpoint

    @property
    def state(self) -> HubState:
        return self.httpd.state

    def start(self) -> HubServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
