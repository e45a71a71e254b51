"""The one exception type that means "the user gave us something wrong"."""


class UserError(Exception):
    """A mistake in the user's input (config, files, flags).

    The message is one line that names the file and the key; the CLIs print it and
    exit with status 2 instead of showing a traceback.
    """


def brief(err: BaseException, limit: int = 240) -> str:
    """``Type: message`` on one line, shortened, for quoting an exception in a one-line report."""
    message = " ".join(str(err).split())
    text = f"{type(err).__name__}: {message}" if message else type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
