"""The one error type the backend raises for anything a user did wrong."""


class ArchLabError(ValueError):
    """Bad input (unknown model, malformed config, absurd size, missing files, ...).

    The message is one line, meant to be shown to a user as is.
    """
