"""User-facing errors: the CLI prints their message (no traceback) and exits 2."""

import difflib
from collections.abc import Iterable


class KtError(Exception):
    """A mistake the user can fix; the message names the problem and the fix."""


def closest(name: str, known: Iterable[str], n: int = 5) -> str:
    """A 'did you mean' hint listing the known names closest to ``name``."""
    known = list(known)
    matches = difflib.get_close_matches(name, known, n=n, cutoff=0.5)
    if not matches:
        matches = [k for k in known if name.split(".")[0].lower() in k.lower()][:n]
    return f" Did you mean: {', '.join(matches)}?" if matches else ""
