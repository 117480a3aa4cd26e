"""The inpainting results name the target/shadow loss ratios of the kept inpaintings for what they are,
``top_loss_ratios`` (lower = better reconstruction), not "scores" (Conventions: scores are larger for
members); results written under the old name ``top_scores`` still read."""

import json

import numpy as np

from diffaudit.attacks.inpainting import TargetResult
from diffaudit.cli.main import main
from tests.helpers import make_tiny_model_dir


def _run(root, digits, indices):
    make_tiny_model_dir(root)
    (root / "train_ids.json").write_text(json.dumps({"keys": [digits.keys[i] for i in indices], "indices": list(indices)}))
    return root


def test_results_store_top_loss_ratios_lowest_first(tmp_path, digits):
    target, shadow = _run(tmp_path / "target", digits, [0, 1]), _run(tmp_path / "shadow", digits, [5])
    out = tmp_path / "inp"
    assert main(["--quiet", "inpaint", "--model", str(target), "--shadow", str(shadow), "--data", "digits",
                 "--target-keys", "digits:0,digits:9", "--n-inpaint", "4", "--top-k", "3", "--steps", "2",
                 "--jump-length", "1", "--device", "cpu", "--out", str(out)]) == 0
    r = json.loads((out / "result.json").read_text())
    for t in r["targets"]:
        assert "top_scores" not in t
        ratios = t["top_loss_ratios"]
        assert len(ratios) == 3 and ratios == sorted(ratios) and all(v > 0 for v in ratios)
        with np.load(out / "targets" / f"{t['index']:06d}.npz") as z:
            assert "scores" not in z.files
            np.testing.assert_allclose(z["loss_ratios"], ratios)
        assert json.loads((out / "targets" / f"{t['index']:06d}.json").read_text())["top_loss_ratios"] == ratios
    assert r["score"].startswith("-mean_topk_l2")  # the membership score: larger = more likely a member


def test_a_result_written_with_the_old_field_name_reads():
    new = dict(index=3, id="k3", member=True, mask="left", shadow="s", best_l2=0.1, mean_topk_l2=0.2, top1_l2=0.1,
               oracle_best_l2=0.05, mean_l2=0.3, top_l2=[0.1, 0.3], top_loss_ratios=[0.5, 0.7])
    res = TargetResult.from_dict(new)
    assert res.top_loss_ratios == [0.5, 0.7] and {k: res.to_dict()[k] for k in new} == new
    old = {k: v for k, v in new.items() if k != "top_loss_ratios"} | {"top_scores": [0.5, 0.7], "grid": "g.png"}
    assert TargetResult.from_dict(old) == res
    assert "top_scores" not in res.to_dict()


def test_a_result_written_as_mean_top10_l2_reads_as_mean_topk_l2():
    """Results written before the rename called the mean of the kept top_k ``mean_top10_l2`` (and its
    hidden-pixel version ``mean_top10_l2_hidden``) whatever k was; they read under the new names."""
    old = dict(index=3, id="k3", member=True, mask="left", shadow="s", best_l2=0.1, mean_top10_l2=0.2, top1_l2=0.1,
               oracle_best_l2=0.05, mean_l2=0.3, top_l2=[0.1, 0.3], top_scores=[0.5, 0.7], mean_top10_l2_hidden=0.28)
    res = TargetResult.from_dict(old)
    assert (res.mean_topk_l2, res.mean_topk_l2_hidden, res.top_loss_ratios) == (0.2, 0.28, [0.5, 0.7])
    assert not {"mean_top10_l2", "mean_top10_l2_hidden"} & set(res.to_dict())
