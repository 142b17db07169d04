"""`LocalHub`: a Hugging Face Hub-compatible HTTP server on 127.0.0.1, for tests and the offline demo.

The real `huggingface_hub` client (and `transformers`, `datasets`, `evaluate` on top of it) talks to it over
real HTTP, unchanged: create repos, push commits (inline files and LFS uploads), read repo info at a branch or
a commit, download files (HEAD + GET with ranges), list trees and refs, with the Hub's error headers so that
the client raises its own ``RepositoryNotFoundError``, ``RevisionNotFoundError``, ``EntryNotFoundError``...

Why hand-written: no library serves the Hub protocol (the Hub's server is closed source; `huggingface_hub`
ships only the client), and a stdlib `http.server.ThreadingHTTPServer` in a background thread keeps the test
dependencies at zero. The layers: `_store.py` (repos, immutable commits, refs, blobs), `_repo_json.py` (the
JSON documents), `_handler.py` (HTTP routing, auth, ranges, request log), `faults.py` (fault injection),
`_client_patch.py` (pointing the client libraries at the server).

Example:
    >>> from huggingface_hub import HfApi, hf_hub_download
    >>> with LocalHub() as hub:                     # starts the server and points the client at it
    ...     api = HfApi(token=hub.token)
    ...     api.create_repo("me/tiny")
    ...     api.upload_folder(repo_id="me/tiny", folder_path="tiny-model/")
    ...     path = hf_hub_download("me/tiny", "config.json")
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
import threading
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, List, Mapping, Optional, Sequence, Union

from ._client_patch import patched_client
from ._handler import HubContext, HubHTTPServer, RequestLog, RequestRecord
from ._store import AddFile, Conflict, DeletePath, HubStore, StoreError, choose_upload_mode
from .faults import FaultRule, Faults

if TYPE_CHECKING:  # pragma: no cover
    from huggingface_hub import HfApi

FileSource = Union[bytes, str, Path]
METRICS_DIR = Path(__file__).with_name("metrics")


class LocalHub:
    """A Hub-compatible server on 127.0.0.1, storing repos in a folder, with a request log and fault injection.

    Args:
        root: folder for the hub's data; a temporary folder (deleted on `stop`) when None. Repos already in
            `root` are served again.
        token: the write token; a random ``hf_local_...`` token when None. Reads of public repos need no token;
            writes and private repos need this one (sent as ``authorization: Bearer <token>``).
        faults: a :class:`~hf_soups.testing.faults.Faults` switchboard or rules to install from the start.
        host: the interface to listen on.
        port: the port; a free one when 0.
        user: the user name the token belongs to (``whoami``; namespace of repos created without one).
        patch: whether ``with LocalHub() as hub:`` also activates :meth:`patch_client`.
        cache_dir: when given, :meth:`patch_client` also makes it the Hub download cache (``HF_HUB_CACHE``).

    Example:
        >>> with LocalHub() as hub:
        ...     hub.create_repo("org/model")
        ...     sha = hub.commit_files("org/model", {"config.json": b"{}"})
        ...     info = HfApi().model_info("org/model", revision=sha)
    """

    def __init__(
        self,
        root: Optional[Union[str, Path]] = None,
        token: Optional[str] = None,
        faults: Optional[Union[Faults, Iterable[FaultRule]]] = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        user: str = "local-user",
        patch: bool = True,
        cache_dir: Optional[Union[str, Path]] = None,
    ):
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="localhub-")) if root is None else Path(root)
        self.token: str = token or f"hf_local_{secrets.token_hex(16)}"
        self.user = user
        self.faults: Faults = faults if isinstance(faults, Faults) else Faults(faults or ())
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._host, self._port, self._patch = host, port, patch
        self._log = RequestLog()
        self.store = HubStore(self.root, author=user)
        self._server: Optional[HubHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._stack = contextlib.ExitStack()

    # -------------------------------------------------------------- lifecycle
    @property
    def endpoint(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:54321`` (the hub must be started)."""
        if self._server is None:
            raise RuntimeError("LocalHub is not started: use `with LocalHub() as hub:` or `hub.start()`.")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "LocalHub":
        """Start serving in a background thread (idempotent).

        Returns:
            The hub itself.
        """
        if self._server is not None:
            return self
        context = HubContext(self.store, self.token, self.user, self.faults, self._log,
                             secret=secrets.token_bytes(32))
        self._server = HubHTTPServer((self._host, self._port), context)
        context.endpoint = self.endpoint
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"LocalHub{self.endpoint}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close open connections, undo :meth:`patch_client` if `__enter__` activated it, and
        delete the data folder when it was a temporary one."""
        self._stack.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.close_all()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def serve_forever(self) -> None:
        """Start (if needed) and block until interrupted (Ctrl-C); used by ``python -m hf_soups.testing``."""
        self.start()
        assert self._thread is not None
        try:
            while self._thread.is_alive():
                self._thread.join(timeout=0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> "LocalHub":
        self.start()
        if self._patch:
            self._stack.enter_context(self.patch_client())
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.endpoint if self._server is not None else "stopped"
        return f"LocalHub({where}, root={str(self.root)!r})"

    # ------------------------------------------------------- client pointing
    def patch_client(self) -> "contextlib.AbstractContextManager[None]":
        """Point this process's Hugging Face libraries at the hub while the context is active.

        Patches `huggingface_hub.constants` (``ENDPOINT``, ``HUGGINGFACE_CO_URL_TEMPLATE``,
        ``HF_HUB_DISABLE_XET=True``, and ``HF_HUB_CACHE`` when the hub has a `cache_dir`), the module-level
        ``HfApi`` behind the function aliases, `transformers`' cached ``HfApi``, `datasets.config` and
        `evaluate.config` endpoints (and turns off evaluate's S3 download counting); sets ``HF_ENDPOINT`` and
        ``HF_HUB_DISABLE_XET=1`` in ``os.environ``. Everything is restored on exit. ``HF_TOKEN`` is never set:
        pass ``token=hub.token`` where a write or a private read needs it (or use :meth:`api`).

        Returns:
            A context manager.

        Example:
            >>> hub = LocalHub().start()
            >>> with hub.patch_client():
            ...     hf_hub_download("org/model", "config.json")
        """
        return patched_client(self.endpoint, str(self.cache_dir) if self.cache_dir else None)

    def env(self, *, include_token: bool = False) -> Dict[str, str]:
        """Environment variables that point a subprocess at the hub.

        Args:
            include_token: also set ``HF_TOKEN`` to the hub's write token.

        Returns:
            ``{"HF_ENDPOINT": ..., "HF_HUB_DISABLE_XET": "1"}`` (plus ``HF_HUB_CACHE`` with a `cache_dir`, and
            ``HF_TOKEN`` when asked); merge it into ``os.environ.copy()`` for ``subprocess.run(env=...)``.
        """
        env = {"HF_ENDPOINT": self.endpoint, "HF_HUB_DISABLE_XET": "1", "HF_UPDATE_DOWNLOAD_COUNTS": "0"}
        if self.cache_dir is not None:
            env["HF_HUB_CACHE"] = str(self.cache_dir)
        if include_token:
            env["HF_TOKEN"] = self.token
        return env

    def api(self, *, token: Union[str, bool, None] = True) -> "HfApi":
        """An ``HfApi`` bound to this hub's endpoint, authenticated with the hub's token by default.

        Args:
            token: True for the hub's write token, False for anonymous, or a token string.
        """
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token if token is True else token)

    # ----------------------------------------------------------- request log
    @property
    def requests(self) -> List[RequestRecord]:
        """A snapshot of every request served so far (oldest first)."""
        return self._log.snapshot()

    def clear_requests(self) -> None:
        """Forget the requests logged so far."""
        self._log.clear()

    def downloads(self, filename_suffix: Optional[str] = None, *, repo_id: Optional[str] = None) -> List[RequestRecord]:
        """Full-body downloads: GETs of a resolve URL answered with the whole file (status 200).

        Range requests (206, e.g. a safetensors header read or a resumed download) and HEAD calls are not
        downloads.

        Args:
            filename_suffix: keep only files whose path ends with it (e.g. ``".safetensors"``).
            repo_id: keep only this repo.

        Returns:
            The matching records, oldest first.
        """
        return [
            r for r in self.requests
            if r.is_download and (filename_suffix is None or (r.filename or "").endswith(filename_suffix))
            and (repo_id is None or r.repo_id == repo_id)
        ]

    # ------------------------------------------------- direct (in-process) seeding
    def create_repo(self, repo_id: str, *, repo_type: str = "model", private: bool = False,
                    gated: Union[bool, str] = False, sdk: Optional[str] = None, exist_ok: bool = False) -> str:
        """Create a repo directly in the store (no HTTP, not logged), like ``HfApi.create_repo``.

        Args:
            repo_id: ``namespace/name``.
            repo_type: ``"model"``, ``"dataset"`` or ``"space"``.
            private: invisible without the token.
            gated: ``"auto"``/``"manual"``/True: files need the token (anonymous downloads get GatedRepoError).
            sdk: the Space SDK (spaces only).
            exist_ok: do not raise if it exists (its settings are then left unchanged).

        Returns:
            The repo id.

        Raises:
            ValueError: the repo exists (and not `exist_ok`) or the id/type is invalid.
        """
        try:
            self.store.create_repo(repo_type, repo_id, private=private, gated=gated, sdk=sdk)
        except Conflict:
            if not exist_ok:
                raise ValueError(f"{repo_type} repo {repo_id} already exists on this LocalHub.") from None
        except StoreError as err:
            raise ValueError(err.message) from None
        return repo_id

    def commit_files(self, repo_id: str, files: Mapping[str, FileSource], *, repo_type: str = "model",
                     branch: str = "main", message: str = "Upload files", delete: Sequence[str] = ()) -> str:
        """Commit files directly in the store (no HTTP, not logged), as one commit on `branch`.

        Args:
            repo_id: an existing repo.
            files: ``path in repo -> content``: bytes, a text ``str``, or a ``Path`` to read.
            repo_type: the repo's type.
            branch: the branch to move.
            message: the commit title.
            delete: paths to delete in the same commit.

        Returns:
            The new commit's sha.
        """
        repo = self.store.get_repo(repo_type, repo_id)
        gitattributes = self._read_head_text(repo_type, repo_id, branch, ".gitattributes")
        operations: List[Union[AddFile, DeletePath]] = [DeletePath(p) for p in delete]
        for path, source in files.items():
            data = Path(source).read_bytes() if isinstance(source, Path) else (
                source.encode() if isinstance(source, str) else bytes(source))
            mode = choose_upload_mode(path, len(data), data[:512], gitattributes)
            operations.append(AddFile(path, self.store.put_blob(data), lfs=mode == "lfs"))
        commit, _ = self.store.commit(repo, branch, operations, message)
        return commit.sha

    def _read_head_text(self, repo_type: str, repo_id: str, revision: str, path: str) -> str:
        repo = self.store.get_repo(repo_type, repo_id)
        entry = self.store.resolve(repo, revision).files.get(path)
        return self.store.read_blob(entry.sha256).decode("utf-8", "replace") if entry else ""

    def create_tag(self, repo_id: str, tag: str, revision: str = "main", *, repo_type: str = "model",
                   exist_ok: bool = False) -> None:
        """Tag `revision` directly in the store; with `exist_ok`, an existing tag is moved to it."""
        repo = self.store.get_repo(repo_type, repo_id)
        if exist_ok and tag in repo.tags:
            self.store.delete_tag(repo, tag)
        self.store.create_tag(repo, tag, revision)

    def create_branch(self, repo_id: str, branch: str, revision: str = "main", *, repo_type: str = "model") -> None:
        """Create `branch` at `revision` directly in the store."""
        self.store.create_branch(self.store.get_repo(repo_type, repo_id), branch, revision)

    def head(self, repo_id: str, revision: str = "main", *, repo_type: str = "model") -> str:
        """The full commit sha a revision (branch, tag, sha or unique sha prefix) resolves to.

        Raises:
            KeyError: unknown repo or revision.
        """
        try:
            return self.store.resolve(self.store.get_repo(repo_type, repo_id), revision).sha
        except StoreError as err:
            raise KeyError(err.message) from None

    def set_visibility(self, repo_id: str, *, private: Optional[bool] = None,
                       gated: Optional[Union[bool, str]] = None, repo_type: str = "model") -> None:
        """Change a repo's `private` and/or `gated` settings."""
        self.store.update_settings(self.store.get_repo(repo_type, repo_id), private=private, gated=gated)

    # ------------------------------------------------------------ fixtures
    def seed_metrics(self, names: Sequence[str] = ("accuracy", "f1"), *,
                     source_dir: Optional[Union[str, Path]] = None, namespace: str = "evaluate-metric",
                     evaluate_version: Optional[str] = None) -> List[str]:
        """Publish `evaluate` metric scripts as Space repos, the way `evaluate.load(name)` looks them up.

        evaluate 0.4.x fetches ``{HF_ENDPOINT}/spaces/evaluate-metric/{name}/resolve/v{version}/{name}.py``
        first and falls back to ``main``; both revisions resolve here (``main`` plus a ``v{version}`` tag).
        Idempotent: seeding again commits the current files and moves the tag.

        Args:
            names: metric names; each needs ``<source_dir>/<name>/<name>.py`` (other files of that folder are
                published too).
            source_dir: where the metric folders are; ``hf_soups/testing/metrics`` by default.
            namespace: the Space namespace (``evaluate-metric`` for metrics).
            evaluate_version: the version to tag; the installed `evaluate`'s by default.

        Returns:
            The Space repo ids.

        Raises:
            FileNotFoundError: a metric script is missing.
        """
        source = Path(source_dir) if source_dir is not None else METRICS_DIR
        version = evaluate_version or _installed_version("evaluate")
        repo_ids = []
        for name in names:
            folder = source / name
            if not (folder / f"{name}.py").is_file():
                raise FileNotFoundError(f"No metric script {folder / (name + '.py')}: write it or pass source_dir=.")
            files: Dict[str, FileSource] = {
                p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
            }
            repo_id = f"{namespace}/{name}"
            self.create_repo(repo_id, repo_type="space", sdk="gradio", exist_ok=True)
            self.commit_files(repo_id, files, repo_type="space", message=f"Add the {name} metric")
            if version:
                self.create_tag(repo_id, f"v{version}", repo_type="space", exist_ok=True)
            repo_ids.append(repo_id)
        return repo_ids

    def seed_dataset(self, repo_id: str, files: Mapping[str, FileSource], *, private: bool = False,
                     message: str = "Upload dataset") -> str:
        """Create (or update) a dataset repo with these files, e.g. ``{"train.csv": ..., "test.csv": ...}``.

        `datasets.load_dataset(repo_id)` then loads it through the hub (inside :meth:`patch_client`).

        Returns:
            The commit sha.
        """
        self.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        return self.commit_files(repo_id, files, repo_type="dataset", message=message)


def _installed_version(package: str) -> Optional[str]:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
