"""Errors raised by hf-soups.

Every error subclasses :class:`HfSoupsError`. A message says what was wrong, with which candidate (or input),
and what to do about it. The CLI maps them to exit codes: input and lookup errors exit 2, an incompatible set
of candidates exits 1.
"""

from __future__ import annotations

from typing import Any, Optional


class HfSoupsError(Exception):
    """Base class of every error hf-soups raises on purpose.

    Attributes:
        candidate: the candidate reference the error is about, when there is one.
        hint: what the user can do about it.
    """

    exit_code: int = 2

    def __init__(self, message: str, *, candidate: Optional[str] = None, hint: Optional[str] = None):
        self.candidate = candidate
        self.hint = hint
        text = message
        if candidate and candidate not in message:
            text = f"{candidate}: {message}"
        if hint:
            text = f"{text}\n  -> {hint}"
        super().__init__(text)


class InvalidReferenceError(HfSoupsError):
    """A candidate reference is malformed (bad repo id, revision or path)."""


class CandidateNotFoundError(HfSoupsError):
    """A repo, revision, file or local folder named by a candidate does not exist (or is not visible)."""


class AuthenticationError(HfSoupsError):
    """A private or gated repo was asked for without a token that can read it."""


class RepoNotVisibleError(CandidateNotFoundError, AuthenticationError):
    """A repo asked for without valid credentials: missing, or private (the Hub answers 401 to both and will not
    say which). Catch it as either a lookup or an authentication error."""


class UnsafeWeightsError(HfSoupsError):
    """A candidate only ships pickle weights (`.bin`, `.pt`) and pickle was not allowed."""


class InvalidWeightsError(HfSoupsError):
    """A weights file is malformed (bad safetensors header, offsets outside the file, ...)."""


class IncompatibleCandidatesError(HfSoupsError):
    """The candidates do not share one base, or differ in something that must match.

    Attributes:
        report: the :class:`~hf_soups.lineage.LineageReport` listing every problem found.
    """

    exit_code = 1

    def __init__(self, report: Any):
        self.report = report
        super().__init__(report.summary())


class MixingError(HfSoupsError):
    """Weights cannot be averaged (integer buffers differ, non-finite values, bad weights, ...)."""


class NonFiniteError(MixingError):
    """A NaN or Inf was found in an ingredient or in the result."""


class EvaluationError(HfSoupsError):
    """The evaluation set-up is wrong (missing split or column, labels that do not match, bad metric)."""


class RecipeError(HfSoupsError):
    """A recipe (YAML) or `soup.json` cannot be read: unknown keys, wrong types, bad values."""


class OutputExistsError(HfSoupsError):
    """The output folder exists and is not empty."""


class PushError(HfSoupsError):
    """Publishing to the Hub failed. The soup is still saved locally; the message says how to retry."""


class HubError(HfSoupsError):
    """The Hub could not be reached or answered with an error after retries."""


__all__ = [
    "HfSoupsError",
    "InvalidReferenceError",
    "CandidateNotFoundError",
    "RepoNotVisibleError",
    "AuthenticationError",
    "UnsafeWeightsError",
    "InvalidWeightsError",
    "IncompatibleCandidatesError",
    "MixingError",
    "NonFiniteError",
    "EvaluationError",
    "RecipeError",
    "OutputExistsError",
    "PushError",
    "HubError",
]
