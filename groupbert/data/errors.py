"""The one exception type of the data pipeline.

``DataError`` means "bad input": a missing or malformed corpus file, an unknown dataset, a vocabulary
without BERT's special tokens, a corpus too small to make one training instance. Entry points map it
to exit code 2 (``groupbert.errors.BadInput``; README, "Running your own jobs"). It subclasses ``ValueError`` so callers that already catch
``ValueError`` for bad configuration keep working.
"""
from __future__ import annotations

from groupbert.errors import BadInput


class DataError(BadInput, ValueError):
    """Bad data input; the message names the file, dataset or setting at fault."""
