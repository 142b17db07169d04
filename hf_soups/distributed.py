"""Work that must happen once when several processes run (``accelerate launch``, ``torchrun``).

Accelerate offers ``main_process_first`` and ``wait_for_everyone``, but no "run this on the main process and tell
every process how it went": with those alone, an error on the main process leaves the others waiting at the next
barrier forever. :func:`run_on_main` is that missing piece; the builder, the callback and the evaluator share it.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from .errors import HfSoupsError


def run_on_main(state: Any, fn: Callable[[], Any], *, what: str = "this step", share: bool = True) -> Any:
    """Run `fn` on the main process only; every process learns whether it worked.

    Args:
        state: an ``accelerate`` ``Accelerator`` or ``PartialState`` (anything with ``num_processes`` and
            ``is_main_process``).
        fn: the work.
        what: what `fn` does, for the error the other processes raise.
        share: broadcast the (picklable) result to every process; otherwise the others get None.

    Returns:
        `fn`'s result (on the other processes: the broadcast result, or None without `share`).

    Raises:
        The main process re-raises its own exception; the others raise an :class:`HfSoupsError` naming it.
    """
    if getattr(state, "num_processes", 1) <= 1:
        return fn()
    from accelerate.utils import broadcast_object_list

    error: Optional[BaseException] = None
    value: Any = None
    message: Optional[str] = None
    if state.is_main_process:
        try:
            value = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after telling the other processes
            error, message = exc, f"{type(exc).__name__}: {exc}"
    payload = [(message, value if share else None)]
    broadcast_object_list(payload, from_process=0)
    message, shared = payload[0]
    if error is not None:
        raise error
    if message is not None:
        raise HfSoupsError(f"{what} failed on the main process, so this process stops too: {message}")
    return value if state.is_main_process else shared
