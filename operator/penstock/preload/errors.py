"""The one exception type the preloader raises for anything a user can fix."""

from __future__ import annotations


class PreloadError(Exception):
    """A model could not be preloaded.

    The message is user-facing: it names the URI, path or option involved and what is wrong
    with it, and is printed as-is (after ``error:``) by ``penstock preload``.
    """
