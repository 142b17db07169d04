"""hf-soups: model soups as a first-class part of the Hugging Face workflow."""

from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all

__version__ = "0.1.0"

__all__ = list(_errors_all) + ["__version__"]
