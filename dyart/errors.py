"""One error hierarchy for the library; the service maps each base to a status."""


class DyartError(Exception):
    """Base of every error this library raises on purpose."""


class ConfigError(DyartError, ValueError):
    """A setting is invalid. ``field`` names it; the message says what is allowed."""

    def __init__(self, field: str, message: str):
        super().__init__(message if message.startswith(field) else f"{field}: {message}")
        self.field = field


class ConfigErrors(ConfigError):
    """Several invalid settings at once; ``errors`` is a list of (field, message)."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = list(errors)
        super().__init__(errors[0][0], "; ".join(msg for _, msg in errors))


class DatasetMissingError(DyartError, FileNotFoundError):
    """A dataset's files are not where they should be (names the files and folder)."""


class DatasetCorruptError(DyartError, ValueError):
    """A dataset's files are there but unreadable or fail their checksum."""


class InputError(DyartError, ValueError):
    """A batch handed to a method is malformed (labels, range, shape, model mode)."""


class NonFiniteLossError(DyartError, FloatingPointError):
    """The loss became NaN or inf; the last good checkpoint is kept."""


class CheckpointError(DyartError, ValueError):
    """A checkpoint file is missing, truncated, of the wrong format or refused."""


class StopRequested(DyartError):
    """Raised inside the trainer when a callback asked to stop (cancel)."""
