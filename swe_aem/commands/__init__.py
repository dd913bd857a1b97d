"""The CLI halves of commands that join several packages (the edge of the layering)."""
