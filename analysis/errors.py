"""Errors a user can fix: the command line prints them as one line and exits 2.

`UsageError` is raised for bad input (a wrong option, a missing or malformed file, a checkpoint that
cannot be opened); `EXPECTED` lists every exception type the command line treats the same way. Anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input: the message names the problem and the fix."""


class UnknownName(UsageError, KeyError):
    """A name (hook, label, preset) that does not exist: also a `KeyError` for dictionary-style callers."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def expected_errors() -> tuple[type[BaseException], ...]:
    """Exception types reported as one line (imported lazily: yaml and safetensors are optional here)."""
    errors: list[type[BaseException]] = [UsageError, ValueError, FileNotFoundError, NotADirectoryError,
                                         IsADirectoryError, PermissionError, OSError]
    try:
        import yaml

        errors.append(yaml.YAMLError)
    except ImportError:  # pragma: no cover - yaml is a dependency
        pass
    try:
        from safetensors import SafetensorError

        errors.append(SafetensorError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def one_line(err: BaseException) -> str:
    """The error's message on one line (a KeyError's repr quotes are dropped)."""
    text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
    text = " ".join(str(text).split())
    return text or type(err).__name__
