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

from .errors import CandidateNotFoundError, InvalidReferenceError, InvalidWeightsError, UnsafeWeightsError
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
    as_path = Path(text).expanduser()
    if as_path.is_dir() or text.startswith((".", "/", "~")):
        return None, None, as_path
    repo_id, _, revision = text.partition("@")
    if "@" in text and not revision:
        raise InvalidReferenceError("empty revision after '@'", candidate=ref, hint="Write org/model@<branch|sha>.")
    if ".." in repo_id or repo_id.startswith("/") or repo_id.count("/") > 1 or not _REPO_RE.match(repo_id):
        raise InvalidReferenceError(
            f"{repo_id!r} is not a valid Hub repo id",
            candidate=ref,
            hint="Use owner/name (letters, digits, '-', '_', '.'), optionally @revision; for a folder start with ./",
        )
    if revision and (".." in revision or revision.startswith("/") or not _REV_RE.match(revision)):
        raise InvalidReferenceError(
            f"{revision!r} is not a valid revision",
            candidate=ref,
            hint="Use a branch or tag name, or a commit sha (7 to 40 hex digits).",
        )
    return repo_id, revision or None, None


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
            raise CandidateNotFoundError(
                f"folder {path} does not exist", candidate=self.ref, hint="Check the path (relative to the cwd)."
            )
        self.files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
        self._check_weights_present()
        self.config = _read_json(path / "config.json", self.ref) if (path / "config.json").exists() else {}
        self.card_data = _local_card_data(path / "README.md")
        self.provenance = _read_provenance(lambda f: path / f if (path / f).exists() else None, self.files, self.ref)
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
            self.tensor_specs = hub.safetensors_specs(self.repo_id, self.sha, ref=self.ref)
        self.tokenizer_hash = tokenizer_fingerprint(
            lambda f: hub.download(self.repo_id, f, self.sha, ref=self.ref), self.files  # type: ignore[arg-type]
        )
        logger.info("resolved %s to %s", self.ref, self.sha)

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
        self._folder = hub.snapshot(self.repo_id, self.sha, allow_patterns=allow, ref=self.ref)
        return self._folder

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
    refs: Sequence[str | Candidate], hub: Optional[Hub] = None, *, allow_pickle: bool = False
) -> List[Candidate]:
    """Resolve every reference; drop (with a warning) candidates pinned to the same commit as an earlier one.

    Raises:
        InvalidReferenceError, CandidateNotFoundError, UnsafeWeightsError: as :meth:`Candidate.resolve`.
    """
    hub = hub or Hub()
    out: List[Candidate] = []
    seen: Dict[str, str] = {}
    for ref in refs:
        cand = ref if isinstance(ref, Candidate) else Candidate(ref, allow_pickle=allow_pickle)
        if not cand.resolved:
            cand.resolve(hub)
        key = f"{cand.repo_id}@{cand.sha}" if not cand.is_local else f"local:{cand.sha}"
        if key in seen:
            warnings.warn(f"{cand.ref} is the same commit as {seen[key]}; it is used once.", stacklevel=2)
            continue
        seen[key] = cand.ref
        out.append(cand)
    return out


# -- local helpers ---------------------------------------------------------------------------------------------


def read_local_specs(folder: Path, weight_files: Sequence[str], ref: str) -> Dict[str, Spec]:
    """Read tensor names, dtypes and shapes from local safetensors headers (no tensor data is read).

    `safe_open` validates the header (offsets inside the file, no overlap) before anything is read.

    Raises:
        InvalidWeightsError: a header is malformed.
    """
    from safetensors import safe_open

    specs: Dict[str, Spec] = {}
    for name in weight_files:
        try:
            with safe_open(str(folder / name), framework="pt") as handle:
                for key in handle.keys():
                    sl = handle.get_slice(key)
                    specs[key] = (str(sl.get_dtype()), tuple(int(s) for s in sl.get_shape()))
        except Exception as err:  # safetensors raises SafetensorError / OSError on a bad file
            raise InvalidWeightsError(
                f"{name} is not a valid safetensors file: {err}",
                candidate=ref,
                hint="Re-save the model with save_pretrained; the file may be truncated or corrupted.",
            ) from err
    return specs


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
