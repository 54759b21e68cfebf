"""Errors raised for bad dataset files; the CLI prints them as one line and exits with status 2."""

from __future__ import annotations


class DatasetError(ValueError):
    """A dataset file is missing, malformed or inconsistent.

    The message always names the file (and the row or field where it applies).
    """
