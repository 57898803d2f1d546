"""The redis state backend for the contract suites (filled in by its store's work)."""

from __future__ import annotations

from typing import Any

PARAMS: list[Any] = []
