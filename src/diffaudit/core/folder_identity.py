"""An output folder moved or removed while a command writes into it.

A command writes every file under its ``--out`` folder by path. Renamed meanwhile (``mv run run-old``), the
folder's path was made again by the next write (parents are created as needed), and the rest of the work
went into a new folder without the settings that identify it: a training run that ended with status 0 and
that nothing could use, a sample store refilled at its old path and then blamed on "another command". A
command takes its folder's identity (device and inode) when it has made or opened it, and checks it before
each piece of work it writes there (a checkpoint, a shard): one ``stat``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from diffaudit.core.errors import DiffauditError


@dataclass(frozen=True)
class FolderIdentity:
    """The folder at ``path`` as it was when taken (:meth:`of`): its device and inode."""

    path: Path
    device: int
    inode: int

    @classmethod
    def of(cls, path: str | os.PathLike) -> "FolderIdentity":
        st = os.stat(path)
        return cls(Path(path), st.st_dev, st.st_ino)

    def check(self) -> None:
        """Raise :class:`DiffauditError` when ``path`` is no longer that folder: moved, removed, or replaced."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != (self.device, self.inode):
            gone = "removed or moved" if st is None else "moved or replaced by another folder"
            raise DiffauditError(f"{self.path} was {gone} while this command wrote into it; nothing more is written "
                                 "there. What it holds resumes where it is now: re-run the command with that --out")
