"""The one error of the conversions: a directory, model id or model they cannot represent (exit 2)."""
from __future__ import annotations

from typing import Optional

from groupbert.errors import BadInput


class InteropError(BadInput, ValueError):
    """A checkpoint directory, model id or model that cannot be converted; ``key`` (a config key) and
    ``source`` (a file or id) say where."""

    def __init__(self, message: str, key: Optional[str] = None, source: Optional[str] = None):
        self.key, self.source = key, source
        where = " ".join(w for w in (f"key '{key}'" if key else "", f"in {source}" if source else "") if w)
        super().__init__(f"{where}: {message}" if where else message)
