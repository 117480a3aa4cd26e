"""Typed inputs of the membership attacks and the loss transform they fit Gaussians on.

Every attack reads per-example losses L(x, t, ε) (Carlini et al. 2023, Sec. 5, membership inference:
L = ||ε − ε_θ(sqrt(ᾱ_t)·x + sqrt(1 − ᾱ_t)·ε, t)||², mean over pixels, ≥ 0) of one target model and,
for LiRA, of shadow models with known membership. Shapes (N examples, S shadows, Q queries; a
query is one (noise draw ε, flip) pair, identical in every model):

- ``target``: float (N, Q), the target model's losses;
- ``shadows``: float (N, S, Q), the shadow models' losses on the same examples and queries;
- ``shadow_in``: bool (N, S), True where example n was in shadow s's training set;
- ``shadow_used``: bool (N, S) or None (all): which shadows' losses on example n the attack may
  read (:func:`~.targets.equal_in_out` drops some so that IN and OUT counts carry no label).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffaudit.core.errors import DiffauditError, NonFiniteError

TRANSFORMS = ("log", "none")
_LOG_FLOOR = 1e-12


def transform_losses(losses: np.ndarray, transform: str) -> np.ndarray:
    """The values LiRA fits Gaussians to.

    ``"log"`` (default): log(max(loss, 1e-12)). A loss is a mean of squared errors, positive and
    right-skewed (scaled chi-square-like) and its spread grows with its mean; its logarithm is close
    to Gaussian across shadow models and has a comparable spread for easy and hard examples, the role
    logit scaling of the confidence plays in LiRA for classifiers (Carlini et al. 2022, Sec. IV).
    ``"none"``: the raw loss (the paper's description, "Gaussians fitted to the loss").
    """
    if transform == "log":
        return np.log(np.maximum(losses, _LOG_FLOOR))
    if transform == "none":
        return np.asarray(losses, dtype=np.float64)
    raise DiffauditError(f"unknown loss transform {transform!r}; choose one of {', '.join(TRANSFORMS)}")


def _finite(name: str, a: np.ndarray) -> None:
    """Refuse NaN or infinite losses (a broken model), and negative ones: a loss is a mean of squares, so
    a negative value is something else, most often losses already logged, which the log transform floored
    to one value (every score 0) without an error."""
    if not np.isfinite(a).all():
        raise NonFiniteError(f"{name} holds {int((~np.isfinite(a)).sum())} NaN or infinite losses; "
                             "the model that produced them is broken (check its training log)")
    n_negative = int((a < 0).sum())
    if n_negative:
        values = "value" if n_negative == 1 else "values"
        raise DiffauditError(f"{name} holds {n_negative} negative {values} (smallest {float(a.min()):.4g}); a loss is a "
                             "mean of squared errors, ≥ 0: pass the losses themselves, not their logarithm (the "
                             "attacks take it where they need it)")


@dataclass
class AttackInput:
    """Losses of a target model and of shadow models (see the module docstring for shapes)."""

    target: np.ndarray
    shadows: np.ndarray | None = None
    shadow_in: np.ndarray | None = None
    shadow_used: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.target = np.asarray(self.target, dtype=np.float64)
        if self.shadows is not None:
            self.shadows = np.asarray(self.shadows, dtype=np.float64)
        if self.shadow_in is not None:
            self.shadow_in = np.asarray(self.shadow_in)
        if self.shadow_used is not None:
            self.shadow_used = np.asarray(self.shadow_used)
        self.validate()

    @property
    def in_mask(self) -> np.ndarray:
        """bool (N, S): the shadows IN on each example whose losses the attack reads."""
        return self.shadow_in if self.shadow_used is None else self.shadow_in & self.shadow_used

    @property
    def out_mask(self) -> np.ndarray:
        """bool (N, S): the shadows OUT on each example whose losses the attack reads."""
        return ~self.shadow_in if self.shadow_used is None else ~self.shadow_in & self.shadow_used

    @property
    def n_examples(self) -> int:
        return int(self.target.shape[0])

    @property
    def n_queries(self) -> int:
        return int(self.target.shape[1])

    def validate(self) -> None:
        """Check shapes, dtypes and finiteness; raises :class:`DiffauditError` naming the array."""
        if self.target.ndim != 2:
            raise DiffauditError(f"target losses must have shape (n_examples, n_queries); got {self.target.shape}")
        _finite("target losses", self.target)
        if (self.shadows is None) != (self.shadow_in is None):
            raise DiffauditError("shadow losses and shadow membership must be given together")
        if self.shadows is None:
            return
        n, q = self.target.shape
        if self.shadows.ndim != 3 or self.shadows.shape[0] != n or self.shadows.shape[2] != q:
            raise DiffauditError(
                f"shadow losses must have shape (n_examples={n}, n_shadows, n_queries={q}); got {self.shadows.shape}"
            )
        _finite("shadow losses", self.shadows)
        if self.shadow_in.dtype != bool:
            raise DiffauditError(f"shadow membership must be boolean; got {self.shadow_in.dtype}")
        if self.shadow_in.shape != self.shadows.shape[:2]:
            raise DiffauditError(
                f"shadow membership has shape {self.shadow_in.shape} but the shadow losses are "
                f"{self.shadows.shape[:2]} (n_examples, n_shadows)"
            )
        if self.shadow_used is not None and (self.shadow_used.dtype != bool or self.shadow_used.shape != self.shadow_in.shape):
            raise DiffauditError(f"shadow_used must be boolean of shape {self.shadow_in.shape}; got "
                                 f"{self.shadow_used.dtype} {self.shadow_used.shape}")

    def require_shadows(self, attack: str, *, need_in: bool) -> None:
        """Raise unless the shadows an attack needs are present (some OUT; some IN when ``need_in``)."""
        if self.shadows is None or self.shadows.shape[1] == 0:
            raise DiffauditError(f"attack {attack!r} needs shadow models; none were given")
        if self.shadow_in.all():
            raise DiffauditError(f"attack {attack!r} needs shadow models that did not train on the examples (OUT); none did")
        if need_in and not self.shadow_in.any():
            raise DiffauditError(f"attack {attack!r} needs shadow models trained on the examples (IN); none were")
        if not self.out_mask.any() or (need_in and not self.in_mask.any()):
            raise DiffauditError(
                f"attack {attack!r} reads as many IN as OUT shadows per example (so that their counts do not give "
                "the target's labels away), and no example has shadows on both sides: train the shadows on a "
                "membership matrix (diffaudit shadows), where every example is IN for half of them")
