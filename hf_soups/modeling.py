"""Loading models for evaluation, and writing weights into a live model in place.

A greedy soup evaluates many weight sets on one live model: weights are copied into its tensors in place,
never by building a new model per trial.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import torch

from .errors import EvaluationError


def model_class(config: Dict[str, Any]) -> Any:
    """The `transformers` class named by a config's `architectures` (first entry)."""
    import transformers

    archs = config.get("architectures") or []
    for arch in archs:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    raise EvaluationError(
        f"no transformers class for architectures {archs}",
        hint="hf-soups loads models with the class in config.json `architectures` (trust_remote_code is never set).",
    )


def load_model(folder: str | Path, *, dtype: Optional[torch.dtype] = torch.float32) -> torch.nn.Module:
    """Load a saved model folder with the class its config names, in eval mode.

    Args:
        folder: a `save_pretrained` folder.
        dtype: the dtype to load in (float32 by default: trials are compared in full precision).
    """
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    cls = model_class(config)
    kwargs: Dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = cls.from_pretrained(str(folder), **kwargs)
    model.eval()
    return model


@torch.no_grad()
def copy_state_into(model: torch.nn.Module, tensors: Dict[str, torch.Tensor]) -> None:
    """Copy tensors into the model's parameters and buffers of the same names, in place (dtype cast).

    Names the model ties to another (shared storage) are written once. Unknown names raise.
    """
    state = model.state_dict(keep_vars=True)
    for name, value in tensors.items():
        target = state.get(name)
        if target is None:
            raise KeyError(f"{name} is not a tensor of {type(model).__name__}")
        target.data.copy_(value.to(dtype=target.dtype, device=target.device))


def load_folder_into(model: torch.nn.Module, folder: str | Path) -> None:
    """Copy the weights of a saved folder into a live model in place, one tensor at a time."""
    from safetensors import safe_open

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else [
        "model.safetensors"
    ]
    state = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for fname in files:
            with safe_open(str(folder / fname), framework="pt") as fh:
                for name in fh.keys():
                    if name in state:
                        state[name].data.copy_(fh.get_tensor(name).to(state[name].dtype))
