"""``diffaudit compare``: two audits side by side."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from diffaudit.cli.main import main
from diffaudit.core.results import write_result
from diffaudit.report.compare_table import format_rows
from diffaudit.defenses.compare import compare_summaries, metrics


def _audit(root, extracted, tpr, auc, eps=None, data=None, ci=None):
    """A tiny audit-like folder: a verify and a mia result (``data``: the mia settings' data record; ``ci``:
    the mia result's confidence intervals)."""
    write_result(root / "verify" / "result.json", "verify", {"rule": "ratio"}, {}, unique_extracted=extracted,
                 n_samples=1000, extracted=[], rule="ratio")
    write_result(root / "mia" / "result.json", "mia", {} if data is None else {"data": data}, {}, attack="lira", auc=auc,
                 tpr_at_fpr={"0.01": tpr, "0.001": tpr / 2}, n_members=50, n_nonmembers=50, **({"ci": ci} if ci else {}))
    if eps is not None:
        (root / "train").mkdir(parents=True)
        (root / "train" / "dp.json").write_text(json.dumps({"epsilon": eps, "delta": 1e-5}))
    return root


def test_compare_summaries_rows_and_table():
    a = {"extraction": {"unique_extracted": 1280, "n_samples": 2**20}, "mia": {"lira": {"auc": 0.98, "tpr_at_fpr": {"0.01": 0.9}}}}
    b = {"extraction": {"unique_extracted": 986, "n_samples": 2**20}, "mia": {"lira": {"auc": 0.9, "tpr_at_fpr": {"0.01": None}}},
         "canaries": {"n_extracted": 2, "by_repeats": [{"repeats": 64, "mean_exposure": 5.5}]}}
    rows = {r["metric"]: r for r in compare_summaries(a, b, dp_b={"epsilon": 50.0})}
    assert rows["extraction: unique extracted"] == {"metric": "extraction: unique extracted", "key": "extraction_unique", "kind": "count", "better": "lower",
                                                   "a": 1280, "b": 986, "change": -294}
    assert rows["mia lira: TPR at 1% FPR"]["b"] is None and rows["mia lira: TPR at 1% FPR"]["change"] is None
    assert rows["mia lira: AUC"]["change"] == pytest.approx(-0.08)
    assert rows["canaries x64: mean exposure"]["a"] is None and rows["model: DP epsilon"]["b"] == 50.0
    table = format_rows(list(rows.values()), "plain", "dedup")
    assert table.splitlines()[0].startswith("| metric") and "| 1280" in table and "-294" in table
    assert metrics({}) == {}


def test_compare_cli_on_two_audit_folders(tmp_path, capsys):
    a = _audit(tmp_path / "plain", 12, 0.5, 0.9)
    b = _audit(tmp_path / "dp", 3, 0.1, 0.6, eps=42.0)
    out = tmp_path / "cmp"
    assert main(["--json", "compare", str(a), str(b), "--labels", "plain,dp", "--out", str(out)]) == 0
    r = json.loads(capsys.readouterr().out)
    rows = {x["metric"]: x for x in r["rows"]}
    assert rows["extraction: unique extracted"]["a"] == 12 and rows["extraction: unique extracted"]["b"] == 3
    assert rows["mia lira: TPR at 1% FPR"]["a"] == 0.5 and rows["mia lira: TPR at 1% FPR"]["change"] == pytest.approx(-0.4)
    assert rows["model: DP epsilon"]["b"] == 42.0 and rows["model: DP epsilon"]["a"] is None
    assert r["command"] == "compare" and r["labels"] == ["plain", "dp"]
    assert json.loads((out / "result.json").read_text())["rows"] == r["rows"]
    assert main(["compare", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert "| extraction: unique extracted" in text and "| 12 " in text
    assert main(["compare", str(a), str(tmp_path / "missing")]) == 2
    capsys.readouterr()
    # --quiet alone would print the table nowhere and keep it nowhere: refused; with --out it is kept
    assert main(["--quiet", "compare", str(a), str(b)]) == 2
    assert "--quiet without --out or --json would neither print the comparison nor keep it" in capsys.readouterr().err
    assert main(["--quiet", "compare", str(a), str(b), "--out", str(tmp_path / "kept")]) == 0
    assert capsys.readouterr().out == "" and (tmp_path / "kept" / "result.json").is_file()


def test_top_level_help_renders_with_the_defence_commands():
    from diffaudit.cli.main import build_parser

    text = build_parser().format_help()  # argparse %-formats every command's help
    for name in ("dedup", "prompts", "canaries", "compare"):
        assert f"    {name} " in text


def test_top_level_help_is_read_without_importing_the_commands():
    """`diffaudit --help` lists the same commands and help as the full parser, without importing
    torch (the command modules' imports take seconds)."""
    from diffaudit.cli.main import build_parser

    assert build_parser(overview=True).format_help() == build_parser().format_help()
    code = ("import sys; from diffaudit.cli.main import build_parser; build_parser(overview=True).format_help(); "
            "print(sorted(m for m in ('torch', 'numpy', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_compare_out_is_recomputed_when_a_folder_changes(tmp_path, capsys):
    """Same paths, new results: the written table follows the folders, never an earlier run's."""
    a = _audit(tmp_path / "plain", 12, 0.5, 0.9)
    b = _audit(tmp_path / "dedup", 3, 0.1, 0.6)
    out = tmp_path / "cmp"
    assert main(["--json", "compare", str(a), str(b), "--out", str(out)]) == 0
    capsys.readouterr()
    _audit(tmp_path / "dedup2", 7, 0.1, 0.6)
    (b / "verify" / "result.json").write_bytes((tmp_path / "dedup2" / "verify" / "result.json").read_bytes())
    assert main(["--json", "compare", str(a), str(b), "--out", str(out)]) == 0
    rows = {x["metric"]: x for x in json.loads(capsys.readouterr().out)["rows"]}
    assert rows["extraction: unique extracted"]["b"] == 7
    saved = {x["metric"]: x for x in json.loads((out / "result.json").read_text())["rows"]}
    assert saved["extraction: unique extracted"]["b"] == 7
    # another comparison into the same folder replaces it (it is recomputed on every run), and says so
    assert main(["compare", str(a), str(b), "--labels", "x,y", "--out", str(out)]) == 0
    assert f"compare: {out} held another comparison (" in capsys.readouterr().err
    assert json.loads((out / "result.json").read_text())["labels"] == ["x", "y"]
    # a compared folder is never written into, with --fresh neither (it deleted the audit's models and results)
    for fresh in ([], ["--fresh"]):
        assert main(["compare", str(a), str(b), "--out", str(a)] + fresh) == 2
        assert f"--out {a} is inside {a}, one of the folders compared" in capsys.readouterr().err
    assert main(["compare", str(a), str(b), "--out", str(b / "cmp")]) == 2
    assert not (a / "result.json").exists() and not (b / "cmp").exists() and (a / "verify" / "result.json").exists()
    capsys.readouterr()
    # its folder has no HTML report (an empty page before): said, with where the table is
    assert main(["report", str(out)]) == 2
    assert "holds the output of `diffaudit compare`, which has no HTML report" in capsys.readouterr().err
    assert not (out / "report.html").exists()


def test_dp_record_of_an_audit_folder_is_its_audited_model(tmp_path, capsys):
    """`audit --model RUN` links models/model-00 to RUN (with --shadows the target is only recorded):
    the DP epsilon row comes from the audited run's dp.json, following the link; never a DP-SGD shadow's."""
    from diffaudit.defenses.compare import find_dp_record

    run = tmp_path / "dp-run"
    run.mkdir()
    (run / "dp.json").write_text(json.dumps({"epsilon": 8.0, "delta": 1e-5}))
    linked = _audit(tmp_path / "linked", 3, 0.1, 0.6)
    (linked / "models").mkdir()
    (linked / "models" / "model-00").symlink_to(run.resolve(), target_is_directory=True)
    assert find_dp_record(linked) == {"epsilon": 8.0, "delta": 1e-5}
    shadows = _audit(tmp_path / "shadows", 3, 0.1, 0.6)
    (shadows / "models" / "model-00").mkdir(parents=True)  # a shadow, trained without DP-SGD
    write_result(shadows / "result.json", "audit", {"model": str(run), "shadows": 4}, {}, target=str(run))
    assert find_dp_record(shadows)["epsilon"] == 8.0
    # an unfinished audit (its settings only) whose shadows trained with DP-SGD like the target: the target's
    from diffaudit.core.outdir import SETTINGS_FILE, settings_record

    unfinished = tmp_path / "unfinished"
    (unfinished / "models" / "model-00").mkdir(parents=True)
    (unfinished / "models" / "model-00" / "dp.json").write_text(json.dumps({"epsilon": 13.0, "delta": 1e-5}))
    (unfinished / SETTINGS_FILE).write_text(json.dumps(settings_record("audit", {"model": str(run), "shadows": 2})))
    assert find_dp_record(unfinished)["epsilon"] == 8.0
    plain = _audit(tmp_path / "plain", 12, 0.5, 0.9)
    (plain / "models" / "model-00").mkdir(parents=True)
    assert find_dp_record(plain) is None
    assert main(["--json", "compare", str(plain), str(linked)]) == 0
    rows = {x["metric"]: x for x in json.loads(capsys.readouterr().out)["rows"]}
    assert rows["model: DP epsilon"]["a"] is None and rows["model: DP epsilon"]["b"] == 8.0
    assert main(["compare", str(plain), str(linked)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "model: DP epsilon" in x)
    assert [c.strip() for c in line.strip("| ").split("|")][1:] == ["no DP-SGD", "8", "-"]


def test_train_map_only_verify_compares_its_own_count():
    """A --train-map-only verify has no unique count (null, not 0) but its prompt-check count."""
    a = {"extraction": {"unique_extracted": None, "n_samples": 500, "prompt_checks_extracted": 3, "prompt_checks_n": 4}}
    b = {"extraction": {"unique_extracted": None, "n_samples": 500, "prompt_checks_extracted": 1, "prompt_checks_n": 4}}
    rows = {r["metric"]: r for r in compare_summaries(a, b)}
    assert rows["extraction: unique extracted"]["a"] is None
    assert rows["extraction: train-map matches"] == {"metric": "extraction: train-map matches", "key": "extraction_train_map_matches", "kind": "count",
                                                    "better": "lower", "a": 3, "b": 1, "change": -2}


def test_canaries_without_extraction_compare_as_unknown(tmp_path, capsys):
    """`canaries --n-samples 0` measured no extraction: the row is null on that side, not 0."""
    for name, extracted in (("none", None), ("some", True)):
        cans = [{"key": f"c{j}", "repeats": 4, "exposure": 2.0, "extracted": extracted} for j in range(2)]
        write_result(tmp_path / name / "result.json", "canaries", {}, {}, n_canaries=2,
                     n_extracted=None if extracted is None else 2, canaries=cans)
    assert main(["--json", "compare", str(tmp_path / "none"), str(tmp_path / "some")]) == 0
    rows = {x["metric"]: x for x in json.loads(capsys.readouterr().out)["rows"]}
    assert rows["canaries: extracted"]["a"] is None and rows["canaries: extracted"]["b"] == 2


def _data(spec, digest=None, **options):
    return {"spec": spec, "options": {"subset_seed": 0, "skip_bad": False, **options}, "digest": digest}


def _compare_json(capsys, a, b):
    """(result, stderr) of `diffaudit --json compare A B --labels plain,other`."""
    assert main(["--json", "compare", str(a), str(b), "--labels", "plain,other"]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_compare_warns_when_the_folders_studied_different_datasets(tmp_path, capsys):
    """Another dataset (spec, loader options or, where recorded, data digest) is a warning on stderr and
    in the JSON; the same data, under the same or another path, is none."""
    plain = _audit(tmp_path / "plain", 12, 0.5, 0.9, data=_data("digits", "d1g1t5"))
    cases = {  # folder B's data: the warning's words, or None for no warning
        "cifar": (_data("cifar10", "c1fa6"), ["digits [data digest d1g1t5]", "cifar10 [data digest c1fa6]"]),
        "rewritten": (_data("digits", "0ther"), ["digits [data digest 0ther]"]),
        "same": (_data("digits", "d1g1t5"), None),
        "moved": (_data("./copy-of-digits", "d1g1t5"), None),  # same pixels and keys at another path
    }
    for name, (data, words) in cases.items():
        r, err = _compare_json(capsys, plain, _audit(tmp_path / name, 3, 0.1, 0.6, data=data))
        if words is None:
            assert r["warnings"] == [] and err == "", name
            continue
        assert len(r["warnings"]) == 1 and err == f"diffaudit compare: warning: {r['warnings'][0]}\n", name
        assert r["warnings"][0].startswith("plain and other were made on different datasets")
        assert all(w in err for w in words), (name, err)
    # No digest recorded (verify's settings form): the spec and loader options decide; the options named
    for name, subset in (("sub", 200), ("all", None)):
        write_result(tmp_path / name / "result.json", "verify", {"data": "digits", "data_options": {"subset": subset}}, {},
                     unique_extracted=1, n_samples=10, extracted=[], rule="ratio")
    r, err = _compare_json(capsys, tmp_path / "all", tmp_path / "sub")
    assert "plain on digits and other on digits --subset 200:" in r["warnings"][0] and "--subset 200" in err


def test_a_defence_on_the_same_dataset_is_no_warning(tmp_path, capsys):
    """A deduplicated target trains on fewer examples of the same dataset: its audit's verify stage reads
    another training set (members view, digest), which is the defence, not another dataset."""
    for name, members in (("plain", "d1"), ("dedup", "d2")):
        root = _audit(tmp_path / name, 3, 0.1, 0.6, data=_data("cifar10", "c1fa6"))
        write_result(root / "result.json", "audit", {"data": "cifar10", "subset": None, "subset_seed": 0, "skip_bad": False}, {})
        write_result(root / "verify" / "result.json", "verify",
                     {"data": f"{root}/members.view.json", "data_options": {}, "data_digest": members}, {},
                     unique_extracted=3, n_samples=10, extracted=[], rule="ratio")
    r, err = _compare_json(capsys, tmp_path / "plain", tmp_path / "dedup")
    assert r["warnings"] == [] and err == ""


def test_compare_warns_when_the_extractions_searched_different_budgets(tmp_path, capsys):
    """Unique extracted grows with the generations searched: 512 against 4,096 generations is a warning
    naming both counts, while equal budgets, and a side without extraction, are none. A verify of clique
    medoids counts all the generations sampled (n_samples_total), not the medoids."""
    for name, n in (("small", 512), ("large", 4096), ("same", 512)):
        write_result(tmp_path / name / "result.json", "verify", {"rule": "ratio"}, {}, unique_extracted=3, n_samples=n,
                     extracted=[], rule="ratio")
    r, err = _compare_json(capsys, tmp_path / "small", tmp_path / "large")
    (warning,) = r["warnings"]
    assert warning.startswith("plain and other searched different numbers of generations for extracted images, "
                              "plain 512 and other 4,096") and "--n-samples" in warning and warning in err
    assert _compare_json(capsys, tmp_path / "small", tmp_path / "same")[0]["warnings"] == []
    mia_only = _audit(tmp_path / "mia_only", 1, 0.1, 0.6)
    (mia_only / "verify" / "result.json").unlink()
    assert not any("searched different" in w for w in _compare_json(capsys, tmp_path / "small", mia_only)[0]["warnings"])
    write_result(tmp_path / "medoids" / "result.json", "verify", {"rule": "ratio"}, {}, unique_extracted=3, n_samples=40,
                 n_samples_total=512, extracted=[], rule="ratio")
    assert _compare_json(capsys, tmp_path / "small", tmp_path / "medoids")[0]["warnings"] == []


def test_compare_table_prints_tpr_as_percentages_and_json_as_fractions(tmp_path, capsys):
    a = _audit(tmp_path / "plain", 1280, 0.5, 0.9)
    b = _audit(tmp_path / "dp", 986, 0.0123, 0.6)
    assert main(["compare", str(a), str(b)]) == 0
    lines = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:5]]
             for line in capsys.readouterr().out.splitlines()}
    assert lines["mia lira: TPR at 1% FPR"] == ["50.0%", "1.2%", "-48.8 pp"]
    assert lines["mia lira: TPR at 0.1% FPR"] == ["25.0%", "0.61%", "-24.4 pp"]
    assert lines["mia lira: AUC"] == ["0.900", "0.600", "-0.300"] and lines["extraction: unique extracted"] == ["1280", "986", "-294"]
    assert main(["--json", "compare", str(a), str(b)]) == 0
    rows = {x["metric"]: x for x in json.loads(capsys.readouterr().out)["rows"]}
    assert rows["mia lira: TPR at 1% FPR"]["b"] == 0.0123


def test_a_reader_that_stops_early_ends_compare_quietly(tmp_path):
    """`diffaudit compare A B | head -1`: no BrokenPipeError traceback, status 1 (the output was cut short)."""
    a, b = _audit(tmp_path / "a", 12, 0.5, 0.9), _audit(tmp_path / "b", 3, 0.1, 0.6)
    proc = subprocess.Popen([sys.executable, "-m", "diffaudit.cli.main", "compare", str(a), str(b)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the command, still importing, writes its table
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 1 and err == ""


def test_folders_without_comparable_results_are_an_error(tmp_path, capsys):
    """Two training runs hold none of what compare reads: an error naming both folders and what it reads,
    not an empty table with status 0."""
    for name in ("run-plain", "run-dedup"):
        write_result(tmp_path / name / "result.json", "train", {}, {}, steps=600, n_train=1997)
    assert main(["compare", str(tmp_path / "run-plain"), str(tmp_path / "run-dedup"), "--out", str(tmp_path / "cmp")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not (tmp_path / "cmp").exists()
    assert f"neither {tmp_path / 'run-plain'} (train) nor {tmp_path / 'run-dedup'} (train)" in captured.err
    assert "compare reads an audit folder" in captured.err and "mia (membership inference)" in captured.err
    # and says how to measure what the two runs leak: audit each first, on the data the run records
    assert (f"To compare what {tmp_path / 'run-plain'} and {tmp_path / 'run-dedup'} leak, audit each first, e.g. "
            f"`diffaudit audit --model {tmp_path / 'run-plain'} --data DATA --out audit-run-plain`") in captured.err
    write_result(tmp_path / "run-plain" / "result.json", "train", {"data": {"spec": "my photos", "options": {}}}, {},
                 steps=600, n_train=1997)
    assert main(["compare", str(tmp_path / "run-plain"), str(tmp_path / "run-dedup")]) == 2
    assert "--data 'my photos' --out audit-run-plain" in capsys.readouterr().err  # the run's recorded data, quoted



def test_model_rows_say_how_each_audited_model_was_trained(tmp_path, capsys):
    """Training steps and images sit beside what each audit measured (memorization against training length, a
    deduplicated run's smaller set); alone they compare nothing, so two folders that share no measured
    metric are still said to."""
    import shutil

    a, b = _audit(tmp_path / "short", 2, 0.5, 0.6), _audit(tmp_path / "long", 9, 0.5, 0.9)
    for folder, steps in ((a, 150), (b, 600)):
        write_result(folder / "train" / "result.json", "train", {}, {}, steps=steps, n_train=40)
    assert main(["--json", "compare", str(a), str(b)]) == 0
    rows = {r["key"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert (rows["model_steps"]["a"], rows["model_steps"]["b"], rows["model_steps"]["change"]) == (150, 600, 450)
    assert rows["model_train_images"]["change"] == 0 and rows["model_steps"]["better"] == "none"
    shutil.rmtree(a / "verify")
    shutil.rmtree(b / "mia")
    assert main(["compare", str(a), str(b)]) == 0
    assert "share no measured metric (short holds mia lira: AUC" in capsys.readouterr().err



def test_columns_are_named_after_the_folders(tmp_path, capsys):
    a, b = _audit(tmp_path / "audit-plain", 12, 0.5, 0.9), _audit(tmp_path / "audit-dedup", 3, 0.1, 0.6)
    assert main(["compare", str(a), str(b)]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert [c.strip() for c in header.split("|")[1:5]] == ["metric", "audit-plain", "audit-dedup",
                                                           "change (audit-dedup - audit-plain)"]
    x, y = _audit(tmp_path / "x" / "audit", 1, 0.5, 0.9), _audit(tmp_path / "y" / "audit", 1, 0.5, 0.9)
    assert main(["--json", "compare", str(x), str(y)]) == 0
    assert json.loads(capsys.readouterr().out)["labels"] == ["x/audit", "y/audit"]
    assert main(["--json", "compare", str(x), str(x)]) == 0
    assert json.loads(capsys.readouterr().out)["labels"] == ["A", "B"]
    assert main(["--json", "compare", str(x), str(y), "--labels", "plain,dedup"]) == 0
    assert json.loads(capsys.readouterr().out)["labels"] == ["plain", "dedup"]


def test_json_keeps_counts_as_integers(tmp_path, capsys):
    a, b = _audit(tmp_path / "plain", 512, 0.5, 0.9), _audit(tmp_path / "dedup", 3, 0.1, 0.6)
    assert main(["--json", "compare", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    rows = {x["metric"]: x for x in json.loads(text)["rows"]}
    count = rows["extraction: unique extracted"]
    assert (count["a"], count["b"], count["change"]) == (512, 3, -509)
    assert all(type(count[k]) is int for k in ("a", "b", "change")) and '"a": 512.0' not in text
    assert type(rows["extraction: generations"]["a"]) is int and type(rows["mia lira: AUC"]["a"]) is float


def _ci(auc, tpr, tpr_low):
    """A mia result's intervals: AUC +- 0.012, TPR at 1% FPR from ``tpr_low`` to twice ``tpr``."""
    return {"auc": {"low": auc - 0.012, "high": auc + 0.012, "level": 0.95},
            "tpr_at_fpr": {"0.01": {"low": tpr_low, "high": 2 * tpr, "level": 0.95}}}


def _table(capsys, a, b) -> dict[str, list[str]]:
    """{metric: [a, b, change]} cells of `diffaudit compare A B`."""
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:5]] for line in out.splitlines() if "|" in line}


def test_changes_print_at_the_values_precision_with_their_intervals(tmp_path, capsys):
    """Two audits at chance: AUC 0.4976 and 0.4980, TPR 1.0000% and 1.0015%. The changes print at the values'
    precision (no 0.0004355, no 0.0015 pp), the intervals beside the values, and the changes as within noise."""
    a = _audit(tmp_path / "plain", 0, 0.010000, 0.4976, ci=_ci(0.4976, 0.010000, 0.0055))
    b = _audit(tmp_path / "dedup", 0, 0.010015, 0.4980, ci=_ci(0.4980, 0.010015, 0.0065))
    rows = _table(capsys, a, b)
    assert rows["mia lira: AUC"] == ["0.498 [0.486, 0.510]", "0.498 [0.486, 0.510]", "0.000 (within noise)"]
    assert rows["mia lira: TPR at 1% FPR"] == ["1.0% [0.55%, 2.0%]", "1.0% [0.65%, 2.0%]", "0.0 pp (within noise)"]
    assert rows["mia lira: TPR at 0.1% FPR"] == ["0.5%", "0.5%", "0.0 pp"]  # no interval recorded: no flag
    strong = _audit(tmp_path / "strong", 0, 0.25, 0.9, ci=_ci(0.9, 0.25, 0.2))
    rows = _table(capsys, a, strong)
    assert rows["mia lira: AUC"][2] == "+0.402" and rows["mia lira: TPR at 1% FPR"][2] == "+24.0 pp"
    assert main(["--json", "compare", str(a), str(strong)]) == 0
    auc = {x["metric"]: x for x in json.loads(capsys.readouterr().out)["rows"]}["mia lira: AUC"]
    assert auc["a_ci"] == pytest.approx([0.4856, 0.5096]) and auc["within_noise"] is False


def test_the_baseline_set_size_is_a_row():
    a = {"extraction": {"unique_extracted": 0, "n_samples": 512, "baseline_unique_extracted": 0, "baseline_n_images": 2000}}
    b = {"extraction": {"unique_extracted": 0, "n_samples": 512, "baseline_unique_extracted": 0, "baseline_n_images": 1997}}
    rows = {r["metric"]: r for r in compare_summaries(a, b)}
    assert rows["extraction: baseline set size"] == {"metric": "extraction: baseline set size", "key": "extraction_baseline_size", "kind": "count",
                                                    "better": "none", "a": 2000, "b": 1997, "change": -3}
    assert "extraction: baseline set size" not in metrics({"extraction": {"unique_extracted": 1}})


def test_bounds_and_unmeasurable_values_read_as_the_report_says_them():
    """A mean exposure over canaries at the ceiling is a lower bound ("≥", and so is the change); a TPR at an
    FPR below 1/non-members cannot be measured ("n/a"), unlike one that is simply missing ("-")."""
    def summary(exposure, at_ceiling, n_non, tpr01):
        return {"mia": {"loss": {"auc": 0.6, "tpr_at_fpr": {"0.01": 0.02, "0.001": tpr01}, "n_nonmembers": n_non}},
                "canaries": {"n_extracted": 0, "by_repeats": [{"repeats": 16, "mean_exposure": exposure,
                                                               "n_at_ceiling": at_ceiling}]}}

    plain, private = summary(9.0, 2, 400, None), summary(4.0, 0, 2000, 0.003)
    rows = {r["metric"]: r for r in compare_summaries(plain, private)}
    exp, tpr = rows["canaries x16: mean exposure"], rows["mia loss: TPR at 0.1% FPR"]
    assert exp["a_qualifier"] == "at_least" and exp["b_qualifier"] is None and exp["change_bound"] == "at_most"
    assert tpr["a_qualifier"] == "n/a" and tpr["a"] is None and tpr["change"] is None
    table = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:5]]
             for line in format_rows(list(rows.values()), "plain", "dp").splitlines() if line.startswith("| ")}
    assert table["canaries x16: mean exposure"] == ["≥ 9", "4", "≤ -5"]
    assert table["mia loss: TPR at 0.1% FPR"] == ["n/a", "0.3%", "-"]
    text = format_rows(list(rows.values()), "plain", "dp")
    assert "≥: some canaries are at the exposure ceiling" in text and "n/a: the FPR is below 1/non-members" in text
    both = {r["metric"]: r for r in compare_summaries(plain, summary(12.0, 1, 50, None))}
    assert both["canaries x16: mean exposure"]["change"] is None
    assert both["mia loss: TPR at 0.1% FPR"]["b_qualifier"] == "n/a"
    assert "unknown (both bounds)" in format_rows(list(both.values()), "a", "b")
    # a summary without non-member counts: a missing TPR stays missing ("-"), not "n/a"
    unknown = {r["metric"]: r for r in compare_summaries(plain, {"mia": {"loss": {"auc": 0.5, "tpr_at_fpr": {"0.001": None}}}})}
    assert unknown["mia loss: TPR at 0.1% FPR"]["b_qualifier"] is None


def test_a_count_not_above_its_baseline_is_said_to_be_no_evidence():
    """10 extracted against 5 never-seen matches (p = 0.14) dropping to 0 is no evidence a defence helped: the
    table says so under it; a significant count gets no such line."""
    plain = {"extraction": {"unique_extracted": 10, "n_samples": 128, "baseline_unique_extracted": 5, "baseline_pvalue": 0.14}}
    dp = {"extraction": {"unique_extracted": 0, "n_samples": 128, "baseline_unique_extracted": 0, "baseline_pvalue": 1.0}}
    rows = compare_summaries(plain, dp)
    row = {r["metric"]: r for r in rows}["extraction: unique extracted"]
    assert (row["a_pvalue"], row["b_pvalue"]) == (0.14, 1.0)
    text = format_rows(rows, "plain", "dp-eps8")
    assert ("plain: 10 extracted is not significantly above its false-positive baseline (p = 0.14): by itself no "
            "evidence of extraction, nor is a change from it evidence of a defence") in text
    assert "dp-eps8: 0 extracted" not in text  # nothing extracted: nothing to weigh
    plain["extraction"]["baseline_pvalue"] = 1e-6
    assert "not significantly above" not in format_rows(compare_summaries(plain, dp), "plain", "dp-eps8")


def test_a_folder_given_twice_or_folders_with_nothing_in_common_are_warned_about(tmp_path, capsys):
    a = _audit(tmp_path / "plain", 12, 0.5, 0.9)
    assert main(["compare", str(a), str(a)]) == 0
    assert "is given twice: every change is 0 by construction" in capsys.readouterr().err
    cans = [{"key": f"c{j}", "repeats": 4, "exposure": 2.0, "extracted": False} for j in range(2)]
    write_result(tmp_path / "can" / "result.json", "canaries", {}, {}, n_canaries=2, n_extracted=0, canaries=cans)
    assert main(["compare", str(a), str(tmp_path / "can")]) == 0
    err = capsys.readouterr().err
    assert "share no measured metric" in err and err.rstrip().endswith("no measurement of what they leak is compared")
    # a training run beside an audit: only how the models were trained is side by side, and the warning says so
    write_result(tmp_path / "run" / "result.json", "train", {"train": {"steps": 100}}, {}, steps=100, n_train=64)
    assert main(["compare", str(a), str(tmp_path / "run")]) == 0
    out, err = capsys.readouterr()
    assert "model: training steps" in out and "no measurement of what they leak is compared, only how the models were trained" in err
    assert f"To compare what {tmp_path / 'run'} leak, audit it first, e.g. `diffaudit audit --model {tmp_path / 'run'}" in err
    # two training runs, one with DP-SGD: epsilon says how one was trained, not what either leaks; audit each first
    write_result(tmp_path / "dp" / "result.json", "train", {"train": {"steps": 100}}, {}, steps=100, n_train=64)
    (tmp_path / "dp" / "dp.json").write_text(json.dumps({"epsilon": 8.0, "delta": 1e-5}))
    assert main(["compare", str(tmp_path / "run"), str(tmp_path / "dp")]) == 0
    err = capsys.readouterr().err
    assert "(run holds none; dp none): no measurement of what they leak is compared" in err
    assert f"To compare what {tmp_path / 'run'} and {tmp_path / 'dp'} leak, audit each first" in err
    assert main(["compare", str(a), str(tmp_path / "dp"), "--labels", "x,x"]) == 2
    assert "--labels names both folders 'x': give them two names" in capsys.readouterr().err
    b = _audit(tmp_path / "dedup", 3, 0.1, 0.6)
    assert main(["compare", str(a), str(b)]) == 0
    assert "warning" not in capsys.readouterr().err


def test_compare_warns_when_an_attack_ran_at_other_timesteps(tmp_path, capsys):
    for name, t, loss in (("t100", 100, 0.45), ("t300", 300, 0.15)):
        write_result(tmp_path / name / "result.json", "mia", {}, {}, attack="loss", auc=0.6, timesteps=[t], n_draws=1,
                     flips=False, tpr_at_fpr={"0.01": 0.0}, n_members=50, n_nonmembers=50,
                     mean_loss={"members": loss - 0.05, "nonmembers": loss, "gap": 0.05})
    assert main(["compare", str(tmp_path / "t100"), str(tmp_path / "t300")]) == 0
    captured = capsys.readouterr()
    assert ("compare: warning: t100 and t300 ran the membership attack loss with other queries (--timesteps 100 and 300, "
            "t100's first)") in captured.err
    assert "(other queries)" in captured.out and "denoises never-seen images" not in captured.out


def test_compare_warns_when_the_folders_ran_different_membership_attacks(tmp_path, capsys):
    """The loss attack on one side and lira-fixed on the other: no membership row has two values, and the
    warning says which attack each ran; one attack in common is no warning."""
    for name, attack in (("plain", "loss"), ("dp", "lira-fixed"), ("dp2", "loss")):
        write_result(tmp_path / name / "result.json", "mia", {}, {}, attack=attack, auc=0.6, tpr_at_fpr={"0.01": 0.0},
                     n_members=50, n_nonmembers=50)
    r, err = _compare_json(capsys, tmp_path / "plain", tmp_path / "dp")
    assert ("plain and other ran different membership attacks, plain loss and other lira-fixed: no membership row is "
            "compared") in r["warnings"][0] and r["warnings"][0] in err
    assert not any("different membership attacks" in w for w in _compare_json(capsys, tmp_path / "plain", tmp_path / "dp2")[0]["warnings"])


def test_rows_carry_the_fields_their_names_were_filled_with(tmp_path, capsys):
    """A script reads which attack, FPR or repeat count a row is of from the row, not by parsing its name."""
    a = _audit(tmp_path / "plain", 3, 0.1, 0.6)
    cans = [{"key": f"c{j}", "repeats": r, "exposure": 2.0, "extracted": False} for j, r in enumerate((1, 4))]
    write_result(a / "canaries" / "result.json", "canaries", {}, {}, n_canaries=2, n_extracted=0, canaries=cans)
    assert main(["--json", "compare", str(a), str(a)]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    tpr = [(r["attack"], r["fpr"]) for r in rows if r["key"] == "mia_tpr"]
    assert tpr == [("lira", 0.01), ("lira", 0.001)]
    assert [r["repeats"] for r in rows if r["key"] == "canaries_exposure"] == [1, 4]
    assert "attack" not in next(r for r in rows if r["key"] == "extraction_unique")


def test_canary_means_over_few_canaries_say_they_carry_no_noise_estimate(tmp_path, capsys):
    """One canary a repeat count (canaries' default --per-repeat 1): its "mean" exposure is one rank, so the
    table says its change may be chance, and each side's count is in the row; three a count: no such line."""
    def canaries(name, per_repeat, exposure):
        cans = [{"key": f"c{r}-{j}", "repeats": r, "exposure": exposure, "extracted": False}
                for r in (1, 4) for j in range(per_repeat)]
        write_result(tmp_path / name / "canaries" / "result.json", "canaries", {}, {}, n_canaries=len(cans),
                     n_extracted=0, canaries=cans)
        return tmp_path / name

    one, other, many, more = canaries("one", 1, 2.0), canaries("other", 1, 3.0), canaries("many", 3, 2.0), canaries("more", 3, 1.0)
    r, _ = _compare_json(capsys, one, other)
    row = next(x for x in r["rows"] if x["key"] == "canaries_exposure")
    assert (row["a_n_canaries"], row["b_n_canaries"]) == (1, 1) and "n_canaries" not in row
    assert main(["compare", str(one), str(other)]) == 0
    assert ("canaries x1, x4: each mean is over 1 canary, with no estimate of its noise, so a change between the runs "
            "may be chance") in capsys.readouterr().out
    assert main(["compare", str(one), str(many)]) == 0
    assert "each mean is over 1 or 3 canaries" in capsys.readouterr().out
    assert main(["compare", str(many), str(more)]) == 0
    assert "no estimate of its noise" not in capsys.readouterr().out


def test_compare_warns_when_an_attack_ran_on_different_targets(tmp_path, capsys):
    """One shadow model as the target (--target-index 3) against every shadow model in turn, pooled: the change
    was printed as "+0.067 (within noise)" with no word that the two AUCs measure other targets."""
    loo = {"mode": "leave-one-out", "index": None, "run": None}
    one = {"mode": "shadow", "index": 3, "run": None}
    for name, target, extra in (("pooled", loo, {"n_models": 8, "n_examples": 128}), ("one", one, {}),
                                ("pooled4", loo, {"n_models": 4, "n_examples": 128}), ("other", {**one, "index": 2}, {})):
        write_result(tmp_path / name / "result.json", "mia", {"shadows": str(tmp_path / "sh"), "target": target}, {},
                     attack="lira", auc=0.6, tpr_at_fpr={"0.01": 0.0}, n_members=64, n_nonmembers=64, target=target, **extra)
    r, err = _compare_json(capsys, tmp_path / "one", tmp_path / "pooled")
    said = [w for w in r["warnings"] if "on different targets" in w]
    assert len(said) == 1 and said[0] in err
    assert said[0].startswith(f"plain and other ran lira on different targets, plain the model {tmp_path / 'sh' / 'model-03'} "
                              "and other the 8 shadow models in turn, pooled")
    assert any("on different targets" in w for w in _compare_json(capsys, tmp_path / "pooled", tmp_path / "pooled4")[0]["warnings"])
    assert not any("on different targets" in w for w in _compare_json(capsys, tmp_path / "one", tmp_path / "other")[0]["warnings"])
