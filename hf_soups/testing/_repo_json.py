"""The JSON documents LocalHub answers with, shaped like the Hub's (the fields `huggingface_hub` parses).

Pure functions of the store's data: repo info (``ModelInfo``/``DatasetInfo``/``SpaceInfo``), refs, tree
listings, paths-info, commit lists, whoami, and README front-matter parsing (``cardData``).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Dict, Iterable, List, Optional, Tuple

from ._store import Commit, EntryNotFound, FileEntry, HubStore, Repo, iso_date, lfs_pointer

_FRONT_MATTER = re.compile(r"\A---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(\r?\n|\Z)", re.S)


def front_matter(text: str) -> Optional[Dict[str, Any]]:
    """The YAML metadata block at the top of a README (the Hub's ``cardData``), or None when there is none.

    Raises:
        ValueError: when the block is not valid YAML or not a mapping.
    """
    import yaml  # PyYAML, a dependency of hf-soups; only needed when a README is read

    match = _FRONT_MATTER.match(text)
    if match is None:
        return None
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as err:
        raise ValueError(f"Invalid YAML in the README metadata: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError("The README metadata must be a YAML mapping.")
    return data


#: The values the Hub accepts for ``base_model_relation``.
BASE_MODEL_RELATIONS = ("adapter", "merge", "quantized", "finetune")


def validate_metadata(data: Dict[str, Any]) -> List[str]:
    """The Hub's checks on model card metadata that LocalHub reproduces; returns one message per problem.

    Only the checks that catch real mistakes of a card writer: ``base_model`` is a repo id or a list of them,
    ``base_model_relation`` is one the Hub knows, ``tags``/``datasets`` are lists of strings, ``model-index`` is
    a list of ``{name, results}`` entries.
    """
    errors: List[str] = []
    base = data.get("base_model")
    if base is not None and not (isinstance(base, str) or (isinstance(base, list)
                                                          and all(isinstance(b, str) for b in base))):
        errors.append('"base_model" must be a string or a list of strings')
    relation = data.get("base_model_relation")
    if relation is not None and relation not in BASE_MODEL_RELATIONS:
        errors.append(f'"base_model_relation" must be one of {", ".join(BASE_MODEL_RELATIONS)} (got {relation!r})')
    if relation is not None and base is None:
        errors.append('"base_model_relation" needs "base_model"')
    for key in ("tags", "datasets"):
        value = data.get(key)
        if value is not None and not isinstance(value, str) and not (
                isinstance(value, list) and all(isinstance(v, str) for v in value)):
            errors.append(f'"{key}" must be a string or a list of strings')
    index = data.get("model-index")
    if index is not None and not (isinstance(index, list) and all(
            isinstance(m, dict) and "name" in m and isinstance(m.get("results"), list) for m in index)):
        errors.append('"model-index" must be a list of {name, results: [...]} entries')
    return errors


def read_text(store: HubStore, commit: Commit, path: str) -> str:
    """The text of a file of a commit, or ``""`` when it has no such file."""
    entry = commit.files.get(path)
    return store.read_blob(entry.sha256).decode("utf-8", "replace") if entry else ""


def entry_not_found(path: str, revision: str) -> EntryNotFound:
    return EntryNotFound(f"Entry not found: {path} does not exist at revision {revision}.")


def whoami(user: str) -> Dict[str, Any]:
    """The ``/api/whoami-v2`` answer for the hub's single user and its write token."""
    return {
        "type": "user", "id": hashlib.sha1(user.encode()).hexdigest()[:24], "name": user,
        "fullname": "LocalHub user", "email": None, "emailVerified": False, "isPro": False, "orgs": [],
        "auth": {"type": "access_token", "accessToken": {"displayName": "localhub", "role": "write"}},
    }


def _card_data(store: HubStore, commit: Commit) -> Optional[Dict[str, Any]]:
    try:
        return front_matter(read_text(store, commit, "README.md"))
    except ValueError:
        return None


def _as_list(value: Any) -> List[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def _model_config(store: HubStore, commit: Commit) -> Optional[Dict[str, Any]]:
    import json

    text = read_text(store, commit, "config.json")
    try:
        config = json.loads(text) if text else None
    except ValueError:
        return None
    if not isinstance(config, dict):
        return None
    return {k: config[k] for k in ("architectures", "model_type") if k in config}


def repo_info(store: HubStore, repo: Repo, commit: Commit, *, blobs: bool = False) -> Dict[str, Any]:
    """The ``/api/{type}s/{repo_id}[/revision/{rev}]`` answer.

    Args:
        store: the store (to read README.md and config.json).
        repo: the repo.
        commit: the commit the revision resolved to.
        blobs: add ``size``, ``blobId`` and ``lfs`` to each sibling (the client's ``files_metadata=True``).
    """
    card = _card_data(store, commit)
    siblings = []
    for entry in sorted(commit.files.values(), key=lambda e: e.path):
        sibling: Dict[str, Any] = {"rfilename": entry.path}
        if blobs:
            sibling.update(size=entry.size, blobId=entry.git_oid)
            if entry.lfs:
                sibling["lfs"] = {"size": entry.size, "sha256": entry.sha256,
                                  "pointerSize": len(lfs_pointer(entry.sha256, entry.size))}
        siblings.append(sibling)
    author = repo.repo_id.split("/")[0] if "/" in repo.repo_id else None
    info: Dict[str, Any] = {
        "_id": hashlib.sha1(f"{repo.repo_type}/{repo.repo_id}".encode()).hexdigest()[:24],
        "id": repo.repo_id, "author": author, "sha": commit.sha, "lastModified": iso_date(commit.date),
        "createdAt": iso_date(repo.created_at), "private": repo.private, "gated": repo.gated or False,
        "disabled": False, "downloads": 0, "likes": 0, "siblings": siblings,
    }
    tags: List[str] = []
    if card is not None:
        info["cardData"] = card
        tags += _as_list(card.get("tags"))
    if repo.repo_type == "model":
        config = _model_config(store, commit)
        info["modelId"] = repo.repo_id
        if config is not None:
            info["config"] = config
        if card and card.get("library_name"):
            info["library_name"] = card["library_name"]
            tags.append(str(card["library_name"]))
        if card and card.get("pipeline_tag"):
            info["pipeline_tag"] = card["pipeline_tag"]
        if any(p.endswith(".safetensors") for p in commit.files):
            tags.append("safetensors")
        if config and config.get("model_type"):
            tags.append(str(config["model_type"]))
        tags += [f"base_model:{b}" for b in _as_list(card.get("base_model") if card else None)]
        tags += [f"dataset:{d}" for d in _as_list(card.get("datasets") if card else None)]
    elif repo.repo_type == "space":
        info["sdk"] = repo.sdk or (card or {}).get("sdk")
    if card and card.get("license"):
        tags.append(f"license:{card['license']}")
    info["tags"] = list(dict.fromkeys(tags))
    return info


def refs(repo: Repo) -> Dict[str, Any]:
    """The ``/api/{type}s/{repo_id}/refs`` answer."""
    return {
        "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": s} for n, s in repo.branches.items()],
        "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": s} for n, s in repo.tags.items()],
        "converts": [],
        "pullRequests": [{"name": f"refs/pr/{n}", "ref": f"refs/pr/{n}", "targetCommit": s}
                         for n, s in sorted(repo.pull_requests.items())],
    }


def commit_json(commit: Commit) -> Dict[str, Any]:
    """One item of the ``/api/{type}s/{repo_id}/commits/{rev}`` answer."""
    return {"id": commit.sha, "title": commit.title, "message": commit.message, "date": iso_date(commit.date),
            "authors": [{"user": commit.author, "avatar": None}]}


def _file_json(entry: FileEntry) -> Dict[str, Any]:
    data: Dict[str, Any] = {"type": "file", "oid": entry.git_oid, "size": entry.size, "path": entry.path}
    if entry.lfs:
        data["lfs"] = {"oid": entry.sha256, "size": entry.size,
                       "pointerSize": len(lfs_pointer(entry.sha256, entry.size))}
    return data


def _subtree(commit: Commit, folder: str) -> Tuple[Tuple[str, str], ...]:
    prefix = folder + "/"
    return tuple(sorted((p, e.etag) for p, e in commit.files.items() if p.startswith(prefix)))


def _folder_json(commit: Commit, folder: str) -> Dict[str, Any]:
    oid = hashlib.sha1(repr(_subtree(commit, folder)).encode()).hexdigest()
    return {"type": "directory", "oid": oid, "size": 0, "path": folder}


def _last_commit(store: HubStore, repo: Repo, commit: Commit, path: str, folder: bool) -> Dict[str, Any]:
    """The newest commit (on the first-parent chain) that changed `path`."""

    def state(c: Commit) -> Any:
        return _subtree(c, path) if folder else (c.files[path].etag if path in c.files else None)

    chain = list(store.history(repo, commit))
    found = chain[-1]
    for current, parent in zip(chain, chain[1:]):
        if state(current) != state(parent):
            found = current
            break
    return {"id": found.sha, "title": found.title, "date": iso_date(found.date)}


def _with_last_commit(store: HubStore, repo: Repo, commit: Commit, item: Dict[str, Any]) -> Dict[str, Any]:
    item["lastCommit"] = _last_commit(store, repo, commit, item["path"], item["type"] == "directory")
    return item


def tree(store: HubStore, repo: Repo, commit: Commit, path: str, *, recursive: bool,
         expand: bool = False) -> List[Dict[str, Any]]:
    """The ``/api/{type}s/{repo_id}/tree/{rev}[/{path}]`` answer: files and folders under `path`.

    Raises:
        EntryNotFound: when `path` is not a folder of the commit.
    """
    prefix = f"{path}/" if path else ""
    under = sorted((e for p, e in commit.files.items() if p.startswith(prefix)), key=lambda e: e.path)
    if path and not under:
        raise entry_not_found(path, commit.sha)
    files, folders = [], set()
    for entry in under:
        parts = entry.path[len(prefix):].split("/")
        if recursive:
            folders.update(prefix + "/".join(parts[:i]) for i in range(1, len(parts)))
            files.append(_file_json(entry))
        elif len(parts) == 1:
            files.append(_file_json(entry))
        else:
            folders.add(prefix + parts[0])
    items = [_folder_json(commit, f) for f in sorted(folders)] + files
    return [_with_last_commit(store, repo, commit, i) for i in items] if expand else items


def paths_info(store: HubStore, repo: Repo, commit: Commit, paths: Iterable[str], *,
               expand: bool = False) -> List[Dict[str, Any]]:
    """The ``/api/{type}s/{repo_id}/paths-info/{rev}`` answer: the given paths that exist (files or folders)."""
    items = []
    for raw in paths:
        path = raw.strip("/")
        if path in commit.files:
            items.append(_file_json(commit.files[path]))
        elif any(p.startswith(path + "/") for p in commit.files):
            items.append(_folder_json(commit, path))
    return [_with_last_commit(store, repo, commit, i) for i in items] if expand else items
