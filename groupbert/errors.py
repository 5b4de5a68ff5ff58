"""One base for "fix the configuration or the input": the command lines exit with code 2 on any of them.

:class:`BadInput` is the common base of ``ConfigError`` (a key or value), ``DataError`` (a corpus, a
prepared shard, a vocabulary), ``CheckpointError`` (a missing, corrupt or mismatched checkpoint) and the
IPU memory planner's ``IPUOutOfMemoryError``. A class of a package below this one (``custom_ops``, the
PopTorch-shaped emulator) joins without importing it by setting ``bad_input = True`` on itself. Such a
class is a BadInput for ``isinstance``/``issubclass`` but not for ``except BadInput`` (exception matching
reads the real bases): handlers test with ``isinstance`` (``groupbert.cli.exit_code_for``).
"""
from __future__ import annotations

from abc import ABCMeta


class BadInput(Exception, metaclass=ABCMeta):
    """Bad configuration or input; the message names the key, file or setting at fault."""

    @classmethod
    def __subclasshook__(cls, subclass):
        if cls is BadInput and any(vars(base).get("bad_input") is True for base in subclass.__mro__):
            return True
        return NotImplemented
