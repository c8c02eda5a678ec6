"""The one error type the backend raises for anything a user did wrong."""


class ArchLabError(ValueError):
    """Bad input (unknown model, malformed config, absurd size, missing files, ...).

    The message is one line, meant to be shown to a user as is.
    """


def one_line(e: BaseException) -> str:
    """An exception as one line for a user: an ArchLabError's message as is, anything else its type and first line."""
    return str(e) if isinstance(e, ArchLabError) else f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:300]}"
