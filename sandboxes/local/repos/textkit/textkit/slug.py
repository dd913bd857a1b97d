"""URL slugs: lowercase ASCII words joined by a separator."""

from __future__ import annotations

import re
import unicodedata


def to_ascii(text: str) -> str:
    """Drop accents ("Café" -> "Cafe") and any character with no ASCII form."""
    decomposed = unicodedata.normalize("NFKD", text)
    return decomposed.encode("ascii", "ignore").decode("ascii")


def slugify(text: str, sep: str = "-", max_length: int | None = None) -> str:
    """A slug of `text`: lowercase ASCII letters and digits, words joined by `sep`.

    Runs of other characters become a single separator and the slug never starts or
    ends with one. With `max_length`, the slug is cut at a word boundary when possible.
    """
    if not sep or re.search(r"[a-z0-9]", sep):
        raise ValueError("sep must be non-empty and contain no letters or digits")
    slug = re.sub(r"[^a-z0-9]", sep, to_ascii(text).lower())
    if max_length is not None and len(slug) > max_length:
        cut = slug[:max_length]
        slug = cut.rsplit(sep, 1)[0] if sep in cut else cut
    return slug
