"""The one error type the command line turns into a single clear line (no traceback)."""


class UserError(Exception):
    """Bad input from the user (a file, a flag, a folder): the message names what and where."""
