"""The exceptions diffunfold raises. Each message says what is wrong and what to do."""


class DiffUnfoldError(Exception):
    """Base class of every error raised on purpose by diffunfold."""


class InputError(DiffUnfoldError, ValueError):
    """An array, file or parameter given by the user is unusable (shape, dtype, NaN, range)."""


class MissingDependencyError(DiffUnfoldError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""


def require(module: str, extra: str):
    """Import an optional dependency or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{module} is needed here but is not installed; install it with `pip install 'diffunfold[{extra}]'`"
        ) from exc
