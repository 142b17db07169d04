"""Fault injection for :class:`~hf_soups.testing.LocalHub`: make the Hub misbehave on purpose.

A :class:`FaultRule` matches requests by HTTP method and a regular expression searched in the URL path
(percent-decoded, without the query string), and fires on the next `count` matching requests. Rules are
added and removed at any time, from any thread, through :class:`Faults` (``hub.faults``):

    >>> hub.faults.fail(r"/resolve/.*model\\.safetensors$", method="GET", count=2)   # two HTTP 500
    >>> hub.faults.rate_limit(r"/api/", retry_after=0)                               # one 429 + Retry-After
    >>> hub.faults.drop_connection(r"\\.safetensors$", after_bytes=1024)             # body cut after 1 KiB
    >>> hub.faults.delay(r"/resolve/", method="HEAD", seconds=2)                    # a slow response
    >>> hub.faults.fail_commit("org/model")                                         # push fails, nothing committed

When several rules match a request, the oldest one that has not run out fires (one rule per request).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence, Union

FAULT_KINDS = ("error", "drop", "delay")


@dataclass
class FaultRule:
    """One injected fault.

    Attributes:
        kind: ``"error"`` (answer `status` without doing the work; the request body is read first),
            ``"drop"`` (do the work, send the headers and `after_bytes` of the body, then close the
            connection; with no body, close without answering), or ``"delay"`` (wait `seconds`, then answer
            normally).
        path: regular expression searched in the decoded URL path.
        method: HTTP method(s) to match (``"GET"``, ``("HEAD", "GET")``); None matches any.
        count: how many more requests it fires on; None means until removed.
        status: HTTP status of an ``"error"`` rule.
        retry_after: when set, an ``"error"`` rule sends ``Retry-After: <seconds>``.
        seconds: the wait of a ``"delay"`` rule.
        after_bytes: body bytes sent before a ``"drop"``; None sends half the body.
        message: ``X-Error-Message`` of an ``"error"`` rule.
        hits: how many requests it fired on so far.
    """

    kind: str
    path: str = ".*"
    method: Union[None, str, Sequence[str]] = None
    count: Optional[int] = 1
    status: int = 500
    retry_after: Optional[int] = None
    seconds: float = 0.0
    after_bytes: Optional[int] = None
    message: str = "Fault injected by LocalHub"
    hits: int = 0
    _regex: "re.Pattern[str]" = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"Unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}.")
        if self.count is not None and self.count < 0:
            raise ValueError("count must be >= 0 (or None for no limit).")
        self._regex = re.compile(self.path)

    @property
    def exhausted(self) -> bool:
        """True once the rule has fired `count` times."""
        return self.count is not None and self.count <= 0

    def matches(self, method: str, path: str) -> bool:
        """Whether a request with this method and decoded path matches (ignores the remaining count)."""
        if self.method is not None:
            allowed = (self.method,) if isinstance(self.method, str) else tuple(self.method)
            if method.upper() not in {m.upper() for m in allowed}:
                return False
        return self._regex.search(path) is not None


class Faults:
    """The switchboard of fault rules of one hub; every method is thread-safe.

    Args:
        rules: rules to install from the start.

    Example:
        >>> with LocalHub() as hub:
        ...     rule = hub.faults.fail(r"/resolve/", method="HEAD", count=2)
        ...     ...  # the next two HEAD calls on a file get HTTP 500
        ...     assert rule.hits == 2
    """

    def __init__(self, rules: Iterable[FaultRule] = ()):
        self._lock = threading.Lock()
        self._rules: List[FaultRule] = list(rules)

    def add(self, rule: FaultRule) -> FaultRule:
        """Install a rule and return it (its `hits` then tell how often it fired)."""
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove(self, rule: FaultRule) -> None:
        """Uninstall a rule (no error if it is not installed)."""
        with self._lock:
            self._rules = [r for r in self._rules if r is not rule]

    def clear(self) -> None:
        """Uninstall every rule."""
        with self._lock:
            self._rules.clear()

    @property
    def rules(self) -> List[FaultRule]:
        """The installed rules that can still fire."""
        with self._lock:
            return [r for r in self._rules if not r.exhausted]

    def take(self, method: str, path: str) -> Optional[FaultRule]:
        """Find the rule that fires on this request and count the hit (used by the server).

        Args:
            method: the request's HTTP method.
            path: the percent-decoded URL path, without the query string.

        Returns:
            The rule, or None when no rule fires.
        """
        with self._lock:
            for rule in self._rules:
                if not rule.exhausted and rule.matches(method, path):
                    rule.hits += 1
                    if rule.count is not None:
                        rule.count -= 1
                    return rule
        return None

    # ----------------------------------------------------------- shorthands
    def fail(self, path: str = ".*", *, method: Union[None, str, Sequence[str]] = None, status: int = 500,
             count: Optional[int] = 1, message: str = "Fault injected by LocalHub") -> FaultRule:
        """Answer the next `count` matching requests with HTTP `status` (500 by default).

        Args:
            path: regular expression searched in the decoded URL path.
            method: method(s) to match; None for any.
            status: the HTTP status to answer.
            count: number of requests to fail; None for every one until removed.
            message: the ``X-Error-Message`` header sent.

        Returns:
            The installed rule.
        """
        return self.add(FaultRule("error", path, method, count, status=status, message=message))

    def rate_limit(self, path: str = ".*", *, method: Union[None, str, Sequence[str]] = None,
                   retry_after: int = 1, count: Optional[int] = 1) -> FaultRule:
        """Answer the next `count` matching requests with HTTP 429 and ``Retry-After: <retry_after>``.

        Returns:
            The installed rule.
        """
        return self.add(FaultRule("error", path, method, count, status=429, retry_after=retry_after,
                                  message="Too many requests (injected by LocalHub)"))

    def drop_connection(self, path: str = ".*", *, method: Union[None, str, Sequence[str]] = "GET",
                        after_bytes: Optional[int] = None, count: Optional[int] = 1) -> FaultRule:
        """Cut the connection of the next `count` matching responses mid-body.

        The status line and headers (with the full ``Content-Length``) are sent, then `after_bytes` bytes of
        the body (half of it when None), then the connection is closed.

        Returns:
            The installed rule.
        """
        return self.add(FaultRule("drop", path, method, count, after_bytes=after_bytes))

    def delay(self, path: str = ".*", *, method: Union[None, str, Sequence[str]] = None, seconds: float = 1.0,
              count: Optional[int] = 1) -> FaultRule:
        """Wait `seconds` before answering the next `count` matching requests (then answer normally).

        Returns:
            The installed rule.
        """
        return self.add(FaultRule("delay", path, method, count, seconds=seconds))

    def fail_commit(self, repo_id: Optional[str] = None, *, status: int = 500, count: Optional[int] = 1,
                    message: str = "Commit failed (injected by LocalHub)") -> FaultRule:
        """Make the next `count` pushes fail at the commit step: the server reads the whole commit payload,
        answers `status`, and commits nothing (branches are unchanged; uploaded LFS objects stay stored, as on
        the Hub).

        Args:
            repo_id: only commits to this repo; None for any repo.
            status: the HTTP status to answer.
            count: number of commits to fail.
            message: the ``X-Error-Message`` header sent.

        Returns:
            The installed rule.
        """
        repo = re.escape(repo_id) if repo_id else ".+"
        return self.add(FaultRule("error", rf"^/api/(models|datasets|spaces)/{repo}/commit/", "POST", count,
                                  status=status, message=message))
