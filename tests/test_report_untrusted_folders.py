"""``diffaudit report`` on a result folder someone else made (security review of the report).

A received folder may name any file of the machine that reports it: an inpainting grid by absolute
path, ``..`` or a link; a verify result's ``--data`` and ``--samples`` pointing at a private folder with
keys of files there; a stage folder that is a link to another result. None of those pictures is ever
embedded: grids only from inside their stage folder, training images only when the data loaded has the
``data_digest`` the result records, generations only from inside the folder or when their input has the
recorded ``samples_identity``. Text from the folder is drawn literally in plots (no mathtext), a plot
that fails is left out with a line saying so, a result nested too deeply is refused by name, and the
command's summary line escapes control characters.
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import write_json_atomic
from diffaudit.report import render_html, render_report
from test_report import Page, _envelope


def _private_photo(root: Path) -> tuple[Path, np.ndarray]:
    """A "private photo" outside any result folder: a distinctive 16x16 RGB PNG and its pixels."""
    yy, xx = np.mgrid[0:16, 0:16]
    pixels = np.stack([(xx * 16) % 256, (yy * 16) % 256, ((xx * yy) * 7) % 256], -1).astype(np.uint8)
    path = root / "home" / "private" / "private_photo.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(pixels).save(path)
    return path, pixels


def _decoded(html: str) -> list[np.ndarray]:
    """Every embedded image of the page, decoded."""
    out = []
    for _, a in Page(html).tags:
        src = a.get("src") or ""
        if src.startswith("data:image/png;base64,"):
            out.append(np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB")))
    return out


def _embeds(html: str, pixels: np.ndarray) -> bool:
    return any(d.shape == pixels.shape and np.array_equal(d, pixels) for d in _decoded(html))


def _kinds(html: str) -> list[str]:
    return [a.get("data-kind") for _, a in Page(html).tags if a.get("data-kind")]


def _text(html: str) -> str:
    return " ".join("".join(Page(html).text).split())


# -- 1. local files named by the folder ------------------------------------------------------------------


def _inpaint(folder: Path, targets: list[dict]) -> Path:
    write_json_atomic(folder / "result.json", _envelope("inpaint", {"mask": "left", "top_k": 1}, {"seed": 0},
                                                        targets=targets, top_k=1))
    return folder


def test_inpainting_grids_outside_the_stage_folder_are_never_embedded(tmp_path):
    """Grids named by absolute path, by ``..`` and through a link out of the folder show as names with a
    note; a grid inside the folder (also through a link inside it) is embedded as before."""
    private, pixels = _private_photo(tmp_path)
    res = tmp_path / "received" / "inpaint"
    (res / "grids").mkdir(parents=True)
    own = np.full((8, 24, 3), 200, np.uint8)
    Image.fromarray(own).save(res / "grids" / "000003.png")
    (res / "grids" / "000004.png").symlink_to("000003.png")  # a link inside the folder is fine
    (res / "grids" / "000000.png").symlink_to(private)  # a link out of it is not
    up = "../" * len(res.resolve().parts)
    _inpaint(res, [
        {"id": "t0", "member": True, "best_l2": 0.1, "mean_topk_l2": 0.1},  # found by name: grids/000000.png
        {"id": "t1", "member": True, "best_l2": 0.1, "mean_topk_l2": 0.1, "grid": str(private)},
        {"id": "t2", "member": False, "best_l2": 0.2, "mean_topk_l2": 0.2, "grid": up + str(private).lstrip("/")},
        {"id": "t3", "member": False, "best_l2": 0.2, "mean_topk_l2": 0.2, "grid": "grids/000003.png"},
        {"id": "t4", "member": False, "best_l2": 0.2, "mean_topk_l2": 0.2, "grid": "grids/000004.png"},
    ])
    html = render_html(res)
    assert not _embeds(html, pixels)
    assert _kinds(html).count("inpaint") == 2 and _embeds(html, own)
    assert "lead out of the inpaint folder" in _text(html) and "not embedded" in _text(html)
    # the same folder inside an audit folder
    audit = tmp_path / "received"
    write_json_atomic(audit / "audit.json", {"settings": {"inpaint": True}})
    html = render_html(audit)
    assert not _embeds(html, pixels) and _kinds(html).count("inpaint") == 2


def _verify(folder: Path, settings: dict, key: str = "private_photo.png", sample: str = "private_photo.png") -> Path:
    write_json_atomic(folder / "result.json", _envelope(
        "verify", {"rule": "l2", "delta": 0.15, "data_options": {"subset_seed": 0, "skip_bad": False}, **settings}, {"seed": 0},
        n_samples=4, n_train=1, rule="l2", unique_extracted=1,
        extracted=[{"sample": sample, "train_id": 0, "train_key": key, "l2": 0.003, "ratio": 0.01, "eidetic_k": 1}]))
    return folder


def test_verify_naming_a_private_folder_shows_its_keys_not_its_images(tmp_path):
    """--data and --samples naming a private folder, with keys of a file there: without the folder's
    data_digest (none, or a made-up one) and samples_identity, the pair shows ids and says why."""
    private, pixels = _private_photo(tmp_path)
    for extra in ({}, {"data_digest": "85f6c5d80f46721e", "samples_identity": "data:85f6c5d80f46721e"}):
        res = _verify(tmp_path / f"verify-{len(extra)}", {"data": str(private.parent), "samples": str(private.parent), **extra})
        html = render_html(res)
        assert not _embeds(html, pixels)
        kinds = _kinds(html)
        assert "train-missing" in kinds and "generation-missing" in kinds and "train" not in kinds
        text = _text(html)
        assert "private_photo.png" in text  # the key is still shown
        assert "Training images are shown by id:" in text and "Generations are shown by id:" in text
        said = "records no data_digest" if not extra else "is not the data the result was made from"
        assert said in text, text


def test_an_empty_list_of_verified_medoids_vouches_for_no_generation(tmp_path):
    """The identity of no generations depends on the image shape alone, so anyone can write it: a result
    recording it beside ``verified_medoids: []`` must not unlock a private folder's pictures."""
    from diffaudit.data import load_dataset
    from diffaudit.store import samples_identity

    private, pixels = _private_photo(tmp_path)
    ds = load_dataset(str(private.parent))
    res = _verify(tmp_path / "verify", {"samples": str(private.parent),
                                        "samples_identity": samples_identity(str(private.parent), ds.subset([]))})
    data = json.loads((res / "result.json").read_text())
    data["verified_medoids"] = []
    (res / "result.json").write_text(json.dumps(data))
    html = render_html(res)
    assert not _embeds(html, pixels) and "generation-missing" in _kinds(html)


def test_the_owners_own_verify_result_still_shows_its_images(tmp_path):
    """The same private folder with the digest and identity verify records of it: this is the owner's
    own result, and its images show."""
    from diffaudit.data import load_dataset
    from diffaudit.data.digest import dataset_digest
    from diffaudit.store import samples_identity

    private, pixels = _private_photo(tmp_path)
    ds = load_dataset(str(private.parent))
    res = _verify(tmp_path / "verify", {"data": str(private.parent), "data_digest": dataset_digest(ds),
                                        "samples": str(private.parent), "samples_identity": samples_identity(str(private.parent), ds)},
                  key=ds.keys[0], sample=ds.keys[0])
    html = render_html(res)
    assert _kinds(html).count("train") == 1 and _kinds(html).count("generation") == 1 and _embeds(html, pixels)


def test_samples_inside_the_folder_that_link_out_are_not_shown(tmp_path):
    """A samples folder, or a sample store's shard, inside the received folder that is a link to a file
    elsewhere is not the folder's own: none of its generations is shown, whatever identity it records."""
    from diffaudit.core.io import save_npy_atomic
    from diffaudit.store import samples_identity

    private, pixels = _private_photo(tmp_path)
    res = tmp_path / "verify"
    (res / "samples").mkdir(parents=True)
    (res / "samples" / "a.png").symlink_to(private)
    _verify(res, {"data": str(tmp_path / "gone"), "samples": "samples"}, sample="a.png")
    html = render_html(res)
    assert not _embeds(html, pixels) and "generation-missing" in _kinds(html)
    assert "a.png is a link out of the reported folder" in _text(html)
    # a store whose shard is a link to pixels elsewhere, recording its own manifest's identity
    np.save(tmp_path / "home" / "private" / "pixels.npy", pixels[None])
    res = tmp_path / "verify-store"
    store = res / "samples"
    write_json_atomic(store / "manifest.json", {"schema_version": 1, "n_total": 1, "per_prompt": 1, "shard_size": 1,
                                                "n_shards": 1, "image_shape": [16, 16, 3], "prompts": ["x"]})
    save_npy_atomic(store / "shards" / "shard-000000.npy", np.zeros((1, 16, 16, 3), np.uint8))
    write_json_atomic(store / "shards" / "shard-000000.json", {"ids": ["p0-i0"], "seeds": [0], "prompts": ["x"]})
    _verify(res, {"data": str(tmp_path / "gone"), "samples": "samples", "samples_identity": samples_identity(str(store))},
            sample="p0-i0")
    assert _kinds(render_html(res)).count("generation") == 1  # the store as it came: its own (black) pixels
    (store / "shards" / "shard-000000.npy").unlink()
    (store / "shards" / "shard-000000.npy").symlink_to(tmp_path / "home" / "private" / "pixels.npy")
    html = render_html(res)
    assert not _embeds(html, pixels) and "generation-missing" in _kinds(html)
    assert "shard-000000.npy is a link out of the reported folder" in _text(html)


def test_a_stage_folder_linked_from_elsewhere_embeds_none_of_its_images(tmp_path):
    """An audit folder whose ``verify`` is a link to a genuine verify result elsewhere on this machine
    (with the right digest and identity) shows its numbers, but none of its images."""
    from diffaudit.data import load_dataset
    from diffaudit.data.digest import dataset_digest
    from diffaudit.store import samples_identity

    private, pixels = _private_photo(tmp_path)
    ds = load_dataset(str(private.parent))
    mine = _verify(tmp_path / "home" / "runs" / "verify", {
        "data": str(private.parent), "data_digest": dataset_digest(ds),
        "samples": str(private.parent), "samples_identity": samples_identity(str(private.parent), ds)}, key=ds.keys[0], sample=ds.keys[0])
    received = tmp_path / "received"
    received.mkdir()
    write_json_atomic(received / "audit.json", {"settings": {}})
    (received / "verify").symlink_to(mine, target_is_directory=True)
    html = render_html(received)
    assert not _embeds(html, pixels)
    assert "extracted" in Page(html).ids() and "the verify folder is a link out of the reported folder" in _text(html)


# -- 2. mathtext in data-derived text -------------------------------------------------------------------


def _mia(folder: Path, attack: str) -> Path:
    write_json_atomic(folder / "result.json", _envelope(
        "mia", {"attack": attack}, {"seed": 0}, attack=attack, auc=0.6, tpr_at_fpr={"0.01": 0.02}, n_members=10,
        n_nonmembers=10, roc={"fpr": [0, 0.5, 1], "tpr": [0, 0.7, 1]},
        sweep={"timesteps": [10, 100], "auc": [0.55, 0.6], "tpr_at_fpr": {"0.01": [0.01, 0.02]}}))
    return folder


@pytest.mark.parametrize("attack", ["$\\undefinedmacro{x}$", "$\\frac{1}{$", "$$"])
def test_dollar_signs_in_names_are_drawn_as_text(tmp_path, attack):
    """An attack name with ``$...$`` (a legend label in the ROC and sweep plots) is drawn as the text it
    is: both plots render, where matplotlib's mathtext parser failed the whole report."""
    html = render_html(_mia(tmp_path / "mia", attack))
    assert _kinds(html).count("plot") == 2
    assert "could not be drawn" not in _text(html)


def test_plots_draw_labels_and_titles_literally():
    """The drawing functions (also behind `diffaudit mia`'s roc.png, plots_roc) never parse data text as mathtext."""
    from diffaudit.evaluation.attack_evaluation import evaluate_attack
    from diffaudit.report import plots
    from diffaudit.report.plots_roc import roc_png_bytes

    curve = ("$\\undefinedmacro{x}$", np.array([0.0, 0.5, 1.0]), np.array([0.0, 0.7, 1.0]))
    assert plots.roc_loglog([curve]).startswith(b"\x89PNG")
    # a name that is not UTF-8 (a lone surrogate, which the font renderer refuses) is drawn escaped
    assert plots.roc_loglog([("loss \udcff", *curve[1:])]).startswith(b"\x89PNG")
    assert plots.timestep_sweep([("$\\bad$", [10, 100], [0.5, 0.6], [0.01, 0.02])]).startswith(b"\x89PNG")
    assert plots.distance_histogram([0.1, 0.2], [0.3], xlabel="$\\bad$").startswith(b"\x89PNG")
    ev = evaluate_attack(np.r_[np.ones(5), np.zeros(5)] + np.arange(10) * 0.01, np.r_[np.ones(5), np.zeros(5)].astype(bool),
                         attack="$\\undefinedmacro{x}$")
    assert roc_png_bytes([ev]).startswith(b"\x89PNG")


def test_a_plot_that_fails_is_left_out_with_a_line_saying_so(tmp_path, monkeypatch):
    """Whatever makes one plot fail, the report renders without it and says so; the other plots stay."""
    from diffaudit.report import plots

    def broken(*args, **kwargs):
        raise RuntimeError("the renderer choked\non this")

    monkeypatch.setattr(plots, "roc_loglog", broken)
    html = render_html(_mia(tmp_path / "mia", "loss"))
    assert _kinds(html).count("plot") == 1  # the sweep
    assert "The ROC plot could not be drawn and is left out (RuntimeError: the renderer choked on this)." in _text(html)
    assert "plot-left-out" in _kinds(html)


# -- 3. deeply nested JSON ------------------------------------------------------------------------------

DEEP = "[" * 200_000 + "]" * 200_000


def test_a_result_nested_too_deeply_is_refused_by_name(tmp_path, capsys):
    """A result.json of 200,000 nested brackets is a clear error naming it (status 2), never a
    RecursionError traceback; so is one nested past the report's limit but within the parser's."""
    from diffaudit.cli.main import main

    for depth, text in (("parser", DEEP), ("report", '{"command": "mia", "settings": ' + '{"a": ' * 100 + "1" + "}" * 100 + "}")):
        res = tmp_path / depth
        res.mkdir()
        (res / "result.json").write_text(text)
        with pytest.raises(DiffauditError, match="result.json is nested too deeply"):
            render_report(res)
        assert main(["report", str(res)]) == 2
        err = capsys.readouterr().err
        assert "nested too deeply" in err and "Traceback" not in err and "RecursionError" not in err


def test_a_stage_nested_too_deeply_is_left_out_and_named(tmp_path):
    """In an audit folder the readable stages render; the one nested too deeply is named in the report."""
    write_json_atomic(tmp_path / "audit.json", {"settings": {}})
    _mia(tmp_path / "mia-loss", "loss")
    (tmp_path / "mia-lira").mkdir()
    (tmp_path / "mia-lira" / "result.json").write_text(DEEP)
    html = render_html(tmp_path)
    assert "mia" in Page(html).ids()
    assert "unreadable" in _kinds(html)
    assert "Left out of this report:" in _text(html) and "mia-lira/result.json is nested too deeply" in _text(html)


def test_deeply_nested_scores_and_loss_logs_are_skipped(tmp_path):
    """A scores file and a loss-log line nested too deeply are skipped like any unreadable one."""
    res = tmp_path / "mia"
    write_json_atomic(res / "result.json", _envelope("mia", {"attack": "loss"}, {}, attack="loss", auc=0.6,
                                                     tpr_at_fpr={"0.01": 0.02}, n_members=10, n_nonmembers=10))
    (res / "scores.json").write_text(DEEP)
    html = render_html(res)
    assert "No ROC points or scores file recorded for: loss" in _text(html)
    train = tmp_path / "train"
    write_json_atomic(train / "result.json", _envelope("train", {"data": "digits", "steps": 3}, {}, n_train=8, final_loss=0.5))
    (train / "loss_log.jsonl").write_text('{"step": 0, "loss": 1.0}\n' + DEEP + '\n{"step": 1, "loss": 0.5}\n')
    assert 'alt="Training loss over ' in render_html(train)


# -- 4. control characters in the summary line ----------------------------------------------------------


def test_the_summary_line_escapes_control_characters(tmp_path, capsys):
    """Attack names (and folder names) from the result reach the terminal with their control characters
    escaped (ESC as \\x1b, C1 too); the line break between the two lines stays."""
    from diffaudit.cli.main import main

    attack = "loss\x1b]52;c;ZWNobyBwd25lZA==\x07\x1b[2J\x9b31m\r"
    res = _mia(tmp_path / "mia\x1b[1m", attack)
    assert main(["report", str(res)]) == 0
    out = capsys.readouterr().out
    assert not any(c in out for c in "\x1b\x07\x9b\r")
    assert "loss\\x1b]52;c;ZWNobyBwd25lZA==\\x07\\x1b[2J\\x9b31m\\x0d TPR@1%FPR 2.0%" in out
    assert "mia\\x1b[1m" in out and out.count("\n") == 2
    # --json prints JSON, whose escapes already keep the terminal safe
    assert main(["--json", "report", str(res)]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["mia"][attack]["auc"] == 0.6


def test_terminal_text_escapes_c0_and_c1_but_newline():
    from diffaudit.core.progress import printable as terminal_text

    assert terminal_text("a\x00b\tc\nd\x7fe\x85f\x9fg é ✓") == "a\\x00b\\x09c\nd\\x7fe\\x85f\\x9fg é ✓"


def test_links_inside_the_folder_never_follow_out_when_walking(tmp_path):
    """A folder linked into the inpaint folder is not walked for grids (its files lie elsewhere)."""
    private, pixels = _private_photo(tmp_path)
    res = tmp_path / "inpaint"
    res.mkdir()
    os.symlink(private.parent, res / "grids", target_is_directory=True)
    html = render_html(_inpaint(res, [{"id": "private_photo", "member": True, "best_l2": 0.1, "mean_topk_l2": 0.1}]))
    assert not _embeds(html, pixels)


def test_a_real_verify_folder_reported_alone_shows_its_images(tmp_path):
    """`diffaudit verify` on folders of images (resized by --image-size) records the digest and identity
    the report then finds: reported on its own, with its inputs outside it, every pair shows both images."""
    from diffaudit.cli.main import main

    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (6, 12, 12, 3), dtype=np.uint8)
    (tmp_path / "data").mkdir()
    (tmp_path / "gens").mkdir()
    for i, img in enumerate(train):
        Image.fromarray(img).save(tmp_path / "data" / f"img{i}.png")
    from diffaudit.data import load_dataset

    resized = load_dataset(str(tmp_path / "data"), image_size=8)  # as verify reads --data
    for i in (1, 4):
        Image.fromarray(resized.images[i]).save(tmp_path / "gens" / f"copy{i}.png")
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "gens" / "fresh.png")
    out = tmp_path / "runs" / "verify"
    assert main(["--quiet", "verify", "--samples", str(tmp_path / "gens"), "--data", str(tmp_path / "data"), "--image-size", "8",
                 "--rule", "l2", "--out", str(out), "--device", "cpu"]) == 0
    assert json.loads((out / "result.json").read_text())["unique_extracted"] == 2
    kinds = _kinds(render_html(out))
    assert kinds.count("train") == 2 and kinds.count("generation") == 2
    assert "train-missing" not in kinds and "generation-missing" not in kinds


def test_generations_read_by_a_brace_pattern_show_when_they_are_the_recorded_ones(tmp_path, write_tar, encode_image):
    """`verify --samples 'gen-{0..1}.tar'`: the report finds the shards of the pattern (as given, or beside
    the folder when moved with it) and shows the generations whose identity the result records; shards
    rewritten since are not shown."""
    from diffaudit.cli.main import main

    rng = np.random.default_rng(1)
    train = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "train.npz", images=train)
    fresh = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    write_tar(tmp_path / "gen-0.tar", [("copy2.png", encode_image(train[2])), ("fresh0.png", encode_image(fresh[0]))])
    write_tar(tmp_path / "gen-1.tar", [("copy5.png", encode_image(train[5])), ("fresh1.png", encode_image(fresh[1]))])
    out = tmp_path / "runs" / "verify"
    assert main(["--quiet", "verify", "--samples", str(tmp_path / "gen-{0..1}.tar"), "--data", str(tmp_path / "train.npz"),
                 "--rule", "l2", "--out", str(out), "--device", "cpu"]) == 0
    assert json.loads((out / "result.json").read_text())["unique_extracted"] == 2
    kinds = _kinds(render_html(out))
    assert kinds.count("train") == 2 and kinds.count("generation") == 2 and "generation-missing" not in kinds
    write_tar(tmp_path / "gen-1.tar", [("copy5.png", encode_image(fresh[0])), ("fresh1.png", encode_image(fresh[1]))])
    html = render_html(out)
    assert _kinds(html).count("generation") == 0 and "is not the input the result records" in _text(html)


def test_a_folder_with_a_brace_in_its_path_is_a_folder_not_a_pattern(tmp_path):
    """Only a name with a brace that no file or folder matches is read as a shard pattern: a folder named
    ``gen{1}`` (and one below ``exp{a,b}``) is a folder."""
    from diffaudit.cli.main import main

    rng = np.random.default_rng(2)
    train = rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "train.npz", images=train)
    gens = tmp_path / "exp{a,b}" / "gen{1}"
    gens.mkdir(parents=True)
    for i in (0, 3):
        Image.fromarray(train[i]).save(gens / f"copy{i}.png")
    out = tmp_path / "runs" / "verify"
    assert main(["--quiet", "verify", "--samples", str(gens), "--data", str(tmp_path / "train.npz"), "--rule", "l2",
                 "--out", str(out), "--device", "cpu"]) == 0
    kinds = _kinds(render_html(out))
    assert kinds.count("generation") == 2 and "generation-missing" not in kinds


def test_infinite_counts_in_a_result_are_read_as_missing(tmp_path):
    """Python's JSON parser reads ``Infinity``: a report of a result holding it in a count is made (the
    count unknown), never an OverflowError traceback."""
    from diffaudit.cli.main import main
    from diffaudit.report.summary import _int

    folder = tmp_path / "v"
    folder.mkdir()
    (folder / "result.json").write_text(
        '{"schema_version": 1, "command": "verify", "settings": {}, "seeds": {}, "versions": {}, "n_samples": Infinity, '
        '"unique_extracted": 2, "rule": "l2", "extracted": [], "baseline_unique_extracted": Infinity}')
    assert main(["--quiet", "report", str(folder)]) == 0 and (folder / "report.html").exists()
    assert _int(float("-inf")) is None and _int(float("nan")) is None and _int("7") == 7


def test_data_rewritten_since_verify_read_it_is_said_at_the_top_of_the_report(tmp_path):
    """A training image edited in place after the audit: the pair shows ids (its pixels are not what was
    measured), and the answer section says that every number describes the data as it was read."""
    from diffaudit.data import load_dataset
    from diffaudit.data.digest import dataset_digest

    private, pixels = _private_photo(tmp_path)
    res = _verify(tmp_path / "verify", {"data": str(private.parent), "data_digest": dataset_digest(load_dataset(str(private.parent)))})
    assert "data-changed" not in _kinds(render_html(res))  # as read
    Image.fromarray(255 - pixels).save(private)  # rewritten in place
    html = render_html(res)
    assert "data-changed" in _kinds(html) and not _embeds(html, 255 - pixels)
    assert f"The data {private.parent} is no longer the data this audit read" in _text(html)
