"""Loading diffusers and transformers models without their chatter.

Each ``from_pretrained`` of these libraries prints a progress bar per pipeline and per weights file,
deprecation notices about its own arguments (``torch_dtype``), and notices about optional backends it
falls back from: none concerns the user of a diffaudit command, whose stderr holds its own progress
lines and the warnings that do. :func:`quiet_loading` silences them for one load, and puts back the
libraries' settings afterwards (a caller's own choice of verbosity is kept). Errors still raise; the
line a library logs before raising one ("An error occurred while trying to fetch ...") is not shown,
since the caller's own message says what failed.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import ExitStack, contextmanager
from typing import Iterator


@contextmanager
def _library_quiet(logging_module) -> Iterator[None]:
    """The library's progress bars off and its logger at critical only, within the block."""
    bars, verbosity = logging_module.is_progress_bar_enabled(), logging_module.get_verbosity()
    logging_module.disable_progress_bar()
    logging_module.set_verbosity(logging.CRITICAL)
    try:
        yield
    finally:
        logging_module.set_verbosity(verbosity)
        if bars:
            logging_module.enable_progress_bar()


@contextmanager
def quiet_loading() -> Iterator[None]:
    """Within the block, diffusers and transformers (those installed) show no progress bar, log nothing
    below critical, and their ``FutureWarning``s and ``DeprecationWarning``s (of their own arguments) are not shown."""
    with ExitStack() as stack:
        for name in ("diffusers.utils.logging", "transformers.utils.logging"):
            try:
                module = __import__(name, fromlist=["logging"])
            except ImportError:
                continue
            stack.enter_context(_library_quiet(module))
        stack.enter_context(warnings.catch_warnings())
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=r"(diffusers|transformers)(\.|$)")
        yield
