"""Point the Hugging Face libraries of this process at another Hub endpoint, and put everything back after.

`huggingface_hub`, `transformers`, `datasets` and `evaluate` read ``HF_ENDPOINT`` (and ``HF_HUB_DISABLE_XET``)
once, when they are imported, and keep derived values in module attributes. Setting the environment variable
is therefore not enough for modules already imported: each cached value is patched here, in place.

Modules imported *while* the patch is active read the patched environment and so see the local endpoint too;
when the patch ends, their attributes are reset to what they would have computed from the original
environment, so that nothing keeps pointing at a server that no longer runs.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional

_DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUTHY = {"1", "ON", "YES", "TRUE"}
_MISSING = object()


@dataclass(frozen=True)
class _Target:
    """One module attribute: its value while patched, and the un-patched default for a module imported meanwhile."""

    module: str
    attr: str
    inside: Any
    outside: Any


def _targets(endpoint: str, original: str, env: Dict[str, Optional[str]]) -> List[_Target]:
    def both(module: str, attr: str, suffix: str = "") -> _Target:
        return _Target(module, attr, endpoint + suffix, original + suffix)

    resolve = "/{repo_id}/resolve/{revision}/{filename}"
    xet_off_outside = (env["HF_HUB_DISABLE_XET"] or "").upper() in _TRUTHY
    counts_outside = (env["HF_UPDATE_DOWNLOAD_COUNTS"] or "AUTO").upper() in _TRUTHY | {"AUTO"}
    return [
        both("huggingface_hub.constants", "ENDPOINT"),
        both("huggingface_hub.constants", "HUGGINGFACE_CO_URL_TEMPLATE", resolve),
        # The server speaks the legacy LFS protocol, so uploads must not go through Xet:
        # utils/_runtime.is_xet_available() reads this constant, and both _commit_api._upload_files (LFS vs Xet
        # upload) and HfApi.upload_folder (one create_commit vs the pipelined multi-commit upload) branch on it.
        _Target("huggingface_hub.constants", "HF_HUB_DISABLE_XET", True, xet_off_outside),
        # (`huggingface_hub.HUGGINGFACE_CO_URL_TEMPLATE` is a lazy export read from `constants` on each access.)
        # transformers caches one HfApi (and so its endpoint) on first use.
        _Target("transformers.utils.hub", "_hf_api", None, None),
        both("datasets.config", "HF_ENDPOINT"),
        both("datasets.config", "HUB_DATASETS_URL", "/datasets/{repo_id}/resolve/{revision}/{path}"),
        both("evaluate.config", "HF_ENDPOINT"),
        both("evaluate.config", "HF_LIST_ENDPOINT", "/api/spaces?filter={type}"),
        both("evaluate.config", "HUB_EVALUATE_URL", "/spaces/{path}/resolve/{revision}/{name}"),
        both("evaluate.inspect", "HF_LIST_ENDPOINT", "/api/spaces?filter={type}"),
        # evaluate.load() pings S3 to count downloads: never leave the machine while pointed at a local hub.
        _Target("evaluate.config", "HF_UPDATE_DOWNLOAD_COUNTS", False, counts_outside),
    ]


def _clear_fs_cache() -> None:
    module = sys.modules.get("huggingface_hub.hf_file_system")
    if module is not None:
        module.HfFileSystem.clear_instance_cache()  # instances keep the endpoint they were built with


@contextlib.contextmanager
def patched_client(endpoint: str, cache_dir: Optional[str] = None) -> Iterator[None]:
    """Point `huggingface_hub` (and `transformers`, `datasets`, `evaluate`) at `endpoint` while active.

    Sets ``HF_ENDPOINT`` and ``HF_HUB_DISABLE_XET=1`` in ``os.environ`` and patches the module attributes the
    libraries derived from them at import time (see the module docstring). Never sets ``HF_TOKEN``.

    Args:
        endpoint: the Hub endpoint, e.g. ``http://127.0.0.1:8080``.
        cache_dir: when given, also use this folder as the Hub download cache (``HF_HUB_CACHE``).

    Not thread-safe: enter and leave it from one thread while no other thread talks to the Hub.
    """
    import huggingface_hub.constants  # noqa: F401 - always patched, and cheap to import
    import huggingface_hub.hf_api as hf_api

    env_keys = ("HF_ENDPOINT", "HF_HUB_DISABLE_XET", "HF_HUB_CACHE", "HF_UPDATE_DOWNLOAD_COUNTS")
    saved_env = {k: os.environ.get(k) for k in env_keys}
    original = (saved_env["HF_ENDPOINT"] or _DEFAULT_ENDPOINT).rstrip("/")
    targets = _targets(endpoint, original, saved_env)
    if cache_dir:
        import huggingface_hub.constants as constants

        targets += [_Target("huggingface_hub.constants", name, str(cache_dir), getattr(constants, name))
                    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE")]
    saved: Dict[_Target, Any] = {}
    saved_api_endpoint = hf_api.api.endpoint
    try:
        for target in targets:
            module = sys.modules.get(target.module)
            if module is None:
                continue
            saved[target] = getattr(module, target.attr, _MISSING)
            setattr(module, target.attr, target.inside)
        hf_api.api.endpoint = endpoint  # the module-level HfApi behind huggingface_hub's function aliases
        os.environ["HF_ENDPOINT"] = endpoint
        os.environ["HF_HUB_DISABLE_XET"] = "1"
        if cache_dir:
            os.environ["HF_HUB_CACHE"] = str(cache_dir)
        _clear_fs_cache()
        yield
    finally:
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        hf_api.api.endpoint = saved_api_endpoint
        for target in reversed(targets):
            module = sys.modules.get(target.module)
            if module is None:
                continue
            if target in saved:
                if saved[target] is _MISSING:
                    vars(module).pop(target.attr, None)
                else:
                    setattr(module, target.attr, saved[target])
            else:  # imported while patched: back to its un-patched default
                setattr(module, target.attr, target.outside)
        _clear_fs_cache()
