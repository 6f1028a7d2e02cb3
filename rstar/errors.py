"""Errors that carry a message meant for the user (what is wrong, what to run)."""


class RstarError(Exception):
    """Base class: the CLI prints the message as one line, without a traceback."""


class SandboxUnavailable(RstarError):
    """The Docker engine, the SDK or the sandbox image cannot be used."""


class ModelUnavailable(RstarError):
    """A model file or backend cannot be loaded."""


class DataError(RstarError):
    """A dataset file is unreadable or malformed."""
