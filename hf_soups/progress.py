"""The one place for progress bars and logging.

Progress bars use `huggingface_hub`'s tqdm wrapper, so `HF_HUB_DISABLE_PROGRESS_BARS=1` (or
`huggingface_hub.utils.disable_progress_bars()`) silences ours together with the Hub's.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Optional

from huggingface_hub.utils import are_progress_bars_disabled
from huggingface_hub.utils import tqdm as _hf_tqdm

logger = logging.getLogger("hf_soups")


def get_logger(name: str) -> logging.Logger:
    """Return a child of the `hf_soups` logger (``get_logger(__name__)``)."""
    return logging.getLogger(name if name.startswith("hf_soups") else f"hf_soups.{name}")


def progress(
    iterable: Optional[Iterable[Any]] = None,
    *,
    total: Optional[float] = None,
    desc: Optional[str] = None,
    unit: str = "it",
    disable: Optional[bool] = None,
    **kwargs: Any,
) -> _hf_tqdm:
    """A tqdm progress bar that obeys the Hub's global switch.

    Args:
        iterable: what to iterate over, if any.
        total: the expected number of steps (or bytes, with ``unit="B"``).
        desc: the label shown before the bar.
        unit: the unit of one step.
        disable: force the bar off (``None`` leaves the decision to the global switch).

    Returns:
        A `tqdm` instance (usable as an iterator or with ``update``).
    """
    if disable is None:
        disable = are_progress_bars_disabled()
    if unit == "B":
        kwargs.setdefault("unit_scale", True)
        kwargs.setdefault("unit_divisor", 1024)
    return _hf_tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, **kwargs)
