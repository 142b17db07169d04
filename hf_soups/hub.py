"""All network work: the one module that calls `huggingface_hub` to talk to a Hub.

Everything else in hf-soups is pure and testable offline. The functions here translate the client's own
errors (`RepositoryNotFoundError`, `RevisionNotFoundError`, `EntryNotFoundError`, `GatedRepoError`) into
:mod:`hf_soups.errors` classes whose messages name the candidate and say what to do. Tokens are passed through
to the client and never appear in a message.

The endpoint is read from `huggingface_hub.constants.ENDPOINT` at call time (so `HF_ENDPOINT`, or
`hf_soups.testing.LocalHub`, points everything at another Hub-compatible server).
"""

from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

from huggingface_hub import CommitOperationAdd, HfApi, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import ModelInfo

from .errors import (
    AuthenticationError,
    CandidateNotFoundError,
    EvaluationError,
    HubError,
    PushError,
    RepoNotVisibleError,
)
from .progress import get_logger

logger = get_logger(__name__)

#: (dtype, shape) of one tensor, as read from a safetensors header.
Spec = Tuple[str, Tuple[int, ...]]
T = TypeVar("T")

# What counts as transient is the client's own definition (its backoff helper's defaults); the fallbacks are the
# same values, for a huggingface_hub that moves these private names.
try:
    from huggingface_hub.utils._http import _DEFAULT_RETRY_ON_EXCEPTIONS as _TRANSIENT_EXCEPTIONS
    from huggingface_hub.utils._http import _DEFAULT_RETRY_ON_STATUS_CODES as _TRANSIENT_STATUSES
    from huggingface_hub.utils._http import _parse_retry_after
except ImportError:  # pragma: no cover - depends on the installed huggingface_hub
    _TRANSIENT_EXCEPTIONS = (TimeoutError, ConnectionError)  # type: ignore[assignment]
    _TRANSIENT_STATUSES = (408, 429, 500, 502, 503, 504)

    def _parse_retry_after(headers: Any) -> Optional[int]:
        value = str(headers.get("Retry-After", "")).strip()
        return int(value) if value.isdigit() else None

#: Hub user tokens (``hf_`` + 34 letters/digits), LocalHub tokens (``hf_local_`` + 32 hex digits) and legacy
#: ``api_org_`` tokens; identifiers such as ``hf_hub_download`` or ``hf_soups_ingredient.json`` do not match.
_TOKEN_RE = re.compile(r"\b(hf_(?:[A-Za-z0-9]+_)?|api_org_)[A-Za-z0-9]{20,}\b")


def redact(text: str) -> str:
    """Remove anything that looks like a Hub token from `text` (for messages and logs).

    Example:
        >>> redact("401 for token hf_abcdefghijklmnopqrstuvwxyz01234567 in hf_hub_download")
        '401 for token hf_*** in hf_hub_download'
    """
    return _TOKEN_RE.sub(lambda m: m.group(1) + "***", text)


class Hub:
    """A Hub connection: token, endpoint and cache shared by every call of one soup run.

    Reads are retried when the Hub fails transiently (see :meth:`_retrying`); writes never are.

    Args:
        token: a Hub token; `None` uses the client's own lookup (`HF_TOKEN`, the stored login).
        endpoint: the Hub URL; `None` uses `huggingface_hub.constants.ENDPOINT` (`HF_ENDPOINT`).
        cache_dir: the download cache; `None` uses the client's (`HF_HUB_CACHE`).
        max_retries: how many times a read is tried again after a transient failure (HTTP 408/429/5xx, timeout,
            dropped connection).
        retry_wait: the first wait between tries in seconds, doubled each time (at most 8 s); a ``Retry-After``
            header from the Hub takes precedence (at most 60 s).
        timeout: seconds to wait for an API answer (repo info, safetensors headers); the client waits forever
            by default. File downloads use the client's own timeouts (``HF_HUB_DOWNLOAD_TIMEOUT``).

    Example:
        >>> hub = Hub()
        >>> info = hub.repo_info("org/model", "main", ref="org/model")   # doctest: +SKIP
    """

    def __init__(
        self,
        token: Optional[str] = None,
        endpoint: Optional[str] = None,
        cache_dir: Optional[str] = None,
        *,
        max_retries: int = 4,
        retry_wait: float = 1.0,
        timeout: Optional[float] = 60.0,
    ) -> None:
        self.token = token
        self._endpoint = endpoint
        self.cache_dir = cache_dir
        self.max_retries = max_retries
        self.retry_wait = retry_wait
        self.timeout = timeout
        self._safetensors_meta: Dict[Tuple[str, str], Any] = {}  # (repo, sha) -> headers: a commit never changes

    def redact(self, text: str) -> str:
        """`redact`, plus this connection's own token whatever its form."""
        text = redact(text)
        return text.replace(self.token, "***") if self.token and len(self.token) >= 4 else text

    @property
    def endpoint(self) -> str:
        """The Hub URL in use now."""
        return self._endpoint or constants.ENDPOINT

    @property
    def api(self) -> HfApi:
        """An `HfApi` bound to this hub's endpoint and token."""
        return HfApi(endpoint=self.endpoint, token=self.token)

    # -- reading ---------------------------------------------------------------------------------------------

    def repo_info(self, repo_id: str, revision: Optional[str], *, ref: str) -> ModelInfo:
        """Model info at `revision` (a branch, tag or sha): commit `sha`, file list, card metadata.

        Raises:
            CandidateNotFoundError: the repo or revision does not exist (or is private and not visible).
            AuthenticationError: the repo is gated and the token cannot read it.
            HubError: the Hub failed after the client's retries.
        """
        with self._translate(ref, repo_id=repo_id, revision=revision):
            return self._retrying(
                lambda: self.api.model_info(repo_id, revision=revision, files_metadata=True, timeout=self.timeout),
                what=f"reading {repo_id}",
            )

    def download(self, repo_id: str, filename: str, sha: str, *, ref: str) -> Path:
        """Download one file at a pinned commit (through the client's cache) and return its local path.

        Raises:
            CandidateNotFoundError: the file (or repo, revision) does not exist.
        """
        with self._translate(ref, repo_id=repo_id, revision=sha, filename=filename):
            return self._retrying(
                lambda: Path(
                    hf_hub_download(
                        repo_id,
                        filename,
                        revision=sha,
                        token=self.token,
                        cache_dir=self.cache_dir,
                        endpoint=self._endpoint,
                        library_name="hf-soups",
                    )
                ),
                what=f"downloading {filename} of {repo_id}",
                # the client retries 408/429 and resumes after network errors itself; it raises on a 5xx body
                statuses=[code for code in _TRANSIENT_STATUSES if code >= 500],
                exceptions=(),
            )

    def snapshot(self, repo_id: str, sha: str, *, allow_patterns: Optional[Sequence[str]] = None, ref: str) -> Path:
        """Download the files of a repo at a pinned commit that match `allow_patterns`; return the folder."""
        with self._translate(ref, repo_id=repo_id, revision=sha):
            # A retry after a failure re-downloads only what is missing: finished files are in the cache, and
            # a file cut short resumes from its `.incomplete` part.
            return self._retrying(
                lambda: Path(
                    snapshot_download(
                        repo_id,
                        revision=sha,
                        allow_patterns=list(allow_patterns) if allow_patterns else None,
                        token=self.token,
                        cache_dir=self.cache_dir,
                        endpoint=self._endpoint,
                        library_name="hf-soups",
                    )
                ),
                what=f"downloading {repo_id}",
            )

    def _safetensors_metadata(self, repo_id: str, sha: str, *, ref: str) -> Any:
        """The parsed safetensors headers of every weight file at `sha`, read once (Range requests only)."""
        key = (repo_id, sha)
        if key not in self._safetensors_meta:
            with self._translate(ref, repo_id=repo_id, revision=sha):
                self._safetensors_meta[key] = self._retrying(
                    lambda: self.api.get_safetensors_metadata(repo_id, revision=sha, timeout=self.timeout),
                    what=f"reading the safetensors headers of {repo_id}",
                )
        return self._safetensors_meta[key]

    def safetensors_specs(self, repo_id: str, sha: str, *, ref: str) -> Dict[str, Spec]:
        """Names, dtypes and shapes of every tensor, read from the safetensors headers only (Range requests).

        No weight bytes are downloaded: the client reads the first bytes of each file (and the index for
        sharded checkpoints).
        """
        meta = self._safetensors_metadata(repo_id, sha, ref=ref)
        specs: Dict[str, Spec] = {}
        for file_meta in meta.files_metadata.values():
            for name, info in file_meta.tensors.items():
                specs[name] = (str(info.dtype), tuple(int(s) for s in info.shape))
        return specs

    def safetensors_layout(self, repo_id: str, sha: str, *, ref: str) -> Dict[str, Dict[str, Dict[str, Any]]]:
        """Each weight file's header as parsed: ``{file: {tensor: {"dtype", "shape", "data_offsets"}}}``.

        Header only (the same Range reads as :meth:`safetensors_specs`, done once). The candidate checks the
        offsets against the file sizes the Hub reports, so a corrupt file is refused before it is downloaded.
        """
        meta = self._safetensors_metadata(repo_id, sha, ref=ref)
        return {
            fname: {
                name: {"dtype": str(t.dtype), "shape": [int(x) for x in t.shape],
                       "data_offsets": [int(x) for x in t.data_offsets]}
                for name, t in fmeta.tensors.items()
            }
            for fname, fmeta in meta.files_metadata.items()
        }

    def load_dataset(
        self,
        name: str,
        *,
        config: Optional[str] = None,
        split: str = "validation",
        data_files: Any = None,
        **kwargs: Any,
    ) -> Any:
        """Load one split with `datasets.load_dataset`: a Hub dataset, a builder (``csv``) or a local file.

        A local ``.tsv``/``.csv``/``.json(l)``/``.parquet`` file is read with the matching builder.

        Raises:
            EvaluationError: the dataset, config or split does not exist (the message lists what does).
        """
        import datasets

        local = Path(name).expanduser()
        if local.is_file():
            suffix = local.suffix.lower()
            builder = {".tsv": "csv", ".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(suffix)
            if builder is None:
                raise EvaluationError(f"cannot read {local}: unknown file type {suffix!r}",
                                      hint="Use .csv, .tsv, .json, .jsonl or .parquet, or load a Dataset yourself.")
            if suffix == ".tsv":
                kwargs.setdefault("delimiter", "\t")
            name, data_files, split = builder, {"data": str(local)}, "data"
        try:
            return datasets.load_dataset(name, config, split=split, data_files=data_files, token=self.token, **kwargs)
        except ValueError as err:
            text = str(err)
            if "split" in text.lower():
                raise EvaluationError(f"dataset {name!r} has no split {split!r}: {text}",
                                      hint="Pick one of the splits listed (eval_split / evaluation.split).") from err
            raise EvaluationError(f"cannot load dataset {name!r}: {redact(text)}",
                                  hint="Check the dataset name, config and data_files.") from err
        except (FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as err:
            raise EvaluationError(f"dataset {name!r} not found: {redact(str(err))}",
                                  hint="Check the name (org/dataset on the Hub) or the local path.") from err

    # -- writing ---------------------------------------------------------------------------------------------

    def push_folder(
        self,
        folder: str | Path,
        repo_id: str,
        *,
        private: Optional[bool] = None,
        commit_message: str = "Upload model soup with hf-soups",
        commit_description: Optional[str] = None,
    ) -> str:
        """Create `repo_id` if needed and upload every file of `folder` in **one** commit.

        `create_commit` with all operations, not `upload_folder`: with Xet available, `upload_folder` may split
        a large folder over several commits, and a soup must be published whole or not at all.

        The commit is made on top of the head read just before (`parent_commit`), so a push never lands on a
        branch that moved meanwhile. When the commit request fails without a clear refusal (connection lost,
        5xx), the commit may still have landed: the branch head is read back, and a new commit with this
        message on top of that parent counts as published.

        Returns:
            The commit URL.

        Raises:
            PushError: creating the repo or the commit failed; nothing was published. The message names the
                command that publishes the saved folder alone (``hf-soups push DIR REPO``).
        """
        from .candidates import validate_repo_id  # imported here: candidates imports this module

        validate_repo_id(repo_id, ref=repo_id, what="repo id to push to")
        folder = Path(folder)
        operations = [
            CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p))
            for p in sorted(folder.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        ]
        retry = f"The soup is saved in {folder}; publish it alone with: hf-soups push {folder} {repo_id}"
        api = self.api
        parent: Optional[str] = None
        try:
            api.create_repo(repo_id, private=bool(private), exist_ok=True)
            parent = self._retrying(lambda: api.model_info(repo_id, timeout=self.timeout).sha,
                                    what=f"reading {repo_id}")
            info = api.create_commit(
                repo_id, operations, commit_message=commit_message, commit_description=commit_description,
                parent_commit=parent,
            )
        except RepositoryNotFoundError as err:
            raise PushError(
                f"cannot write to {repo_id}: the repo is not visible with this token",
                hint=f"Use a token with write access to {repo_id} (HF_TOKEN or --token). {retry}",
            ) from err
        except (OSError, *_TRANSIENT_EXCEPTIONS) as err:  # HfHubHTTPError is an OSError too
            status = _status(err) if isinstance(err, HfHubHTTPError) else None
            landed = self._landed(api, repo_id, parent, commit_message) if status is None or status >= 500 else None
            if landed is not None:
                logger.warning("the answer to the commit on %s was lost (%s), but the commit landed: %s",
                               repo_id, self.redact(_first_line(err)), landed)
                return landed
            what = "refused" if status in (401, 403) else "failed"
            hint = (f"Use a token with write access to {repo_id} (HF_TOKEN or --token). {retry}"
                    if status in (401, 403) else retry)
            raise PushError(f"pushing to {repo_id} {what}: {self.redact(_first_line(err))}", hint=hint) from err
        return str(info.commit_url)

    def _landed(self, api: HfApi, repo_id: str, parent: Optional[str], message: str) -> Optional[str]:
        """The URL of a commit titled `message` made right on top of `parent`, if the branch head is one."""
        if parent is None:
            return None
        try:
            commits = api.list_repo_commits(repo_id)
        except (OSError, *_TRANSIENT_EXCEPTIONS):
            return None
        if len(commits) >= 2 and commits[1].commit_id == parent and commits[0].title == message.strip():
            return f"{self.endpoint}/{repo_id}/commit/{commits[0].commit_id}"
        return None

    # -- retries ---------------------------------------------------------------------------------------------

    def _retrying(
        self,
        call: Callable[[], T],
        *,
        what: str,
        statuses: Sequence[int] = _TRANSIENT_STATUSES,
        exceptions: Tuple[type, ...] = _TRANSIENT_EXCEPTIONS,
    ) -> T:
        """Run a read, trying again (at most `max_retries` times) when the Hub fails transiently.

        Why here and not only in the client: huggingface_hub 2.4 retries a file's metadata HEAD (on 429, 5xx and
        network errors, when nothing is cached) and a file body on 408/429 (honouring ``Retry-After``), and it
        resumes a body cut mid-way; but it raises at once on a 5xx answer to the body GET, and never retries API
        calls (`model_info`) or the Range reads of `get_safetensors_metadata`. Those calls are reads, safe to
        repeat, so they are repeated whole here, on what the client's own backoff helper calls transient (its
        status list and exception types), waiting what ``Retry-After`` says or backing off exponentially like
        the client. A download repeated after a failure resumes from the client's cache. Writes are never
        repeated: a commit whose answer was lost may have landed.

        What the client already retried is not retried again (the waits would multiply): `statuses` and
        `exceptions` say what this call may repeat, and a `LocalEntryNotFoundError` (raised after the client's
        own retries of a file's HEAD) ends it.
        """
        wait = self.retry_wait
        for attempt in range(self.max_retries + 1):
            try:
                return call()
            except Exception as err:  # noqa: BLE001 - filtered by _transient just below
                delay = _transient(err, statuses, exceptions)
                if delay is None or attempt >= self.max_retries:
                    err.hf_soups_retries = attempt  # type: ignore[attr-defined] - read by _translate's message
                    raise
                pause = min(float(delay), 60.0) if delay >= 0 else wait
                logger.warning("%s failed (%s); retrying in %.1fs [retry %d/%d]", what,
                               self.redact(_first_line(err)), pause, attempt + 1, self.max_retries)
                time.sleep(pause)
                wait = min(wait * 2, 8.0)
        raise AssertionError("unreachable")  # pragma: no cover

    # -- errors ----------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _translate(
        self, ref: str, *, repo_id: str, revision: Optional[str] = None, filename: Optional[str] = None
    ) -> Iterator[None]:
        """Turn the client's errors into hf-soups errors that name the candidate and the fix."""
        try:
            yield
        except GatedRepoError as err:
            raise AuthenticationError(
                f"{repo_id} is gated and this token cannot read it",
                candidate=ref,
                hint=f"Accept the conditions on the repo page, then pass a token (HF_TOKEN or --token).",
            ) from err
        except RevisionNotFoundError as err:
            raise CandidateNotFoundError(
                f"revision {revision!r} does not exist in {repo_id}",
                candidate=ref,
                hint=f"Check the branch, tag or commit sha (list them with `HfApi().list_repo_refs({repo_id!r})`).",
            ) from err
        except LocalEntryNotFoundError as err:  # the client could not reach the Hub and nothing was cached
            cause = err.__cause__ or err.__context__ or err
            raise HubError(
                f"cannot download from {repo_id} at {revision}: {self.redact(_first_line(cause))}",
                candidate=ref,
                hint="Check the network or HF_ENDPOINT and retry; finished files stay in the cache.",
            ) from err
        except EntryNotFoundError as err:
            raise CandidateNotFoundError(
                f"file {filename!r} does not exist in {repo_id} at {revision}",
                candidate=ref,
                hint="Check that the repo holds a complete model at that revision.",
            ) from err
        except RepositoryNotFoundError as err:
            if _status(err) == 401:
                # The Hub answers 401 to an unauthenticated request for a missing *or* a private repo: it will not
                # say which. The error is both a lookup error and an authentication error, so callers catching
                # either one see it.
                raise RepoNotVisibleError(
                    f"repo {repo_id} does not exist, or it is private and no valid token was sent",
                    candidate=ref,
                    hint="Check the name; for a private repo pass a token that can read it (HF_TOKEN or --token).",
                ) from err
            raise CandidateNotFoundError(
                f"repo {repo_id} does not exist, or this token cannot read it",
                candidate=ref,
                hint="Check the name, and that the token's account (`hf auth whoami`) can read the repo.",
            ) from err
        except HfHubHTTPError as err:
            raise HubError(
                f"the Hub failed on {repo_id}"
                + (f" after {err.hf_soups_retries} retries" if getattr(err, "hf_soups_retries", 0) else "")
                + f": {self.redact(_first_line(err))}",
                candidate=ref,
                hint="Retry later; downloads resume from the cache.",
            ) from err
        except (OSError, *_TRANSIENT_EXCEPTIONS) as err:
            raise HubError(
                f"cannot reach the Hub at {self.endpoint}: {self.redact(_first_line(err))}",
                candidate=ref,
                hint="Check the network or HF_ENDPOINT; set HF_HUB_OFFLINE=1 to use only cached files.",
            ) from err


def _first_line(err: BaseException) -> str:
    """The first line of an error, plus what the Hub said (``X-Error-Message``) for an HTTP error."""
    text = str(err).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    server = getattr(err, "server_message", None)
    if server and server.strip() and server.strip() not in line:
        line = f"{line} ({server.strip().splitlines()[0]})"
    return line


def _transient(
    err: BaseException,
    statuses: Sequence[int] = _TRANSIENT_STATUSES,
    exceptions: Tuple[type, ...] = _TRANSIENT_EXCEPTIONS,
) -> Optional[float]:
    """How long to wait before retrying `err` (-1: the default backoff), or None when it is not to be retried.

    An HTTP error counts when its status is in `statuses` (a ``Retry-After`` header sets the wait); other
    exceptions when they (or the exception they were raised from) are one of `exceptions`.
    """
    if isinstance(err, (RepositoryNotFoundError, RevisionNotFoundError, LocalEntryNotFoundError)):
        return None
    if isinstance(err, HfHubHTTPError):
        if _status(err) not in statuses:
            return None
        after = _parse_retry_after(err.response.headers) if err.response is not None else None
        return float(after) if after is not None else -1.0
    current: Optional[BaseException] = err
    for _ in range(3):
        if current is None:
            break
        if exceptions and isinstance(current, exceptions):
            return -1.0
        current = current.__cause__
    return None


def _status(err: HfHubHTTPError) -> Optional[int]:
    response = getattr(err, "response", None)
    return getattr(response, "status_code", None)


def file_sizes(info: ModelInfo) -> Dict[str, Optional[int]]:
    """Map each file of a repo to its size in bytes (None when the Hub did not say)."""
    return {s.rfilename: s.size for s in (info.siblings or [])}


def card_data_dict(info: ModelInfo) -> dict:
    """The card metadata of a repo as a plain dict (empty when it has no card)."""
    data = info.card_data
    if data is None:
        return {}
    return data.to_dict() if hasattr(data, "to_dict") else dict(data)


def list_files(info: ModelInfo) -> List[str]:
    """The files of a repo at the revision `info` was read at."""
    return [s.rfilename for s in (info.siblings or [])]
