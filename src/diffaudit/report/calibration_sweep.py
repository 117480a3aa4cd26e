"""The ``extract --calibrate`` sweep read back from a result (untrusted JSON), for the report's table
and ``summary.json``."""

from __future__ import annotations

from typing import Any

from diffaudit.attacks.extraction.calibration import CalibrationPoint
from diffaudit.report.results import Stage


def count(v: Any) -> int | None:
    """A count from a result (untrusted JSON): a non-negative int, else None."""
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None


def _rate(v: Any) -> float | None:
    """A precision or recall from a result (untrusted JSON): a number, else None."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _point(p: dict[str, Any]) -> CalibrationPoint:
    """A sweep point of a result (untrusted JSON, already known to hold a threshold and a clique size),
    counts that are no count read as 0 and rates that are no number as None."""
    counts = {k: count(p.get(k)) or 0 for k in ("flagged", "true_positives", "false_positives", "false_negatives",
                                                "bound_hits")}
    return CalibrationPoint(edge_threshold=float(p["edge_threshold"]), min_clique=p["min_clique"], **counts,
                            precision=_rate(p.get("precision")), recall=_rate(p.get("recall")))


def calibration_points(st: Stage) -> tuple[list[CalibrationPoint], dict[str, Any]] | None:
    """The ``extract --calibrate`` sweep of an extract stage: its points (those with a threshold and a
    clique size) and the result's calibration record; None without a calibration."""
    cal = st.result.get("calibration")
    if not isinstance(cal, dict):
        return None
    points = [_point(p) for p in (cal.get("points") or []) if isinstance(p, dict)
              and _rate(p.get("edge_threshold")) is not None and count(p.get("min_clique")) is not None]
    return (points, cal) if points else None
