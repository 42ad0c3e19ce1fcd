"""The one exception type meant for users: the CLI prints it as a single line and exits 1."""

import importlib.util


class BigModelError(Exception):
    """A problem with the user's input (a file, a field, a limit), not a bug in bigmodel."""


def require(module: str, extra: str, purpose: str) -> None:
    """One line naming the extra to install when an optional dependency is missing. Only a missing
    package is reported so: an import that breaks inside an installed one keeps its own traceback."""
    if importlib.util.find_spec(module) is None:
        raise BigModelError(f"{purpose} needs the {module} package: pip install 'bigmodel[{extra}]'")
