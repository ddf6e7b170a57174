"""The two kinds of failure a command reports, and their exit codes."""


class UserError(Exception):
    """Bad usage or bad input: a one-line message naming the file or setting and the fix. Exit 2."""

    exit_code = 2


class StageError(Exception):
    """A stage ran on valid input and could not finish (e.g. too few frames registered). Exit 1."""

    exit_code = 1
