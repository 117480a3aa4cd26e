"""A folder of image files: flat, or one sub-folder per class.

- Image files: extensions in :data:`~diffaudit.data.images.IMAGE_EXTENSIONS` (any case). Other
  files (a README, a labels.json) are not examples and are ignored; so are hidden files and folders
  (names starting with ``.``). Symbolic links to folders are not followed; a file that is a link out of
  the folder, or no regular file (a FIFO, a device), is a bad input (:func:`_not_a_plain_file`).
- Flat: every image directly in the folder; no labels.
- Classes: every image inside a sub-folder (at any depth); the class is the top-level sub-folder
  and the label its position among the sorted names of the sub-folders that hold images
  (``class_names``). A folder with images both at the top level and in sub-folders is an error
  (the layout would be ambiguous).
- Keys: the path relative to the folder, with ``/`` separators (``cat/0001.png``). Examples are
  ordered by their path components, so the order is deterministic and groups each class together.
- Captions: a UTF-8 ``.txt`` file beside an image with its name (``beach.txt`` for ``beach.png``)
  holds its caption (stripped), the folder form of a WebDataset sample's ``.txt``. When any image has
  one, every image needs one: one without (or with a caption that is not UTF-8) is a bad input, an
  error or, with ``--skip-bad``, skipped and recorded. A load that never uses captions
  (``need_captions=False``: verify, dedup) keeps it instead and leaves out the captions of every image
  (:func:`~diffaudit.data.entries.drop_captions`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from diffaudit.core.errors import DiffauditError
from diffaudit.data.entries import Entry, Listing
from diffaudit.data.images import IMAGE_EXTENSIONS, BadImageError, decode_image


def _image_files(root: Path) -> list[tuple[str, ...]]:
    """Relative path parts of every (non-hidden) image file under ``root``, sorted by parts."""
    found: list[tuple[str, ...]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(root).parts
        for fn in filenames:
            if fn.startswith("."):
                continue
            ext = fn.rsplit(".", 1)[-1].lower() if "." in fn else ""
            if ext in IMAGE_EXTENSIONS:
                found.append((*rel, fn))
    found.sort()
    return found


#: The longest caption file read (bytes): a caption is a sentence or two (CLIP reads 77 tokens); a longer
#: file is refused rather than read whole into memory and the report.
MAX_CAPTION_BYTES = 64 * 1024


def _not_a_plain_file(path: Path, root: Path) -> str | None:
    """Why ``path`` (under ``root``) is not read as an example's file, None when it may be: a symbolic link
    that leads out of ``root`` (a folder's files are its own: a link to /etc/passwd beside an image would
    put that file in the report; links within it are followed), or anything but a regular file (a FIFO
    would block the read forever, a device read without end)."""
    try:
        if path.is_symlink():
            target = Path(os.path.realpath(path))
            if not target.is_relative_to(Path(os.path.realpath(root))):
                return (f"a symbolic link to {target}, outside the folder (copy the file in, or give the folder "
                        "it lies in)")
        mode = path.stat().st_mode
    except OSError as exc:
        return f"cannot read the file ({exc.strerror or exc})"
    if not stat.S_ISREG(mode):
        return "not a regular file (a FIFO, socket or device), so it is not read"
    return None


def _file_reader(path: Path, name: str, root: Path):
    def read():
        reason = _not_a_plain_file(path, root)
        if reason is not None:
            raise BadImageError(name, reason)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BadImageError(name, f"cannot read the file ({exc.strerror or exc})") from None
        return decode_image(data, name)

    return read


def list_folder(root: str | os.PathLike, *, source: str | None = None) -> Listing:
    """The images under ``root`` as entries (see the module doc for layout, labels and order).

    Raises:
        DiffauditError: the folder mixes top-level images with class sub-folders, or holds no images.
    """
    root = Path(root)
    source = source or str(root)
    if (root / "manifest.json").is_file() and (root / "shards").is_dir():  # as `diffaudit sample` writes them
        raise DiffauditError(f"{root} is a sample store (its manifest.json and shards/): generations, not a dataset; "
                             "give it as --samples, which reads stores (read as a dataset, the images exported into "
                             "it would be taken for training images, each generation matching itself)")
    files = _image_files(root)
    if not files:
        hint = ""
        shards = sorted(p.name for p in root.glob("*.tar*") if p.is_file())
        if (root / "manifest.json").is_file():
            hint = " It looks like a sample store: pass it as --samples, which reads stores."
        elif shards:  # WebDataset shards are given by their paths, not their folder
            hint = (f" It holds {len(shards):,} tar shard{'s' if len(shards) != 1 else ''} ({shards[0]}, ...): give "
                    f"WebDataset shards by a path or a brace pattern ('{root}/name-{{000000..000009}}.tar'), or "
                    "CIFAR-10's by its name (cifar10, cifar10-test).")
        raise DiffauditError(
            f"{root}: the folder holds no images ({', '.join('.' + e for e in IMAGE_EXTENSIONS)}).{hint}"
        )
    top = [p for p in files if len(p) == 1]
    nested = [p for p in files if len(p) > 1]
    if top and nested:
        raise DiffauditError(
            f"{root}: mixes images at the top level ({top[0][0]}) with images in sub-folders "
            f"({'/'.join(nested[0])}); use a flat folder, or one sub-folder per class"
        )
    class_names = sorted({p[0] for p in nested}) if nested else None
    label_of = {c: i for i, c in enumerate(class_names or [])}
    sidecars = {parts: root.joinpath(*parts).with_suffix(".txt") for parts in files}
    captions = {parts: _caption(t, root) for parts, t in sidecars.items()}  # each file tried once; None: none there
    has_captions = any(found is not None for found in captions.values())
    entries = []
    for parts in files:
        key = "/".join(parts)
        path = root.joinpath(*parts)
        caption, caption_problem = (None, None) if not has_captions else captions[parts] or (
            None, f"no caption file {sidecars[parts].name} beside it, while other images have one")
        entries.append(Entry(
            key=key,
            name=str(path),
            read=_file_reader(path, str(path), root),
            label=label_of[parts[0]] if class_names else None,
            caption=caption,
            caption_problem=caption_problem,
            file=str(path),
            image_file=True,
        ))
    return Listing(entries=entries, source=source, has_labels=class_names is not None, class_names=class_names,
                   has_captions=has_captions, caption_files=[str(t) for t in sidecars.values()] if has_captions else [])


def _caption(path: Path, root: Path) -> tuple[str | None, str | None] | None:
    """(the caption in the ``.txt`` file ``path``, None), (None, why it cannot be read: a link out of
    ``root`` or no regular file (:func:`_not_a_plain_file`), longer than :data:`MAX_CAPTION_BYTES`, not
    UTF-8), or None when there is no such file."""
    if not os.path.lexists(path):
        return None
    reason = _not_a_plain_file(path, root)
    if reason is not None:
        return None, f"its caption file {path.name}: {reason}"
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CAPTION_BYTES + 1)
        if len(data) > MAX_CAPTION_BYTES:
            return None, f"its caption file {path.name} is longer than {MAX_CAPTION_BYTES // 1024} KiB: not a caption"
        return data.decode("utf-8-sig").strip(), None  # without a byte-order mark
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        return None, f"its caption file {path.name} is not UTF-8"
    except OSError as exc:
        return None, f"its caption file {path.name} cannot be read ({exc.strerror or exc})"
