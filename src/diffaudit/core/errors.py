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


class StageFailedError(DiffauditError):
    """A stage of an audit failed: ``stage`` names it, ``stage_error`` is what its command said (None when
    it raised no error of its own, e.g. its argument parser refused). ``--json`` gives both beside the
    audit's own message, which only says that the stage failed (its error is on stderr, once)."""

    def __init__(self, message: str, stage: str, stage_error: str | None):
        super().__init__(message)
        self.stage, self.stage_error = stage, stage_error

    def json_fields(self) -> dict[str, str | None]:
        return {"stage": self.stage, "stage_error": self.stage_error}


class NonFiniteError(DiffauditError):
    """A model produced NaN or infinite values; the run stopped before writing them."""
