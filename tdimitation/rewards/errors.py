"""Errors of reward nets and reward files (both in the :mod:`tdimitation.errors` hierarchy)."""

from __future__ import annotations

from tdimitation.errors import TdimitationError


class RewardNetError(TdimitationError, ValueError):
    """A reward net is misconfigured, gets inputs it cannot use, or cannot be saved/rebuilt."""


class RewardFileError(TdimitationError, OSError):
    """A reward file is missing, corrupted, or not a tdimitation reward file."""


__all__ = ["RewardNetError", "RewardFileError"]
