"""The one exception type that means "the user gave us something wrong"."""


class UserError(Exception):
    """A mistake in the user's input (config, files, flags).

    The message is one line that names the file and the key; the CLIs print it and
    exit with status 2 instead of showing a traceback.
    """
