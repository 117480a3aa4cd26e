"""Counts past any real run's are refused as the command line is read, naming the flag and its bound: 10^11 as
`train --batch-size`, `sample --n` or `--micro-batch`, `membership --models`, `mia --bootstrap` or `--draws`, or
`inpaint`/`canaries --n-draws` ended in numpy's 745 GiB allocation traceback or a silent hang, and `--image-size`
10^11 in an OverflowError. A run refused or stopped before any work (its settings, `train`'s config and ids, a
store's manifest) is started over by the corrected command, where it was refused as "other settings"."""

from __future__ import annotations

import json

import pytest

from diffaudit.attacks.inpainting.attack import InpaintAttackConfig
from diffaudit.attacks.membership.run import MiaConfig
from diffaudit.cli.main import main
from diffaudit.core.errors import DiffauditError
from diffaudit.defenses.canary_run import CanaryEval
from helpers import make_tiny_model_dir

HUGE = "99999999999"
TRAIN = ["train", "--data", "digits", "--subset", "16", "--preset", "tiny", "--steps", "2", "--warmup-steps", "1",
         "--checkpoint-every", "2", "--log-every", "1", "--device", "cpu"]


def _refused(capsys, argv, *needles) -> None:
    assert main(["--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("bounds") / "m")


def test_huge_counts_are_refused_by_flag_with_their_bound(tmp_path, capsys, model):
    _refused(capsys, [*TRAIN, "--batch-size", HUGE, "--out", str(tmp_path / "t")], "--batch-size must be at most 65,536")
    _refused(capsys, [*TRAIN, "--image-size", HUGE, "--out", str(tmp_path / "t")], "--image-size", "[1, 4096]")
    sample = ["sample", "--model", str(model), "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "s")]
    _refused(capsys, [*sample, "--n", HUGE], "--n must lie in [1, 4,294,967,296]")
    _refused(capsys, [*sample, "--n", "8", "--micro-batch", HUGE], "--micro-batch must be at most 65,536")
    _refused(capsys, ["membership", "--data", "digits", "--subset", "16", "--models", "100000000000", "--out",
                      str(tmp_path / "m.npz")],
             "at most 4,096")
    assert not (tmp_path / "t").exists() and not (tmp_path / "s").exists() and not (tmp_path / "m.npz").exists()
    with pytest.raises(SystemExit):
        main(["mia", "--bootstrap", HUGE])
    assert "in [20, 100,000]" in capsys.readouterr().err
    with pytest.raises(DiffauditError, match=r"--draws must lie in \[1, 1,000\]"):
        MiaConfig(attack="strong-lira", n_draws=int(HUGE)).validate()
    with pytest.raises(DiffauditError, match=r"--n-draws must lie in \[1, 1,000\]"):
        InpaintAttackConfig(n_draws=int(HUGE)).validate()
    with pytest.raises(DiffauditError, match=r"--n-draws must lie in \[1, 1,000\]"):
        CanaryEval(n_draws=int(HUGE)).validate()


def test_a_run_stopped_before_any_work_is_started_over_by_the_corrected_command(tmp_path, capsys, model):
    """`train` killed before its first step leaves settings.json, train_config.json and train_ids.json; `sample`
    leaves settings.json and its manifest. Both were refused as "other settings" on the corrected re-run."""
    run = tmp_path / "t"
    assert main(["--quiet", *TRAIN, "--batch-size", "4", "--out", str(run)]) == 0
    for name in ("loss_log.jsonl", "result.json", "timing.json"):
        (run / name).unlink(missing_ok=True)
    import shutil

    for sub in ("unet", "scheduler", "state", "checkpoints"):
        shutil.rmtree(run / sub, ignore_errors=True)
    assert sorted(p.name for p in run.iterdir()) == ["settings.json", "train_config.json", "train_ids.json"]
    capsys.readouterr()
    assert main([*TRAIN, "--batch-size", "8", "--out", str(run)]) == 0
    assert "held no work yet" in capsys.readouterr().err
    assert json.loads((run / "train_config.json").read_text())["batch_size"] == 8

    store = tmp_path / "s"
    sample = ["sample", "--model", str(model), "--steps", "2", "--device", "cpu", "--out", str(store)]
    assert main(["--quiet", *sample, "--n", "4"]) == 0
    (store / "result.json").unlink()
    shutil.rmtree(store / "shards")
    assert main(["--quiet", *sample, "--n", "6"]) == 0  # the manifest of 4 is not resumed, nor refused
    assert json.loads((store / "manifest.json").read_text())["n_total"] == 6
    # with a finished shard, the earlier settings hold work: still refused by flag
    assert main(["--quiet", *sample, "--n", "8"]) == 2
    assert "--n (was 6, now 8)" in capsys.readouterr().err


def test_extract_names_min_clique_when_it_passes_max_component_and_warns_when_no_clique_can_be_found(tmp_path, capsys):
    """`--min-clique 99999999999` was refused as "--max-component (4096) must be at least --min-clique", blaming
    the flag left at its default; and 8 generations under the default --min-clique 10 gave "0 cliques" with no
    word that none could ever be found."""
    import numpy as np

    images = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", images=images)
    _refused(capsys, ["extract", "--samples", str(tmp_path / "s.npz"), "--min-clique", HUGE, "--out", str(tmp_path / "e")],
             f"--min-clique {int(HUGE):,} is more than --max-component 4,096", "lower --min-clique")
    assert main(["--quiet", "extract", "--samples", str(tmp_path / "s.npz"), "--out", str(tmp_path / "e"),
                 "--device", "cpu"]) == 0
    assert "8 generations cannot hold a clique of --min-clique 10, so none can be flagged" in capsys.readouterr().err
