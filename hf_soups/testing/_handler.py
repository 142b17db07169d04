"""The HTTP side of LocalHub: routing, auth, Hub-shaped JSON and headers, request log and fault injection.

Hand-written on `http.server` because no library serves the Hugging Face Hub protocol (the Hub itself is
closed source, and `huggingface_hub` only ships the client side). The protocol spoken here is the one the real
`huggingface_hub` client uses, read from its source; see ``/work/shared/notes/hub-protocol.md``.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import json
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

from . import _repo_json as views
from ._store import (
    AddFile,
    BadRequest,
    Conflict,
    DeletePath,
    HubStore,
    Repo,
    RepoNotFound,
    StoreError,
    choose_upload_mode,
    decode_inline_file,
)
from .faults import FaultRule, Faults

logger = logging.getLogger("hf_soups.testing.server")

_KINDS = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_CHUNK = 1 << 20


@dataclass
class RequestRecord:
    """One request served by the hub, as kept in ``hub.requests``.

    A record is logged when the request arrives, so a request still being answered (a ``delay`` fault) shows
    with status 0; its fields are final before the client receives the end of the answer.

    Attributes:
        method: HTTP method.
        path: the percent-decoded URL path (no query string).
        query: the raw query string.
        repo_type: ``"model"``, ``"dataset"`` or ``"space"`` when the URL names a repo, else None.
        repo_id: the repo named by the URL, if any.
        revision: the revision named by the URL (decoded, e.g. ``refs/pr/1``), if any.
        filename: the file named by a resolve URL, if any.
        range: the request's ``Range`` header, if any.
        status: the HTTP status answered (0 while not answered yet, or when the connection was dropped before
            any answer).
        bytes_sent: body bytes written (less than the body when a fault dropped the connection).
        fault: the kind of the injected fault that fired on this request, if any.
        started: `time.time()` when the request arrived.
        duration: seconds spent answering it.
    """

    method: str
    path: str
    query: str = ""
    repo_type: Optional[str] = None
    repo_id: Optional[str] = None
    revision: Optional[str] = None
    filename: Optional[str] = None
    range: Optional[str] = None
    status: int = 0
    bytes_sent: int = 0
    fault: Optional[str] = None
    started: float = field(default_factory=time.time)
    duration: float = 0.0

    @property
    def is_download(self) -> bool:
        """A GET of a file's full body through a resolve URL (status 200, not a 206 range)."""
        return self.method == "GET" and self.filename is not None and self.status == 200


class RequestLog:
    """A thread-safe, append-only list of :class:`RequestRecord`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: List[RequestRecord] = []

    def append(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def snapshot(self) -> List[RequestRecord]:
        with self._lock:
            return list(self._records)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()


@dataclass
class HubContext:
    """What the request handlers share: storage, credentials, faults, log and the public endpoint."""

    store: HubStore
    token: str
    user: str
    faults: Faults
    log: RequestLog
    endpoint: str = ""
    secret: bytes = b""

    def sign(self, oid: str, size: int) -> str:
        return hmac.new(self.secret, f"{oid}:{size}".encode(), hashlib.sha256).hexdigest()[:32]


@dataclass
class Reply:
    """An HTTP answer: a status, headers and either in-memory bytes or a slice of a stored file."""

    status: int
    headers: Dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    file: Optional[Path] = None
    offset: int = 0
    length: int = 0

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: Optional[Dict[str, str]] = None) -> "Reply":
        return cls(status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(data, default=str).encode())

    @classmethod
    def error(cls, status: int, message: str, code: Optional[str] = None, **headers: str) -> "Reply":
        extra = {"X-Error-Message": message.replace("\n", " "), **headers}
        if code:
            extra["X-Error-Code"] = code
        return cls.json({"error": message}, status, extra)

    @property
    def body_length(self) -> int:
        return self.length if self.file is not None else len(self.body)


class Unauthorized(StoreError):
    status = 401


class Forbidden(StoreError):
    status = 403


class GatedRepo(StoreError):
    status, code = 403, "GatedRepo"


_REPO = r"(?P<repo>[^/]+(?:/[^/]+)?)"
_API = r"^/api/(?P<kind>models|datasets|spaces)/" + _REPO
_GIT = r"^/(?:(?P<kind>datasets|spaces)/)?" + _REPO
_ROUTES: List[Tuple[Tuple[str, ...], "re.Pattern[str]", str]] = [
    (methods, re.compile(pattern), name)
    for methods, pattern, name in [
        (("GET",), r"^/api/whoami-v2$", "whoami"),
        (("POST",), r"^/api/repos/create$", "create_repo"),
        (("DELETE",), r"^/api/repos/delete$", "delete_repo"),
        (("POST",), r"^/api/validate-yaml$", "validate_yaml"),
        (("GET",), _API + r"(?:/revision/(?P<rev>[^/]+))?$", "repo_info"),
        (("GET",), _API + r"/refs$", "refs"),
        (("GET",), _API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?$", "tree"),
        (("POST",), _API + r"/paths-info/(?P<rev>[^/]+)$", "paths_info"),
        (("GET",), _API + r"/commits/(?P<rev>[^/]+)$", "commits"),
        (("POST",), _API + r"/preupload/(?P<rev>[^/]+)$", "preupload"),
        (("POST",), _API + r"/commit/(?P<rev>[^/]+)$", "commit"),
        (("POST", "DELETE"), _API + r"/branch/(?P<rev>[^/]+)$", "branch"),
        (("POST", "DELETE"), _API + r"/tag/(?P<rev>[^/]+)$", "tag"),
        (("PUT",), _API + r"/settings$", "settings"),
        (("POST",), _GIT + r"\.git/info/lfs/objects/batch$", "lfs_batch"),
        (("PUT",), r"^/_localhub/lfs/(?P<oid>[0-9a-f]{64})$", "lfs_upload"),
        (("GET", "HEAD"), _GIT + r"/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),
    ]
]


def parse_range(header: Optional[str], size: int) -> Optional[Tuple[int, int]]:
    """Parse a single-range ``Range: bytes=...`` header into an inclusive (start, end) clamped to `size`.

    Returns None when there is no usable single range (the whole body is then sent with 200).

    Raises:
        ValueError: when the range is not satisfiable (the server answers 416).
    """
    if not header or "," in header:
        return None
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header, re.IGNORECASE)
    if not match or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # suffix range: the last N bytes
        length = int(last)
        if length == 0:
            raise ValueError("empty suffix range")
        return max(size - length, 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise ValueError("range not satisfiable")
    return start, end


class HubRequestHandler(BaseHTTPRequestHandler):
    """Serves one connection; HTTP/1.1 keep-alive, every answer carries a Content-Length."""

    protocol_version = "HTTP/1.1"
    server_version = "LocalHub"
    timeout = 120  # seconds an idle keep-alive connection is kept open
    server: "HubHTTPServer"

    # ------------------------------------------------------------- plumbing
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - signature of the base class
        logger.debug("%s - %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    @property
    def ctx(self) -> HubContext:
        return self.server.context

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        self._query = parse_qs(split.query)
        self._body_done = False
        self._record = RequestRecord(self.command, unquote(split.path), split.query, range=self.headers.get("Range"))
        # Logged on arrival, and every field is final before the client can read the last byte of the answer:
        # a test that reads `hub.requests` right after a call returns sees that call's requests complete.
        self.ctx.log.append(self._record)
        try:
            rule = self.ctx.faults.take(self.command, self._record.path)
            if rule is not None:
                self._record.fault = rule.kind
                if rule.kind == "delay":
                    time.sleep(rule.seconds)
            if rule is not None and rule.kind == "error":
                self._drain()
                headers = {"Retry-After": str(rule.retry_after)} if rule.retry_after is not None else {}
                self._route(split.path, record_only=True)
                reply = Reply.error(rule.status, rule.message, **headers)
            else:
                reply = self._route(split.path)
            self._drain()
            self._send(reply, rule if rule is not None and rule.kind == "drop" else None)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout):
            self.close_connection = True
        finally:
            self._record.duration = time.time() - self._record.started

    def _route(self, raw_path: str, record_only: bool = False) -> Reply:
        for methods, pattern, name in _ROUTES:
            match = pattern.match(raw_path)
            if match is None or self.command not in methods:
                continue
            groups = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
            rec = self._record
            if "repo" in groups:
                rec.repo_type, rec.repo_id = _KINDS.get(groups.get("kind", "models"), "model"), groups["repo"]
            rec.revision = groups.get("rev")
            if name == "resolve":
                rec.filename = groups.get("path")
            if record_only:
                return Reply(204)
            try:
                return getattr(self, f"_h_{name}")(**groups)
            except StoreError as err:
                return Reply.error(err.status, err.message, err.code, **err.headers)
            except Exception as err:  # a bug of the server: answer 500 with the reason, keep serving
                logger.exception("LocalHub failed on %s %s", self.command, self.path)
                return Reply.error(500, f"LocalHub internal error: {err!r}")
        return Reply.error(404, f"LocalHub does not serve {self.command} {unquote(raw_path)}")

    # ----------------------------------------------------------------- body
    def _body_chunks(self) -> Iterator[bytes]:
        """Yield the request body once (Content-Length or chunked transfer encoding)."""
        if self._body_done:
            return
        self._body_done = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                yield from self._read_exact(size)
                self.rfile.readline()
        else:
            yield from self._read_exact(int(self.headers.get("Content-Length") or 0))

    def _read_exact(self, length: int) -> Iterator[bytes]:
        while length > 0:
            data = self.rfile.read(min(length, _CHUNK))
            if not data:
                raise ConnectionResetError("client closed the connection mid-body")
            length -= len(data)
            yield data

    def _body(self) -> bytes:
        return b"".join(self._body_chunks())

    def _json_body(self) -> Any:
        try:
            return json.loads(self._body() or b"{}")
        except json.JSONDecodeError as err:
            raise BadRequest(f"Malformed JSON body: {err}") from err

    def _drain(self) -> None:
        for _ in self._body_chunks():
            pass

    # ----------------------------------------------------------------- send
    def _send(self, reply: Reply, drop: Optional[FaultRule]) -> None:
        total = reply.body_length
        limit = total
        if drop is not None:
            if self.command == "HEAD" or total == 0:
                self.close_connection = True  # hang up without answering
                return
            limit = min(drop.after_bytes if drop.after_bytes is not None else total // 2, total)
        self._record.status = reply.status
        self.send_response(reply.status)
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(total))
        if drop is not None:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self._write_body(reply, limit)
        self.wfile.flush()
        if drop is not None:
            self.close_connection = True

    def _write_body(self, reply: Reply, limit: int) -> None:
        """Write up to `limit` body bytes; `bytes_sent` counts each chunk before it goes out (see `_dispatch`)."""
        chunks: Iterator[bytes]
        if reply.file is None:
            chunks = iter([reply.body[:limit]])
        else:
            chunks = self._file_chunks(reply.file, reply.offset, limit)
        for data in chunks:
            self._record.bytes_sent += len(data)
            try:
                self.wfile.write(data)
            except OSError:
                self._record.bytes_sent -= len(data)
                raise

    @staticmethod
    def _file_chunks(path: Path, offset: int, limit: int) -> Iterator[bytes]:
        with open(path, "rb") as handle:
            handle.seek(offset)
            left = limit
            while left > 0:
                data = handle.read(min(_CHUNK, left))
                if not data:
                    return
                left -= len(data)
                yield data

    # ----------------------------------------------------------------- auth
    def _token(self) -> Optional[str]:
        header = self.headers.get("Authorization", "")
        return header[7:].strip() if header.lower().startswith("bearer ") else None

    def _authorized(self) -> bool:
        token = self._token()
        return token is not None and hmac.compare_digest(token, self.ctx.token)

    def _require_write(self) -> None:
        if self._authorized():
            return
        if self._token() is None:
            raise Unauthorized("You must be authenticated to do this: pass the LocalHub write token (hub.token).")
        raise Unauthorized("Invalid credentials in Authorization header")

    def _repo(self, kind: str, repo: str, *, write: bool = False) -> Repo:
        """The repo named by the URL, checking visibility (private repos are invisible without the token)."""
        if write:
            self._require_write()
        try:
            found = self.ctx.store.get_repo(_KINDS[kind], repo)
        except RepoNotFound as err:
            # Like the Hub: without credentials a missing repo answers 401 (it cannot say whether the repo is
            # missing or private); the client raises RepositoryNotFoundError either way.
            if not self._authorized():
                err.status = 401
            raise
        if found.private and not self._authorized():
            err = RepoNotFound(f"Repository Not Found for {kind}/{repo}.")
            err.status = 401 if self._token() is None else 404
            raise err
        return found

    def _url(self, repo: Repo, *parts: str) -> str:
        return "/".join([self.ctx.endpoint, _URL_PREFIX[repo.repo_type] + repo.repo_id, *parts])

    # -------------------------------------------------------------- account
    def _h_whoami(self) -> Reply:
        if not self._authorized():
            return Reply.error(401, "Invalid credentials in Authorization header")
        return Reply.json(views.whoami(self.ctx.user))

    def _h_validate_yaml(self) -> Reply:
        body = self._json_body()
        try:
            data = views.front_matter(str(body.get("content", ""))) or {}
        except ValueError as err:
            return Reply.json({"errors": [{"message": str(err)}]}, 400)
        errors = views.validate_metadata(data)
        if errors:
            return Reply.json({"errors": [{"message": e} for e in errors]}, 400)
        return Reply.json({"errors": [], "warnings": []})

    # ---------------------------------------------------------------- repos
    def _h_create_repo(self) -> Reply:
        self._require_write()
        body = self._json_body()
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or self.ctx.user}/{body.get('name', '')}"
        private = body.get("visibility") == "private" or bool(body.get("private"))
        try:
            repo = self.ctx.store.create_repo(repo_type, repo_id, private=private, sdk=body.get("sdk"))
        except Conflict as err:
            # The Hub's 409 carries the repo url too: `HfApi.create_repo(exist_ok=True)` reads `url` from it.
            existing = self.ctx.store.get_repo(repo_type, repo_id)
            return Reply.json({"error": err.message, "url": self._url(existing)}, 409,
                              {"X-Error-Message": err.message})
        return Reply.json({"url": self._url(repo), "name": repo.repo_id, "id": repo.repo_id})

    def _h_delete_repo(self) -> Reply:
        self._require_write()
        body = self._json_body()
        repo_id = f"{body.get('organization') or self.ctx.user}/{body.get('name', '')}"
        self.ctx.store.delete_repo(body.get("type") or "model", repo_id)
        return Reply.json({})

    def _h_settings(self, kind: str, repo: str) -> Reply:
        found = self._repo(kind, repo, write=True)
        body = self._json_body()
        private = {"private": True, "public": False}.get(body.get("visibility"), body.get("private"))
        self.ctx.store.update_settings(found, private=private, gated=body.get("gated"))
        return Reply.json({})

    def _h_repo_info(self, kind: str, repo: str, rev: str = "main") -> Reply:
        found = self._repo(kind, repo)
        commit = self.ctx.store.resolve(found, rev)
        blobs = self._flag("blobs")
        return Reply.json(views.repo_info(self.ctx.store, found, commit, blobs=blobs))

    def _h_refs(self, kind: str, repo: str) -> Reply:
        return Reply.json(views.refs(self._repo(kind, repo)))

    def _h_tree(self, kind: str, repo: str, rev: str, path: str = "") -> Reply:
        found = self._repo(kind, repo)
        commit = self.ctx.store.resolve(found, rev)
        entries = views.tree(self.ctx.store, found, commit, path.strip("/"), recursive=self._flag("recursive"),
                             expand=self._flag("expand"))
        return Reply.json(entries)

    def _h_paths_info(self, kind: str, repo: str, rev: str) -> Reply:
        found = self._repo(kind, repo)
        commit = self.ctx.store.resolve(found, rev)
        form = parse_qs(self._body().decode())
        if not form and self.headers.get("Content-Type", "").startswith("application/json"):
            form = {k: v if isinstance(v, list) else [v] for k, v in json.loads(self._body() or b"{}").items()}
        expand = str((form.get("expand") or ["false"])[0]).lower() in ("1", "true")
        return Reply.json(views.paths_info(self.ctx.store, found, commit, form.get("paths", []), expand=expand))

    def _h_commits(self, kind: str, repo: str, rev: str) -> Reply:
        found = self._repo(kind, repo)
        commit = self.ctx.store.resolve(found, rev)
        return Reply.json([views.commit_json(c) for c in self.ctx.store.history(found, commit)])

    def _h_branch(self, kind: str, repo: str, rev: str) -> Reply:
        found = self._repo(kind, repo, write=True)
        if self.command == "DELETE":
            self.ctx.store.delete_branch(found, rev)
        else:
            self.ctx.store.create_branch(found, rev, self._json_body().get("startingPoint"))
        return Reply.json({})

    def _h_tag(self, kind: str, repo: str, rev: str) -> Reply:
        found = self._repo(kind, repo, write=True)
        if self.command == "DELETE":
            self.ctx.store.delete_tag(found, rev)
        else:
            body = self._json_body()
            if not body.get("tag"):
                raise BadRequest("Missing 'tag' in the request body.")
            self.ctx.store.create_tag(found, body["tag"], rev)
        return Reply.json({})

    # --------------------------------------------------------------- upload
    def _h_preupload(self, kind: str, repo: str, rev: str) -> Reply:
        found = self._repo(kind, repo, write=True)
        commit = self.ctx.store.resolve(found, rev)
        body = self._json_body()
        gitattributes = views.read_text(self.ctx.store, commit, ".gitattributes")
        ignore = [p for p in str(body.get("gitIgnore") or views.read_text(self.ctx.store, commit, ".gitignore"))
                  .splitlines() if p.strip() and not p.startswith("#")]
        files = []
        for item in body.get("files", []):
            path, size = item["path"], int(item.get("size", 0))
            mode = choose_upload_mode(path, size, base64.b64decode(item.get("sample", "")), gitattributes)
            remote = commit.files.get(path)
            entry = {"path": path, "uploadMode": mode,
                     "shouldIgnore": any(fnmatch.fnmatch(path, p.strip().lstrip("/")) for p in ignore)}
            if remote is not None:
                entry["oid"] = remote.sha256 if mode == "lfs" else remote.git_oid
            files.append(entry)
        return Reply.json({"files": files, "commitOid": commit.sha})

    def _h_lfs_batch(self, repo: str, kind: str = "models") -> Reply:
        self._repo(kind, repo, write=True)
        body = self._json_body()
        if body.get("operation") not in (None, "upload"):
            raise BadRequest("LocalHub only implements the LFS 'upload' operation.")
        objects = []
        for obj in body.get("objects", []):
            oid, size = str(obj["oid"]), int(obj["size"])
            item: Dict[str, Any] = {"oid": oid, "size": size}
            if not self.ctx.store.has_blob(oid):
                href = f"{self.ctx.endpoint}/_localhub/lfs/{oid}?size={size}&sig={self.ctx.sign(oid, size)}"
                item.update(authenticated=True, actions={"upload": {"href": href, "expires_in": 3600}})
            objects.append(item)
        return Reply.json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                          headers={"Content-Type": "application/vnd.git-lfs+json"})

    def _h_lfs_upload(self, oid: str) -> Reply:
        size = int((self._query.get("size") or ["-1"])[0])
        signature = (self._query.get("sig") or [""])[0]
        if not hmac.compare_digest(signature, self.ctx.sign(oid, size)):
            raise Forbidden("Invalid or missing upload signature (use the href of the LFS batch answer).")
        self.ctx.store.put_blob_stream(self._body_chunks(), oid, size)
        return Reply(200, {"ETag": f'"{oid}"'})

    def _h_commit(self, kind: str, repo: str, rev: str) -> Reply:
        found = self._repo(kind, repo, write=True)
        header: Dict[str, Any] = {}
        operations: List[Any] = []
        for line in self._body().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                header = value
            elif key == "file":
                sha = self.ctx.store.put_blob(decode_inline_file(value))
                operations.append(AddFile(value["path"], sha, lfs=False))
            elif key == "lfsFile":
                operations.append(AddFile(value["path"], value["oid"], lfs=True))
            elif key in ("deletedFile", "deletedFolder"):
                operations.append(DeletePath(value["path"], folder=key == "deletedFolder"))
            else:
                raise BadRequest(f"Unknown commit operation {key!r}.")
        if not header.get("summary"):
            raise BadRequest("The commit header needs a 'summary'.")
        commit, pr_num = self.ctx.store.commit(
            found, rev, operations, header["summary"], header.get("description", ""),
            parent_commit=header.get("parentCommit"), create_pr=self._flag("create_pr"),
        )
        answer = {"success": True, "commitOid": commit.sha, "commitUrl": self._url(found, "commit", commit.sha)}
        if pr_num is not None:
            answer["pullRequestUrl"] = self._url(found, "discussions", str(pr_num))
        return Reply.json(answer)

    # ------------------------------------------------------------- download
    def _h_resolve(self, repo: str, rev: str, path: str, kind: str = "models") -> Reply:
        found = self._repo(kind, repo)
        if found.gated and not self._authorized():
            raise GatedRepo(f"Access to repo {repo} is restricted: you must be authenticated to access it.")
        commit = self.ctx.store.resolve(found, rev)
        entry = commit.files.get(path)
        if entry is None:
            err = views.entry_not_found(path, rev)
            err.headers = {"X-Repo-Commit": commit.sha}  # the client caches the absence per commit
            raise err
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{entry.etag}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if entry.lfs:
            headers.update({"X-Linked-Etag": f'"{entry.sha256}"', "X-Linked-Size": str(entry.size)})
        blob = self.ctx.store.blob_path(entry.sha256)
        try:
            span = parse_range(self.headers.get("Range"), entry.size)
        except ValueError:
            return Reply(416, {**headers, "Content-Range": f"bytes */{entry.size}"})
        if span is None:
            return Reply(200, headers, file=blob, offset=0, length=entry.size)
        start, end = span
        headers["Content-Range"] = f"bytes {start}-{end}/{entry.size}"
        return Reply(206, headers, file=blob, offset=start, length=end - start + 1)

    def _flag(self, name: str) -> bool:
        return str((self._query.get(name) or [""])[0]).lower() in ("1", "true", "yes")


class HubHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that remembers its open connections so that `close_all` can end them."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, address: Tuple[str, int], context: HubContext):
        self.context = context
        self._connections: set = set()
        self._connections_lock = threading.Lock()
        super().__init__(address, HubRequestHandler)

    def process_request(self, request: socket.socket, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_all(self) -> None:
        """Shut every open keep-alive connection (their handler threads then end)."""
        with self._connections_lock:
            connections, self._connections = list(self._connections), set()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("LocalHub connection error from %s", client_address, exc_info=True)


__all__ = ["HubContext", "HubHTTPServer", "Reply", "RequestLog", "RequestRecord", "parse_range"]
