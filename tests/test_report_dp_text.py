"""The report's line on DP-SGD training: ε at δ, "not private" only without noise, and the RDP bound
named when the configured PRV accountant gave none."""

from diffaudit.report.view_model import training_facts


def _dp_line(dp):
    return dict(training_facts({"dp": dp}))["DP-SGD"]


def test_no_noise_is_not_private_but_noise_without_a_finite_bound_says_so():
    assert _dp_line({"epsilon": None, "noise_multiplier": 0.0}) == "no noise: not private (ε infinite)"
    line = _dp_line({"epsilon": None, "noise_multiplier": 0.05})
    assert "noise multiplier 0.05" in line and "no finite ε bound" in line and "no noise" not in line


def test_an_rdp_fallback_is_named_beside_epsilon():
    line = _dp_line({"epsilon": 4064.2, "delta": 1e-5, "noise_multiplier": 0.05, "max_grad_norm": 1.0,
                     "accountant": "prv", "accountant_used": "rdp",
                     "fallback_reason": "PRV accountant returned a non-finite epsilon (inf)"})
    assert line.startswith("ε = 4,064") or line.startswith("ε = 4064"), line
    assert "RDP bound: PRV accountant returned a non-finite epsilon (inf)" in line
    assert "RDP" not in _dp_line({"epsilon": 8.0, "delta": 1e-5, "noise_multiplier": 1.1, "accountant": "prv",
                                  "accountant_used": "prv", "fallback_reason": None})
