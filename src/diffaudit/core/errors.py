"""User-facing errors. The CLI prints their message (no traceback) and exits with status 2."""


class DiffauditError(Exception):
    """An error the user can act on; the message says what is wrong and what to do."""


class SettingsMismatchError(DiffauditError):
    """An output folder holds work made with other settings (Conventions: resume).

    ``differences``: the settings that differ as the message names them (``--seed (was 0, now 1)``);
    empty when the folder is another command's."""

    def __init__(self, message: str, differences: tuple[str, ...] = ()):
        super().__init__(message)
        self.differences = differences


class NonFiniteError(DiffauditError):
    """A model produced NaN or infinite values; the run stopped before writing them."""
