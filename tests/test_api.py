"""The public API: every exported name resolves, is documented, and errors say what to do."""

from __future__ import annotations

import inspect

import pytest

import hf_soups
from hf_soups.errors import HfSoupsError


@pytest.mark.parametrize("name", [n for n in hf_soups.__all__ if n != "__version__"])
def test_public_name_resolves_and_is_documented(name):
    obj = getattr(hf_soups, name)
    assert inspect.getdoc(obj), f"hf_soups.{name} has no docstring"
    if inspect.isclass(obj) and issubclass(obj, Exception):
        assert issubclass(obj, HfSoupsError)


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError):
        hf_soups.NoSuchThing  # noqa: B018


def test_error_message_names_candidate_and_fix():
    err = HfSoupsError("weights are pickle files", candidate="org/model@abc", hint="convert to safetensors")
    text = str(err)
    assert "org/model@abc" in text and "convert to safetensors" in text
