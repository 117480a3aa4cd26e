"""User-facing errors. The CLI prints their message (no traceback) and exits with status 2."""


class DiffauditError(Exception):
    """An error the user can act on; the message says what is wrong and what to do."""


class SettingsMismatchError(DiffauditError):
    """An output folder holds work made with other settings (DESIGN: resume conventions)."""


class NonFiniteError(DiffauditError):
    """A model produced NaN or infinite values; the run stopped before writing them."""
