"""textkit: slugs, word wrapping and edit distances."""

from textkit.distance import levenshtein, similarity
from textkit.slug import slugify
from textkit.wrap import fill, wrap

__all__ = ["fill", "levenshtein", "similarity", "slugify", "wrap"]
