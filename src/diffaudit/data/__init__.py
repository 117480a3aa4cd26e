"""Datasets with stable ids, and membership matrices (the data layer: imports only ``core``).

- :func:`load_dataset` reads a built-in (``digits``, ``cifar10``, ``cifar10-test``), a folder of
  images, WebDataset shards or an ``.npz`` into an :class:`ImageDataset` (uint8 (N, H, W, C)).
- :func:`make_membership`, :func:`save_membership`, :func:`load_membership`: the seeded LiRA
  membership matrix (every example IN for exactly half of the shadow models).
- :class:`ShardedImages`: a read-only image array over memory-mapped parts (a sample store read
  lazily), indexed like a numpy array without reading the other rows.
"""

from diffaudit.data.dataset import ImageDataset, from_model_space, to_model_space, to_unit
from diffaudit.data.images import IMAGE_EXTENSIONS, BadImageError
from diffaudit.data.loader import load_dataset
from diffaudit.data.membership import Membership, load_membership, make_membership, save_membership, target_split
from diffaudit.data.sharded import ShardedImages

__all__ = [
    "IMAGE_EXTENSIONS",
    "BadImageError",
    "ImageDataset",
    "Membership",
    "ShardedImages",
    "from_model_space",
    "load_dataset",
    "load_membership",
    "make_membership",
    "save_membership",
    "target_split",
    "to_model_space",
    "to_unit",
]
