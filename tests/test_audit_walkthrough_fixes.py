"""Problems a new-user walkthrough of the README found around a plain `diffaudit audit` (no shadows):

- its train stage printed "1 shadow models in audit-out/models (of the membership matrix's 2 columns)";
- on resume it listed every finished stage but `outliers`;
- standalone `extract` on the audit's samples used another tile grid (4) than the audit's stage (2);
- `verify --from-extract` accepted an extract result made from other generations (ids such as p0-i3
  exist in every sample store) and verified its medoids in the wrong store.
"""

from __future__ import annotations

import contextlib
import io

import pytest

from diffaudit.cli.main import main
from diffaudit.cli.shadows import is_target_split, trained_line
from diffaudit.core.io import read_json
from diffaudit.data.membership import Membership, make_membership, target_split

AUDIT = ["audit", "--subset", "48", "--train-size", "16", "--steps", "40", "--batch-size", "8", "--warmup-steps", "5",
         "--n-samples", "32", "--sample-steps", "3", "--sweep", "", "--device", "cpu", "--seed", "3"]


def _main(argv: list[str]) -> tuple[int, str, str]:
    """``diffaudit ARGV`` in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def audit(tmp_path_factory):
    """A small audit without shadows, run twice: the second resumes it as if the first had been killed
    after its last stage, before its result (a finished audit answers without running its stages):
    (folder, first run, second run)."""
    root = tmp_path_factory.mktemp("walkthrough") / "audit-out"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("DIFFAUDIT_QUIET", raising=False)
        first = _main([*AUDIT, "--out", root])
        (root / "result.json").unlink()
        second = _main([*AUDIT, "--out", root])
    assert first[0] == 0, first[2]
    assert second[0] == 0, second[2]
    return root, first, second


def test_a_plain_audit_does_not_call_its_target_a_shadow_model(audit):
    _, (_, out, _), _ = audit
    assert "shadow model" not in out
    assert "the target model" in out and "trained on its 16 members" in out and "32 examples are its non-members" in out


def test_the_shadows_line_tells_a_target_from_shadow_models(tmp_path):
    keys = [f"k{i}" for i in range(10)]
    target = Membership(target_split(10, 4, seed=0), keys, 0)
    shadows = Membership(make_membership(10, 4, seed=0), keys, 0)
    assert is_target_split(target) and not is_target_split(shadows)
    line = trained_line(tmp_path, 1, [0], target)
    assert "target model" in line and "4 members" in line and "6 examples are its non-members" in line
    assert trained_line(tmp_path, 2, [0, 1], shadows) == f"2 shadow models in {tmp_path} (of the membership matrix's 4 columns)"
    assert trained_line(tmp_path, 1, [0], shadows).startswith("1 shadow model in ")


def test_a_resumed_audit_lists_every_finished_stage_with_outliers(audit):
    root, _, (_, _, err) = audit
    assert (root / "outliers" / "result.json").exists()
    for stage in ("train", "sample", "extract", "verify", "mia", "outliers"):
        assert f"audit: {stage}: finished earlier, kept" in err
    assert read_json(root / "result.json")["stages"] == ["train", "sample", "extract", "verify", "mia", "outliers"]


def test_standalone_extract_uses_the_audits_grid_on_its_samples(audit, tmp_path):
    root, _, _ = audit
    staged = read_json(root / "extract" / "result.json")
    assert staged["settings"]["grid"] == 2  # 8x8 digits: 4-pixel tiles
    code, _, err = _main(["--quiet", "extract", "--samples", root / "samples", "--out", tmp_path / "ex", "--device", "cpu"])
    assert code == 0, err
    alone = read_json(tmp_path / "ex" / "result.json")
    assert alone["settings"]["grid"] == 2 and alone["n_groups"] == staged["n_groups"]
    assert [g["members"] for g in alone["groups"]] == [g["members"] for g in staged["groups"]]


def test_verify_refuses_an_extract_of_another_sample_store(audit, tmp_path):
    root, _, _ = audit
    other = tmp_path / "gens"
    code, _, err = _main(["--quiet", "sample", "--model", root / "models" / "model-00", "--n", "32", "--steps", "2",
                          "--seed", "9", "--out", other, "--device", "cpu"])
    assert code == 0, err
    extracted = read_json(root / "extract" / "result.json")["settings"]["samples_identity"]
    code, _, err = _main(["--quiet", "verify", "--samples", other, "--from-extract", root / "extract" / "result.json",
                          "--data", "digits", "--subset", "48", "--out", tmp_path / "v", "--device", "cpu"])
    assert code == 2
    assert "other generations" in err and extracted in err and "store:" in err.replace(extracted, "")
    assert not (tmp_path / "v").exists()
    # the samples the extract ran on still verify
    code, _, err = _main(["--quiet", "verify", "--samples", root / "samples", "--from-extract", root / "extract" / "result.json",
                          "--data", "digits", "--subset", "48", "--out", tmp_path / "ok", "--device", "cpu"])
    assert code == 0, err
    ok = read_json(tmp_path / "ok" / "result.json")
    assert ok["n_samples"] == len(ok["verified_medoids"]) and ok["n_samples_total"] == 32


def test_an_inpainting_option_without_inpaint_is_warned_of_not_refused_on_resume(audit):
    """`--n-inpaint 8` without --inpaint warned "not used" and then refused the finished audit as made
    with other settings, asking for a --redo of a stage that never runs."""
    root, _, _ = audit
    code, out, err = _main([*AUDIT, "--out", root, "--n-inpaint", "8"])
    assert code == 0, err
    assert "--n-inpaint 8 is for the inpainting stage, which runs only with --inpaint: not used" in err
    assert "n_inpaint" not in read_json(root / "settings.json")["settings"]


def test_a_damaged_audit_result_is_written_again_from_the_stages(audit):
    """A cut audit result.json stopped every resume (and --redo) at "not valid JSON", with no advice."""
    root, _, _ = audit
    good = read_json(root / "result.json")
    (root / "result.json").write_text('{"command": "audit", "uni')
    code, out, err = _main([*AUDIT, "--out", root])
    assert code == 0, err
    assert "result.json" in err and "it is written again from the stages' results" in err
    assert read_json(root / "result.json")["unique_extracted"] == good["unique_extracted"]
