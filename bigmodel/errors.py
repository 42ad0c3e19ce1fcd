"""The one exception type meant for users: the CLI prints it as a single line and exits 1."""


class BigModelError(Exception):
    """A problem with the user's input (a file, a field, a limit), not a bug in bigmodel."""
