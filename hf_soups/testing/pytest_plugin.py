"""pytest fixtures around :class:`~hf_soups.testing.LocalHub`.

Enable with ``pytest_plugins = ["hf_soups.testing.pytest_plugin"]`` in the root ``conftest.py``.

Fixtures:
    local_hub: a fresh hub for one test, with the client patched at it and a private download cache
        (``HF_HUB_CACHE``) under the test's ``tmp_path``.
    session_local_hub: one hub for the whole session, started but *not* patched (use ``hub.endpoint`` /
        ``hub.api()`` / ``hub.patch_client()``, or the next fixture).
    shared_local_hub: the session hub for one test, patched for that test only, its faults and request log
        cleared before the test. Repos persist between tests: name them per test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from .server import LocalHub


@pytest.fixture
def local_hub(tmp_path: Path) -> Iterator[LocalHub]:
    """A fresh LocalHub for one test; the client libraries point at it and download into ``tmp_path``."""
    with LocalHub(root=tmp_path / "localhub", cache_dir=tmp_path / "hf-cache") as hub:
        yield hub


@pytest.fixture(scope="session")
def session_local_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalHub]:
    """One LocalHub for the session (not patched: see ``shared_local_hub``)."""
    base = tmp_path_factory.mktemp("session-localhub")
    hub = LocalHub(root=base / "data", cache_dir=base / "hf-cache", patch=False).start()
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture
def shared_local_hub(session_local_hub: LocalHub) -> Iterator[LocalHub]:
    """The session LocalHub, with the client patched at it for this test and fresh faults and request log."""
    session_local_hub.faults.clear()
    session_local_hub.clear_requests()
    with session_local_hub.patch_client():
        yield session_local_hub
    session_local_hub.faults.clear()
