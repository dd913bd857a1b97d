"""Small classic algorithms."""
