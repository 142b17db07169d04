"""Candidates: the models that may go into a soup.

A candidate is named by a Hub reference (``owner/name``, ``owner/name@revision`` with a branch, tag, full or
short commit sha) or a local folder. :meth:`Candidate.resolve` pins a Hub reference to a commit sha (a repo that
gets a new commit during a run does not change what is souped) and reads everything the lineage checks need
without downloading a weight file: the file list, ``config.json``, the model card metadata, the provenance that
hf-soups wrote, and the safetensors headers (names, shapes, dtypes). Weights download lazily, at the pinned sha,
with :meth:`Candidate.fetch`.

Only safetensors weights are read unless the user opts into pickle (``allow_pickle=True``). Nothing here sets
``trust_remote_code``.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .errors import (
    CandidateNotFoundError,
    InvalidReferenceError,
    InvalidWeightsError,
    RecipeError,
    UnsafeWeightsError,
)
from .hub import Hub, Spec, card_data_dict, list_files
from .progress import get_logger

logger = get_logger(__name__)

#: The file in which hf-soups records how an ingredient was trained (written by `SoupCallback`).
INGREDIENT_FILE = "hf_soups_ingredient.json"
#: The file in which hf-soups records how a soup was made (the recipe schema).
SOUP_FILE = "soup.json"

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
#: Files never fetched with a candidate: other frameworks' weights and exports.
_FOREIGN = ["*.h5", "*.msgpack", "*.onnx", "*.onnx_data", "*.ot", "*.tflite", "*.gguf", "onnx/*", "openvino/*"]
_SHA_RE = re.compile(r"^[0-9a-f]{7,40}$")
_REV_RE = re.compile(r"^[A-Za-z0-9._/\-]+$")
_REPO_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._\-]*/)?[A-Za-z0-9][A-Za-z0-9._\-]*$")


def parse_reference(ref: str) -> tuple[Optional[str], Optional[str], Optional[Path]]:
    """Split a candidate reference into (repo_id, revision, local_path).

    A reference is a local folder when it exists as a directory or starts with ``.``, ``/`` or ``~``;
    otherwise ``owner/name[@revision]``.

    Raises:
        InvalidReferenceError: the repo id or revision is malformed or tries path tricks (``..``).

    Example:
        >>> parse_reference("org/bert-sst2@3f1c9e2")
        ('org/bert-sst2', '3f1c9e2', None)
    """
    text = ref.strip()
    if not text:
        raise InvalidReferenceError("empty candidate reference", hint="Name a Hub repo (org/model) or a folder.")
    try:
        as_path = Path(text).expanduser()
    except RuntimeError as err:  # "~user/..." for a user that does not exist
        raise InvalidReferenceError(
            f"{text!r} is not a valid Hub repo id, nor a folder ({err})",
            hint="Use owner/name for a Hub repo; for a folder give its path (./dir, /abs/dir, ~/dir).",
        ) from err
    if as_path.is_dir() or text.startswith((".", "/", "~")):
        return None, None, as_path
    repo_id, _, revision = text.partition("@")
    if "@" in text and not revision:
        raise InvalidReferenceError("empty revision after '@'", candidate=ref, hint="Write org/model@<branch|sha>.")
    validate_repo_id(repo_id, ref=ref)
    if revision and (".." in revision or revision.startswith("/") or not _REV_RE.match(revision)):
        raise InvalidReferenceError(
            f"{revision!r} is not a valid revision",
            candidate=ref,
            hint="Use a branch or tag name, or a commit sha (7 to 40 hex digits).",
        )
    return repo_id, revision or None, None


def validate_repo_id(repo_id: str, *, ref: Optional[str] = None, what: str = "Hub repo id") -> str:
    """Check that `repo_id` is a plain Hub repo id (``owner/name`` or ``name``), with no path tricks.

    Refused: ``..`` anywhere, a leading ``/`` or ``~``, more than one ``/``, backslashes, and any character
    outside letters, digits, ``-``, ``_`` and ``.`` (a name must start with a letter or digit).

    Args:
        repo_id: the id to check.
        ref: the reference it came from (named in the error).
        what: what the id is for, in the message (``"Hub repo id"``, ``"push target"``).

    Returns:
        `repo_id`, unchanged.

    Raises:
        InvalidReferenceError: the id is malformed.

    Example:
        >>> validate_repo_id("org/bert-sst2")
        'org/bert-sst2'
    """
    if (not isinstance(repo_id, str) or ".." in repo_id or repo_id.startswith(("/", "~")) or repo_id.count("/") > 1
            or not _REPO_RE.match(repo_id)):
        hint = "Use owner/name (letters, digits, '-', '_', '.'; no '..', no leading '/')"
        if ref is not None:
            hint += ", optionally @revision; for a local folder start with ./ or /"
        raise InvalidReferenceError(f"{repo_id!r} is not a valid {what}", candidate=ref, hint=hint + ".")
    return repo_id


@dataclass
class Candidate:
    """A model that may go into a soup, pinned once resolved.

    Args:
        ref: the reference as the user wrote it (``org/model@rev`` or a folder).
        allow_pickle: accept `.bin`/`.pt` weights when no safetensors exist (unsafe: pickle runs code).

    Attributes (filled by :meth:`resolve`):
        repo_id, revision, local_path: the parsed reference.
        sha: the commit sha the candidate is pinned to (Hub), or the content hash of the folder (local).
        files: the file list at that commit.
        config: the parsed ``config.json``.
        card_data: the model card metadata.
        provenance: what hf-soups recorded about it (``hf_soups_ingredient.json`` or ``soup.json``), if any.
        tensor_specs: name -> (dtype, shape), from safetensors headers.
        tokenizer_hash: a hash of the tokenizer's vocabulary files (None when it ships no tokenizer).

    Example:
        >>> c = Candidate("org/bert-sst2@main").resolve()          # doctest: +SKIP
        >>> c.sha, len(c.tensor_specs)                               # doctest: +SKIP
    """

    ref: str
    allow_pickle: bool = False
    repo_id: Optional[str] = None
    revision: Optional[str] = None
    local_path: Optional[Path] = None
    sha: Optional[str] = None
    files: List[str] = field(default_factory=list)
    config: Dict[str, Any] = field(default_factory=dict)
    card_data: Dict[str, Any] = field(default_factory=dict)
    provenance: Optional[Dict[str, Any]] = None
    tensor_specs: Dict[str, Spec] = field(default_factory=dict)
    tokenizer_hash: Optional[str] = None
    _folder: Optional[Path] = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.repo_id, self.revision, self.local_path = parse_reference(self.ref)

    # -- identity --------------------------------------------------------------------------------------------

    @property
    def is_local(self) -> bool:
        """True for a local folder, False for a Hub repo."""
        return self.local_path is not None

    @property
    def name(self) -> str:
        """A short display name: the repo id, or the folder name."""
        return self.repo_id if self.repo_id else str(self.local_path)

    @property
    def pinned_ref(self) -> str:
        """The reference pinned to its sha (``org/model@<sha>``), or the folder path."""
        if self.is_local:
            return str(self.local_path)
        return f"{self.repo_id}@{self.sha}" if self.sha else self.ref

    @property
    def resolved(self) -> bool:
        """Whether :meth:`resolve` has run."""
        return self.sha is not None

    def weight_files(self) -> List[str]:
        """The safetensors weight files (shards included), sorted."""
        return sorted(f for f in self.files if f.endswith(".safetensors") and "/" not in f)

    def pickle_files(self) -> List[str]:
        """The pickle weight files, sorted."""
        return sorted(f for f in self.files if f.endswith(PICKLE_SUFFIXES) and "/" not in f)

    # -- resolving -------------------------------------------------------------------------------------------

    def resolve(self, hub: Optional[Hub] = None) -> "Candidate":
        """Pin the candidate and read its metadata, without downloading any weight file.

        Args:
            hub: the Hub connection (a default `Hub()` when None); unused for local folders.

        Returns:
            self, resolved.

        Raises:
            CandidateNotFoundError: the repo, revision or folder does not exist, or holds no weights.
            UnsafeWeightsError: only pickle weights exist and `allow_pickle` is False.
            InvalidWeightsError: a safetensors header is malformed.
        """
        if self.is_local:
            self._resolve_local()
        else:
            self._resolve_hub(hub or Hub())
        return self

    def _resolve_local(self) -> None:
        path = self.local_path
        assert path is not None
        if not path.is_dir():
            where = "" if path.is_absolute() else f" ({path.absolute()})"
            raise CandidateNotFoundError(
                f"folder {path} does not exist{where}", candidate=self.ref,
                hint="Check the path (a relative path is read from the current folder).",
            )
        self.files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
        self._check_weights_present()
        self.config = _read_json(path / "config.json", self.ref) if (path / "config.json").exists() else {}
        self.card_data = _local_card_data(path / "README.md")
        self.provenance = _read_provenance(lambda f: path / f if (path / f).exists() else None, self.files, self.ref)
        _check_shard_index(lambda f: path / f, self.files, self.ref, where=str(path))
        self.tensor_specs = read_local_specs(path, self.weight_files(), self.ref) if self.weight_files() else {}
        self.tokenizer_hash = tokenizer_fingerprint(lambda f: path / f, self.files)
        self.sha = folder_hash(path)
        self._folder = path

    def _resolve_hub(self, hub: Hub) -> None:
        assert self.repo_id is not None
        info = hub.repo_info(self.repo_id, self.revision, ref=self.ref)
        self.sha = info.sha
        self.files = list_files(info)
        self._check_weights_present()
        self.card_data = card_data_dict(info)
        if "config.json" in self.files:
            self.config = _read_json(hub.download(self.repo_id, "config.json", self.sha, ref=self.ref), self.ref)
        self.provenance = _read_provenance(
            lambda f: hub.download(self.repo_id, f, self.sha, ref=self.ref), self.files, self.ref  # type: ignore[arg-type]
        )
        if self.weight_files():
            _check_shard_index(
                lambda f: hub.download(self.repo_id, f, self.sha, ref=self.ref),  # type: ignore[arg-type]
                self.files, self.ref, where=f"{self.repo_id}@{str(self.sha)[:12]}",
            )
            self.tensor_specs = hub.safetensors_specs(self.repo_id, self.sha, ref=self.ref)
            self._check_remote_headers(hub, info)
        self.tokenizer_hash = tokenizer_fingerprint(
            lambda f: hub.download(self.repo_id, f, self.sha, ref=self.ref), self.files  # type: ignore[arg-type]
        )
        logger.info("resolved %s to %s", self.ref, self.sha)

    def _check_remote_headers(self, hub: Hub, info: Any) -> None:
        """Validate the Hub's safetensors headers against the file sizes it reports, before any download.

        Uses `Hub.safetensors_layout` (file -> header dict with ``data_offsets``) when the Hub connection offers
        it. The header length is not known from the layout, so the data size is bounded from above by the file
        size minus the shortest encoding of the header; offsets past that are past the end of the file. Files
        are validated exactly again once downloaded (:meth:`fetch`).
        """
        layout_of = getattr(hub, "safetensors_layout", None)
        if layout_of is None:
            return
        from .hub import file_sizes

        sizes = file_sizes(info)
        for fname, header in layout_of(self.repo_id, self.sha, ref=self.ref).items():
            size = sizes.get(fname)
            if not size:
                continue
            shortest = len(json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
            validate_safetensors_header(header, size - 8 - shortest, ref=self.ref, name=fname, upper_bound=True)

    def _check_weights_present(self) -> None:
        if self.weight_files():
            return
        if self.pickle_files():
            if self.allow_pickle:
                warnings.warn(
                    f"{self.ref}: loading pickle weights {self.pickle_files()}; pickle can run arbitrary code.",
                    stacklevel=3,
                )
                return
            raise UnsafeWeightsError(
                f"only pickle weights ({', '.join(self.pickle_files())}), which can run arbitrary code when loaded",
                candidate=self.ref,
                hint=(
                    "Convert them to safetensors (load with from_pretrained and save_pretrained(..., "
                    "safe_serialization=True), or the Hub's safetensors convert Space), or pass allow_pickle=True "
                    "(--allow-pickle) if you trust the author."
                ),
            )
        raise CandidateNotFoundError(
            "no model weights (no *.safetensors file)",
            candidate=self.ref,
            hint="Point at a folder or revision that holds a saved model (save_pretrained writes one).",
        )

    # -- fetching --------------------------------------------------------------------------------------------

    def fetch(self, hub: Optional[Hub] = None) -> Path:
        """Download the candidate at its pinned sha (weights, config, tokenizer) and return the local folder.

        Downloads go through the `huggingface_hub` cache, so a second call costs nothing. Pickle weights are
        only fetched when `allow_pickle` is True; other frameworks' weights are never fetched.
        """
        if self._folder is not None:
            return self._folder
        if not self.resolved:
            self.resolve(hub)
            if self._folder is not None:
                return self._folder
        hub = hub or Hub()
        ignore = list(_FOREIGN)
        if not self.allow_pickle or self.weight_files():
            ignore += [f"*{s}" for s in PICKLE_SUFFIXES] + ["*.bin.index.json"]
        assert self.repo_id is not None and self.sha is not None
        allow = [f for f in self.files if not any(Path(f).match(p) for p in ignore)]
        folder = hub.snapshot(self.repo_id, self.sha, allow_patterns=allow, ref=self.ref)
        # what the Hub sent is checked like a local file before any tensor is read from it
        read_local_specs(folder, self.weight_files(), self.ref)
        self._folder = folder
        return self._folder

    def fetch_metadata(self, hub: Optional[Hub] = None) -> Path:
        """Download everything but the weights (config, tokenizer, card) at the pinned sha; return the folder.

        Enough for `AutoConfig` / `AutoTokenizer.from_pretrained`, so the evaluation set-up (columns, labels,
        metric) can be checked before any weight is downloaded. A local folder is returned as it is.

        Raises:
            CandidateNotFoundError, HubError: as :meth:`resolve`.
        """
        if self.is_local:
            assert self.local_path is not None
            return self.local_path
        if not self.resolved:
            self.resolve(hub)
        hub = hub or Hub()
        skip = list(_FOREIGN) + ["*.safetensors"] + [f"*{s}" for s in PICKLE_SUFFIXES]
        allow = [f for f in self.files if not any(Path(f).match(p) for p in skip)]
        assert self.repo_id is not None and self.sha is not None
        return hub.snapshot(self.repo_id, self.sha, allow_patterns=allow or ["config.json"], ref=self.ref)

    def describe(self) -> Dict[str, Any]:
        """The provenance record of this candidate (what `soup.json` stores for an ingredient)."""
        record: Dict[str, Any] = {"ref": self.ref}
        if self.is_local:
            record.update(path=str(self.local_path), content_hash=self.sha)
        else:
            record.update(repo_id=self.repo_id, revision=self.revision, sha=self.sha)
        hp = hyperparameters(self)
        if hp:
            record["hyperparameters"] = hp
        return record


def hyperparameters(candidate: Candidate) -> Dict[str, Any]:
    """Training hyper-parameters a candidate records (hf-soups provenance first, then card metadata)."""
    prov = candidate.provenance or {}
    hp = prov.get("hyperparameters") or candidate.card_data.get("hyperparameters") or {}
    return dict(hp) if isinstance(hp, dict) else {}


def resolve_all(
    refs: Sequence[str | Candidate],
    hub: Optional[Hub] = None,
    *,
    allow_pickle: bool = False,
    minimum: int = 1,
) -> List[Candidate]:
    """Resolve every reference; drop (with a warning) candidates pinned to the same commit as an earlier one.

    Every reference is parsed before any is resolved, so a malformed one fails before the first Hub call.

    Args:
        refs: references or :class:`Candidate` objects.
        hub: the Hub connection (default `Hub()`).
        allow_pickle: accept pickle-only candidates.
        minimum: how many distinct commits must remain (2 for a soup).

    Raises:
        InvalidReferenceError, CandidateNotFoundError, UnsafeWeightsError: as :meth:`Candidate.resolve`.
        RecipeError: fewer than `minimum` distinct commits remain once duplicates are dropped.

    Example:
        >>> resolve_all(["org/run-a", "org/run-a@main", "org/run-b"], minimum=2)   # doctest: +SKIP
        UserWarning: org/run-a@main is the same commit as org/run-a; it is used once.
    """
    hub = hub or Hub()
    cands = [ref if isinstance(ref, Candidate) else Candidate(ref, allow_pickle=allow_pickle) for ref in refs]
    out: List[Candidate] = []
    seen: Dict[str, str] = {}
    dropped: List[str] = []
    for cand in cands:
        if not cand.resolved:
            cand.resolve(hub)
        key = f"{cand.repo_id}@{cand.sha}" if not cand.is_local else f"local:{cand.sha}"
        if key in seen:
            same = "has the same content as" if cand.is_local else "is the same commit as"
            warnings.warn(f"{cand.ref} {same} {seen[key]}; it is used once.", stacklevel=2)
            dropped.append(f"{cand.ref} {same} {seen[key]}")
            continue
        seen[key] = cand.ref
        out.append(cand)
    if len(out) < minimum:
        raise RecipeError(
            f"only {len(out)} distinct candidate(s) once duplicates are dropped"
            + (f" ({'; '.join(dropped)})" if dropped else ""),
            hint=f"Name at least {minimum} distinct commits (other repos, or other revisions of one repo).",
        )
    return out


# -- local helpers ---------------------------------------------------------------------------------------------


def read_local_specs(folder: Path, weight_files: Sequence[str], ref: str) -> Dict[str, Spec]:
    """Read tensor names, dtypes and shapes from local safetensors headers, validating them (no tensor data
    is read).

    Raises:
        InvalidWeightsError: a header is malformed (see :func:`check_safetensors_header`).
    """
    specs: Dict[str, Spec] = {}
    for name in weight_files:
        specs.update(check_safetensors_header(Path(folder) / name, ref=ref, name=name))
    return specs


#: Bytes per element of each safetensors dtype (sub-byte and unknown dtypes are not size-checked).
DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E4M3FN": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
    "C64": 8,
}
_CORRUPT_HINT = (
    "The file is truncated or corrupted (or not safetensors). Re-save the model with save_pretrained(..., "
    "safe_serialization=True) and publish it again; if only a download is damaged, delete it from the Hugging Face "
    "cache (HF_HUB_CACHE) and retry."
)
#: The largest header accepted (the safetensors library's own limit is 100 MB).
MAX_HEADER_BYTES = 100_000_000


def check_safetensors_header(path: Path, *, ref: str, name: Optional[str] = None) -> Dict[str, Spec]:
    """Validate a safetensors file's header against the file before anything reads a tensor from it.

    Checks: the 8-byte header length fits in the file; the header is a JSON object; every tensor has a dtype,
    a shape of non-negative integers and ``data_offsets`` ``[begin, end]`` inside the data section; ``end -
    begin`` equals what the dtype and shape need; no two tensors overlap.

    Args:
        path: the file.
        ref: the candidate it belongs to (named in errors).
        name: the file name to show (default: the path's name).

    Returns:
        tensor name -> (dtype, shape).

    Raises:
        InvalidWeightsError: the first problem found, naming the candidate and the file.

    Example:
        >>> check_safetensors_header(Path("model/model.safetensors"), ref="org/model")   # doctest: +SKIP
        {'bert.embeddings.word_embeddings.weight': ('F32', (30522, 768)), ...}
    """
    import struct

    shown = name or path.name

    def bad(problem: str) -> InvalidWeightsError:
        return InvalidWeightsError(
            f"{shown} is not a valid safetensors file: {problem}",
            candidate=ref,
            hint=_CORRUPT_HINT,
        )

    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise bad(f"the file has {size} bytes, too few for the 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                raise bad(f"the header length ({n} bytes) is larger than the rest of the file ({size - 8} bytes)")
            if n > MAX_HEADER_BYTES:
                raise bad(f"the header length ({n} bytes) is over the {MAX_HEADER_BYTES}-byte limit")
            raw = fh.read(n)
    except OSError as err:
        raise bad(f"cannot be read ({err})") from err
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as err:
        raise bad(f"the header is not valid JSON ({err})") from err
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    return validate_safetensors_header(header, size - 8 - n, ref=ref, name=shown)


def validate_safetensors_header(
    header: Dict[str, Any], data_size: int, *, ref: str, name: str, upper_bound: bool = False
) -> Dict[str, Spec]:
    """Validate a parsed safetensors header against the size of the file's data section.

    Args:
        header: the parsed JSON header (``{tensor: {"dtype", "shape", "data_offsets"}, "__metadata__": ...}``).
        data_size: bytes after the header (file size - 8 - header length); with `upper_bound`, only a bound on
            it (used before download, when the Hub tells the file size but not the header length).
        ref: the candidate (named in errors).
        name: the file (named in errors).
        upper_bound: `data_size` is an upper bound, not the exact size.

    Returns:
        tensor name -> (dtype, shape).

    Raises:
        InvalidWeightsError: a tensor without dtype/shape/offsets, offsets outside the data, a size that does not
            match dtype x shape, or two tensors that overlap.
    """

    def bad(problem: str) -> InvalidWeightsError:
        return InvalidWeightsError(
            f"{name} is not a valid safetensors file: {problem}",
            candidate=ref,
            hint=_CORRUPT_HINT,
        )

    specs: Dict[str, Spec] = {}
    spans = []
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise bad(f"tensor {key!r} has no description")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if not isinstance(dtype, str):
            raise bad(f"tensor {key!r} has no dtype")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise bad(f"tensor {key!r} has an invalid shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
            raise bad(f"tensor {key!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        if not 0 <= begin <= end:
            raise bad(f"tensor {key!r} has data_offsets {offsets} that do not make a range")
        if end > data_size:
            if upper_bound:
                raise bad(f"tensor {key!r} ends at byte {end} of the data, beyond the end of the file (at most "
                          f"{data_size} bytes of data)")
            raise bad(f"tensor {key!r} ends at byte {end} of the data, beyond its end ({data_size} bytes)")
        if dtype in DTYPE_SIZES:
            need = DTYPE_SIZES[dtype]
            for d in shape:
                need *= d
            if end - begin != need:
                raise bad(f"tensor {key!r} declares {end - begin} bytes but a {dtype} tensor of shape {shape} "
                          f"needs {need}")
        spans.append((begin, end, key))
        specs[key] = (dtype, tuple(shape))
    spans.sort()
    for (b1, e1, k1), (b2, e2, k2) in zip(spans, spans[1:]):
        if b2 < e1:
            raise bad(f"tensors {k1!r} (bytes {b1}-{e1}) and {k2!r} (bytes {b2}-{e2}) overlap")
    return specs


def _check_shard_index(get, files: Sequence[str], ref: str, *, where: str) -> None:
    """A sharded checkpoint's index must name only shards that exist (checked before any is downloaded)."""
    index = "model.safetensors.index.json"
    if index not in files:
        return
    try:
        weight_map = json.loads(Path(get(index)).read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise InvalidWeightsError(
            f"{index} cannot be read: {err}", candidate=ref,
            hint="Re-save the model with save_pretrained; the index is corrupted.",
        ) from err
    present = {f for f in files if f.endswith(".safetensors") and "/" not in f}
    missing = [s for s in shards if s not in present]
    if missing:
        raise CandidateNotFoundError(
            f"{index} names {', '.join(missing)}, which is not in {where}",
            candidate=ref,
            hint="The upload is incomplete: push the missing shard(s), or pin a revision that has them.",
        )


def folder_hash(folder: Path) -> str:
    """A content hash of a local model folder (every file but the card), standing in for a commit sha."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == "README.md" or rel.startswith("."):
            continue
        digest.update(rel.encode() + b"\0")
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:40]


#: Files that define a tokenizer's vocabulary (settings such as padding side do not matter to a soup).
TOKENIZER_FILES = (
    "tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
    "tokenizer.model",
)


def tokenizer_fingerprint(get, files: Sequence[str]) -> Optional[str]:
    """Hash the vocabulary-defining tokenizer files (small files; never weights). None without a tokenizer.

    For `tokenizer.json` only the model (vocabulary, merges), added tokens, normalizer and pre-tokenizer count:
    truncation and padding settings differ between runs without changing what the ids mean.
    """
    present = [f for f in TOKENIZER_FILES if f in files]
    if not present:
        return None
    digest = hashlib.sha256()
    for name in present:
        raw = Path(get(name)).read_bytes()
        if name == "tokenizer.json":
            data = json.loads(raw)
            keep = {k: data.get(k) for k in ("model", "added_tokens", "normalizer", "pre_tokenizer")}
            raw = json.dumps(keep, sort_keys=True).encode()
        digest.update(name.encode() + b"\0" + hashlib.sha256(raw).digest())
    return digest.hexdigest()[:16]


def _read_json(path: Path, ref: str) -> Dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise CandidateNotFoundError(
            f"{Path(path).name} cannot be read: {err}", candidate=ref, hint="Re-save the model with save_pretrained."
        ) from err


def _local_card_data(readme: Path) -> Dict[str, Any]:
    if not readme.exists():
        return {}
    from huggingface_hub import metadata_load

    return dict(metadata_load(readme) or {})


def _read_provenance(get, files: Sequence[str], ref: str) -> Optional[Dict[str, Any]]:
    for name in (INGREDIENT_FILE, SOUP_FILE):
        if name in files:
            path = get(name)
            if path is not None:
                return _read_json(path, ref)
    return None
