"""Storage behind :class:`~hf_soups.testing.LocalHub`: repos, immutable commits, refs and a blob store.

Nothing here speaks HTTP. The HTTP layer (`_handler.py`) turns requests into calls on :class:`HubStore`
and turns :class:`StoreError` into Hub error responses.

Model of the data:

- every file content lives once in a content-addressed blob store (`blobs/<sha256>`), whether the client
  uploaded it through LFS or inline in a commit;
- a :class:`Commit` is immutable: a 40-hex sha, its parent, and the full map ``path -> FileEntry``;
- a repo has branches, tags and pull-request refs (``refs/pr/N``), each pointing at a commit sha.

State is written as one JSON file per repo under ``root/repos/`` after every change, so a hub started again
on the same ``root`` (``python -m hf_soups.testing --root DIR``) finds its repos again.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import json
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

REPO_TYPES = ("model", "dataset", "space")

#: Files at or above this size are stored through LFS whatever their name (the Hub's own limit is 10 MB).
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024

#: The ``.gitattributes`` the Hub writes in the initial commit of a new repo (trimmed to the common patterns).
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in (
        "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*",
        "*.mlmodel", "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb",
        "*.pickle", "*.pkl", "*.pt", "*.pth", "*.rar", "*.safetensors", "saved_model/**/*", "*.tar.*",
        "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst", "*tfevents*",
    )
)

_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_SHORT_SHA_RE = re.compile(r"^[0-9a-f]{5,39}$")
_PR_RE = re.compile(r"^refs/pr/(\d+)$")


class StoreError(Exception):
    """A request the store refuses; carries the HTTP status and the Hub's ``X-Error-Code`` (if any)."""

    status: int = 400
    code: Optional[str] = None

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message
        self.headers: Dict[str, str] = {}  # extra response headers (e.g. X-Repo-Commit on EntryNotFound)


class RepoNotFound(StoreError):
    status, code = 404, "RepoNotFound"


class RevisionNotFound(StoreError):
    status, code = 404, "RevisionNotFound"


class EntryNotFound(StoreError):
    status, code = 404, "EntryNotFound"


class Conflict(StoreError):
    status = 409


class PreconditionFailed(StoreError):
    status = 412


class BadRequest(StoreError):
    status = 400


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob with this content (what the Hub reports as a regular file's oid/ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file that git stores in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def iso_date(timestamp: float) -> str:
    """A timestamp formatted the way the Hub sends dates (``2024-01-31T12:00:00.000Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(timestamp)) + f".{int(timestamp * 1000) % 1000:03d}Z"


@dataclass(frozen=True)
class FileEntry:
    """One file of a commit.

    Attributes:
        path: path in the repo, with ``/`` separators.
        size: size of the content in bytes.
        sha256: sha256 of the content; the key of the content in the blob store.
        lfs: whether the file is stored through LFS (then its ETag is the sha256, as on the Hub).
    """

    path: str
    size: int
    sha256: str
    lfs: bool
    git_oid: str = ""

    @property
    def etag(self) -> str:
        """The ETag the Hub serves: the sha256 for an LFS file, the git blob oid for a regular file."""
        return self.sha256 if self.lfs else self.git_oid

    def to_json(self) -> dict:
        return {"path": self.path, "size": self.size, "sha256": self.sha256, "lfs": self.lfs, "oid": self.git_oid}

    @classmethod
    def from_json(cls, data: dict) -> "FileEntry":
        return cls(data["path"], data["size"], data["sha256"], data["lfs"], data["oid"])


@dataclass(frozen=True)
class Commit:
    """An immutable commit: its sha, parent(s), message, date and the full file map."""

    sha: str
    parents: Tuple[str, ...]
    title: str
    message: str
    date: float
    author: str
    files: Mapping[str, FileEntry]

    def to_json(self) -> dict:
        return {
            "sha": self.sha, "parents": list(self.parents), "title": self.title, "message": self.message,
            "date": self.date, "author": self.author, "files": [f.to_json() for f in self.files.values()],
        }

    @classmethod
    def from_json(cls, data: dict) -> "Commit":
        files = {f["path"]: FileEntry.from_json(f) for f in data["files"]}
        return cls(data["sha"], tuple(data["parents"]), data["title"], data["message"], data["date"],
                   data["author"], files)


@dataclass
class Repo:
    """A repository: identity, visibility, refs and its commits."""

    repo_type: str
    repo_id: str
    private: bool = False
    gated: Union[bool, str] = False
    sdk: Optional[str] = None
    created_at: float = field(default_factory=time.time)
    branches: Dict[str, str] = field(default_factory=dict)
    tags: Dict[str, str] = field(default_factory=dict)
    pull_requests: Dict[int, str] = field(default_factory=dict)
    commits: Dict[str, Commit] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "repo_type": self.repo_type, "repo_id": self.repo_id, "private": self.private, "gated": self.gated,
            "sdk": self.sdk, "created_at": self.created_at, "branches": self.branches, "tags": self.tags,
            "pull_requests": {str(k): v for k, v in self.pull_requests.items()},
            "commits": [c.to_json() for c in self.commits.values()],
        }

    @classmethod
    def from_json(cls, data: dict) -> "Repo":
        repo = cls(data["repo_type"], data["repo_id"], data["private"], data["gated"], data["sdk"],
                   data["created_at"], dict(data["branches"]), dict(data["tags"]),
                   {int(k): v for k, v in data["pull_requests"].items()})
        repo.commits = {c["sha"]: Commit.from_json(c) for c in data["commits"]}
        return repo


@dataclass(frozen=True)
class AddFile:
    """Commit operation: add or replace `path` with the blob `sha256` (already in the blob store)."""

    path: str
    sha256: str
    lfs: bool


@dataclass(frozen=True)
class DeletePath:
    """Commit operation: delete a file, or every file under a folder when `folder` is true."""

    path: str
    folder: bool = False


Operation = Union[AddFile, DeletePath]


def lfs_patterns(gitattributes: str) -> List[str]:
    """The path patterns that a ``.gitattributes`` text routes to LFS (``filter=lfs``)."""
    patterns = []
    for line in gitattributes.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            patterns.append(parts[0])
    return patterns


def choose_upload_mode(path: str, size: int, sample: bytes, gitattributes: str) -> str:
    """Decide ``"lfs"`` or ``"regular"`` for a file, like the Hub's preupload endpoint.

    LFS when the path matches a ``filter=lfs`` pattern of the repo's ``.gitattributes``, when the file is
    10 MiB or larger, or when its first bytes contain a NUL byte (binary). Empty files are always regular.
    """
    if size == 0:
        return "regular"
    name = path.rsplit("/", 1)[-1]
    for pattern in lfs_patterns(gitattributes):
        if fnmatch.fnmatchcase(path if "/" in pattern else name, pattern):
            return "lfs"
    if size >= LFS_SIZE_THRESHOLD or b"\0" in sample:
        return "lfs"
    return "regular"


class HubStore:
    """Thread-safe storage of every repo of a :class:`~hf_soups.testing.LocalHub`.

    Args:
        root: the folder holding ``blobs/``, ``repos/`` and ``tmp/``. Existing repos there are loaded.
        author: the user name recorded as the author of commits.
    """

    def __init__(self, root: Union[str, Path], author: str = "local-user"):
        self.root = Path(root)
        self.author = author
        self._lock = threading.RLock()
        self._repos: Dict[Tuple[str, str], Repo] = {}
        for sub in ("blobs", "repos", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for state in sorted((self.root / "repos").glob("*/*.json")):
            repo = Repo.from_json(json.loads(state.read_text()))
            self._repos[(repo.repo_type, repo.repo_id)] = repo

    # ------------------------------------------------------------------ blobs
    def blob_path(self, sha256: str) -> Path:
        """Where the content with this sha256 is (or would be) stored."""
        return self.root / "blobs" / sha256[:2] / sha256

    def has_blob(self, sha256: str) -> bool:
        return self.blob_path(sha256).is_file()

    def put_blob(self, data: bytes) -> str:
        """Store `data` and return its sha256."""
        sha = hashlib.sha256(data).hexdigest()
        if not self.has_blob(sha):
            with self.staging_file() as (handle, tmp):
                handle.write(data)
                handle.close()
                self._move_into_store(tmp, sha)
        return sha

    def put_blob_stream(self, chunks: Iterable[bytes], expected_sha256: str, expected_size: Optional[int]) -> None:
        """Store a streamed upload, checking its sha256 (and size) against what the client announced.

        Raises:
            BadRequest: when the content does not match.
        """
        digest, size = hashlib.sha256(), 0
        with self.staging_file() as (handle, tmp):
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                handle.write(chunk)
            handle.close()
            if digest.hexdigest() != expected_sha256 or (expected_size is not None and size != expected_size):
                raise BadRequest(
                    f"Uploaded content does not match its LFS object: expected sha256 {expected_sha256} "
                    f"({expected_size} bytes), got {digest.hexdigest()} ({size} bytes)."
                )
            if not self.has_blob(expected_sha256):
                self._move_into_store(tmp, expected_sha256)

    class _Staging:
        def __init__(self, folder: Path):
            fd, name = tempfile.mkstemp(dir=folder)
            self.handle, self.path = os.fdopen(fd, "wb"), Path(name)

        def __enter__(self):
            return self.handle, self.path

        def __exit__(self, *exc):
            self.handle.close()
            self.path.unlink(missing_ok=True)

    def staging_file(self) -> "HubStore._Staging":
        """A temporary file in the store's folder, removed on exit unless moved into the store."""
        return HubStore._Staging(self.root / "tmp")

    def _move_into_store(self, tmp: Path, sha256: str) -> None:
        target = self.blob_path(sha256)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)

    def read_blob(self, sha256: str) -> bytes:
        return self.blob_path(sha256).read_bytes()

    # ------------------------------------------------------------------ repos
    def _save(self, repo: Repo) -> None:
        path = self.root / "repos" / f"{repo.repo_type}s" / (repo.repo_id.replace("/", "--") + ".json")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(repo.to_json()))
        os.replace(tmp, path)

    def _delete_state(self, repo: Repo) -> None:
        path = self.root / "repos" / f"{repo.repo_type}s" / (repo.repo_id.replace("/", "--") + ".json")
        path.unlink(missing_ok=True)

    def repos(self) -> List[Repo]:
        """Every repo, in creation order."""
        with self._lock:
            return sorted(self._repos.values(), key=lambda r: r.created_at)

    def get_repo(self, repo_type: str, repo_id: str) -> Repo:
        """The repo, or raise :class:`RepoNotFound`."""
        with self._lock:
            repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise RepoNotFound(f"Repository {repo_type}s/{repo_id} not found.")
        return repo

    def create_repo(self, repo_type: str, repo_id: str, *, private: bool = False, gated: Union[bool, str] = False,
                    sdk: Optional[str] = None) -> Repo:
        """Create a repo with the Hub's initial commit (a ``.gitattributes`` file) on ``main``.

        Raises:
            Conflict: if the repo exists.
            BadRequest: on an unknown repo type or a malformed repo id.
        """
        if repo_type not in REPO_TYPES:
            raise BadRequest(f"Unknown repo type {repo_type!r}; expected one of {REPO_TYPES}.")
        if not re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", repo_id) or "--" in repo_id or ".." in repo_id:
            raise BadRequest(f"Invalid repo id {repo_id!r}.")
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                raise Conflict(f"You already created this {repo_type} repo: {repo_id}.")
            repo = Repo(repo_type, repo_id, private=private, gated=gated, sdk=sdk)
            sha = self.put_blob(DEFAULT_GITATTRIBUTES.encode())
            self._repos[(repo_type, repo_id)] = repo
            self._apply_commit(repo, None, [AddFile(".gitattributes", sha, lfs=False)], "initial commit", "")
            repo.branches["main"] = next(iter(repo.commits))
            self._save(repo)
            return repo

    def delete_repo(self, repo_type: str, repo_id: str) -> None:
        with self._lock:
            repo = self.get_repo(repo_type, repo_id)
            del self._repos[(repo_type, repo_id)]
            self._delete_state(repo)

    def update_settings(self, repo: Repo, *, private: Optional[bool] = None,
                        gated: Optional[Union[bool, str]] = None) -> None:
        with self._lock:
            if private is not None:
                repo.private = private
            if gated is not None:
                repo.gated = gated
            self._save(repo)

    # -------------------------------------------------------------- revisions
    def resolve(self, repo: Repo, revision: str) -> Commit:
        """Resolve a revision to a commit.

        A revision is, in this order: a branch, a tag, a pull-request ref (``refs/pr/N``), a full 40-hex
        commit sha, or a unique prefix (5 to 39 hex digits) of a commit sha of this repo.

        Raises:
            RevisionNotFound: when nothing matches, or a short sha is ambiguous.
        """
        with self._lock:
            sha = repo.branches.get(revision) or repo.tags.get(revision)
            if sha is None and revision.startswith("refs/heads/"):
                sha = repo.branches.get(revision[len("refs/heads/"):])
            if sha is None and (match := _PR_RE.match(revision)):
                sha = repo.pull_requests.get(int(match.group(1)))
            if sha is None and _SHA_RE.match(revision) and revision in repo.commits:
                sha = revision
            if sha is None and _SHORT_SHA_RE.match(revision):
                found = [s for s in repo.commits if s.startswith(revision)]
                if len(found) == 1:
                    sha = found[0]
            if sha is None:
                raise RevisionNotFound(f"Invalid rev id: {revision}")
            return repo.commits[sha]

    def create_branch(self, repo: Repo, branch: str, starting_point: Optional[str] = None) -> None:
        with self._lock:
            if branch in repo.branches:
                raise Conflict(f"Reference refs/heads/{branch} already exists.")
            repo.branches[branch] = self.resolve(repo, starting_point or "main").sha
            self._save(repo)

    def delete_branch(self, repo: Repo, branch: str) -> None:
        with self._lock:
            if branch not in repo.branches:
                raise RevisionNotFound(f"Branch {branch} not found.")
            if branch == "main":
                raise BadRequest("Cannot delete the default branch.")
            del repo.branches[branch]
            self._save(repo)

    def create_tag(self, repo: Repo, tag: str, revision: str) -> None:
        with self._lock:
            if tag in repo.tags:
                raise Conflict(f"Tag {tag} already exists.")
            repo.tags[tag] = self.resolve(repo, revision).sha
            self._save(repo)

    def delete_tag(self, repo: Repo, tag: str) -> None:
        with self._lock:
            if tag not in repo.tags:
                raise RevisionNotFound(f"Tag {tag} not found.")
            del repo.tags[tag]
            self._save(repo)

    # ---------------------------------------------------------------- commits
    def commit(self, repo: Repo, revision: str, operations: List[Operation], title: str, message: str = "", *,
               parent_commit: Optional[str] = None, create_pr: bool = False) -> Tuple[Commit, Optional[int]]:
        """Apply `operations` on top of `revision` as one new commit.

        Args:
            repo: the repo.
            revision: the branch to move (or ``refs/pr/N``); with `create_pr`, the base of a new pull request.
            operations: adds and deletes, applied in order.
            title: the commit summary.
            message: the commit description.
            parent_commit: when given, the commit is refused unless the branch still points at it.
            create_pr: commit on a new ``refs/pr/N`` ref instead of moving the branch.

        Returns:
            The new commit, and the pull-request number when one was opened.

        Raises:
            RevisionNotFound: unknown branch. PreconditionFailed: `parent_commit` is stale.
            EntryNotFound: deleting a missing path. BadRequest: an LFS object that was never uploaded.
        """
        with self._lock:
            pr_match = _PR_RE.match(revision)
            if create_pr:
                base = self.resolve(repo, revision)
            elif pr_match and int(pr_match.group(1)) in repo.pull_requests:
                base = repo.commits[repo.pull_requests[int(pr_match.group(1))]]
            elif revision in repo.branches:
                base = repo.commits[repo.branches[revision]]
            else:
                raise RevisionNotFound(f"Invalid rev id: {revision} is not a branch of {repo.repo_id}.")
            if parent_commit is not None and not base.sha.startswith(parent_commit.lower()):
                raise PreconditionFailed(
                    f"A commit has happened since. Please refresh and try again. (parent commit {parent_commit} "
                    f"is not the head {base.sha} of {revision})"
                )
            commit = self._apply_commit(repo, base, operations, title, message)
            pr_num = None
            if create_pr:
                pr_num = max(repo.pull_requests, default=0) + 1
                repo.pull_requests[pr_num] = commit.sha
            elif pr_match:
                repo.pull_requests[int(pr_match.group(1))] = commit.sha
            else:
                repo.branches[revision] = commit.sha
            self._save(repo)
            return commit, pr_num

    def _apply_commit(self, repo: Repo, base: Optional[Commit], operations: List[Operation], title: str,
                      message: str) -> Commit:
        files: Dict[str, FileEntry] = dict(base.files) if base else {}
        for op in operations:
            if isinstance(op, DeletePath):
                path = op.path.rstrip("/")
                doomed = [p for p in files if p == path or p.startswith(path + "/")] if op.folder else (
                    [path] if path in files else [])
                if not doomed:
                    raise EntryNotFound(f"A file with this name doesn't exist: {op.path}")
                for p in doomed:
                    del files[p]
                continue
            if not self.has_blob(op.sha256):
                raise BadRequest(f"LFS object {op.sha256} for {op.path} was never uploaded.")
            size = self.blob_path(op.sha256).stat().st_size
            oid = git_blob_oid(lfs_pointer(op.sha256, size)) if op.lfs else git_blob_oid(self.read_blob(op.sha256))
            files[op.path] = FileEntry(op.path, size, op.sha256, op.lfs, oid)
        date = time.time()
        seed = f"{base.sha if base else ''}\n{title}\n{date}\n{secrets.token_hex(8)}\n"
        seed += "".join(f"{f.path}:{f.etag}\n" for f in sorted(files.values(), key=lambda f: f.path))
        sha = hashlib.sha1(seed.encode()).hexdigest()
        commit = Commit(sha, (base.sha,) if base else (), title, message, date, self.author, files)
        repo.commits[sha] = commit
        return commit

    def history(self, repo: Repo, commit: Commit) -> Iterator[Commit]:
        """The commit and its ancestors, newest first (first-parent chain)."""
        current: Optional[Commit] = commit
        while current is not None:
            yield current
            current = repo.commits.get(current.parents[0]) if current.parents else None


def decode_inline_file(value: dict) -> bytes:
    """The content of a ``{"key": "file"}`` line of a commit payload."""
    if value.get("encoding", "base64") != "base64":
        raise BadRequest(f"Unsupported encoding {value.get('encoding')!r} for {value.get('path')}.")
    return base64.b64decode(value["content"])
