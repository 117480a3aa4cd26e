"""``verify --train-map`` against training images of their own (mixed) sizes, after Stable Diffusion's
shorter-side resize: ``resize_to_cover``, ``NativeImages``, ``check_prompt_map(resize=)``, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from diffaudit.attacks.extraction.verification import check_prompt_map
from diffaudit.cli.main import main
from diffaudit.core.errors import DiffauditError
from diffaudit.data import load_dataset
from diffaudit.data.loader import ImagesDifferInSize
from diffaudit.data.native import NativeImages
from diffaudit.data.transforms import resize_to_cover
from helpers import cifar_images, strict_json

#: (H, W) of the upsampled training images: landscape, portrait (for 32x32 generations: 32x44, 42x32).
SIZES = {"a.png": (40, 56), "b.png": (48, 36)}
#: Where each generation is cut from its resized training image (top, left).
OFFSETS = {"a.png": (0, 7), "b.png": (5, 0)}


def _upsample(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((hw[1], hw[0]), Image.Resampling.BICUBIC))


def _crop(train: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    y, x = offset
    return np.ascontiguousarray(resize_to_cover(train, 32, 32)[y:y + 32, x:x + 32])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A folder of mixed-size training images (a.png, b.png upsampled CIFAR images, c.png a CIFAR image
    as is, z_bad.png unreadable and never mapped), generations cut from the resized a and b plus
    unrelated ones, and the prompt map (a key, a position)."""
    d = tmp_path_factory.mktemp("sizes")
    cifar = cifar_images(6, "train")
    data = d / "data"
    data.mkdir()
    train = {name: _upsample(cifar[i], hw) for i, (name, hw) in enumerate(SIZES.items())}
    train["c.png"] = cifar[2]
    for name, img in train.items():
        Image.fromarray(img).save(data / name)
    (data / "z_bad.png").write_bytes(b"not an image")
    gens = np.stack([_crop(train["a.png"], OFFSETS["a.png"]), _crop(train["b.png"], OFFSETS["b.png"]),
                     cifar[4], cifar[5]])
    np.savez(d / "gens.npz", images=gens, prompts=np.array(["cat", "dog", "cat", "fresh"]))
    (d / "map.json").write_text(json.dumps({"cat": ["a.png"], "dog": [1], "bird": ["c.png"]}))
    return {"dir": d, "data": data, "train": train, "gens": gens}


def run(*argv) -> int:
    return main(["--quiet", *map(str, argv)])


@pytest.mark.parametrize("hw, target, want", [
    ((40, 56), (32, 32), (32, 44)),  # landscape: height binds, width truncated (44.8 -> 44)
    ((48, 36), (32, 32), (42, 32)),  # portrait
    ((40, 40), (32, 32), (32, 32)),  # square
    ((768, 1024), (512, 512), (512, 682)),  # Stable Diffusion's example
    ((20, 30), (32, 32), (32, 48)),  # smaller than the generation: upsampled
    ((64, 64), (32, 48), (48, 48)),  # a non-square target: the wider side binds
])
def test_resize_to_cover_shapes(hw, target, want):
    img = np.zeros((*hw, 3), dtype=np.uint8)
    out = resize_to_cover(img, *target)
    assert out.shape == (*want, 3) and out.dtype == np.uint8
    assert out.shape[0] >= target[0] and out.shape[1] >= target[1] and (want[0] == target[0] or want[1] == target[1])


def test_resize_to_cover_is_pillow_bilinear_and_keeps_what_already_covers():
    img = cifar_images(1)[0]
    big = _upsample(img, (40, 56))
    assert np.array_equal(resize_to_cover(big, 32, 32),
                          np.asarray(Image.fromarray(big).resize((44, 32), Image.Resampling.BILINEAR)))
    covering = big[:32, :45]
    assert resize_to_cover(covering, 32, 32) is covering  # one side equal, the other larger: as is
    gray = big[:, :, :1]
    assert resize_to_cover(gray, 32, 32).shape == (32, 44, 1)
    with pytest.raises(DiffauditError, match="positive size"):
        resize_to_cover(big, 0, 32)


def test_check_finds_crops_of_the_shorter_side_resized_image(files):
    train = NativeImages(files["data"])
    assert train.keys == ["a.png", "b.png", "c.png", "z_bad.png"] and len(train) == 4
    pmap = {"cat": [0], "dog": [1, 2]}
    caps = ["cat", "dog", "cat", "fresh"]
    checks = check_prompt_map(files["gens"], ["g0", "g1", "g2", "g3"], caps, pmap, train, train.keys)
    assert [c["sample"] for c in checks] == ["g0", "g1", "g2"]  # "fresh" is not mapped
    g0, g1, g2 = checks
    assert g0["extracted"] and g0["l2"] < 1e-9 and g0["offset"] == list(OFFSETS["a.png"]) and g0["train_key"] == "a.png"
    assert g1["extracted"] and g1["l2"] < 1e-9 and g1["offset"] == list(OFFSETS["b.png"]) and g1["train_id"] == 1
    assert not g2["extracted"] and g2["l2"] > 0.15  # an unrelated CIFAR image
    # as stored (40x56, 48x36): the generation is a crop of another scale, no window matches it
    none = check_prompt_map(files["gens"], ["g0", "g1", "g2", "g3"], caps, pmap, train, train.keys, resize="none")
    assert all(c["l2"] > 0.05 for c in none[:2])
    with pytest.raises(DiffauditError, match="--map-resize must be one of"):
        check_prompt_map(files["gens"], ["g0"], ["cat"], pmap, train, train.keys, resize="longer-side")


def test_check_resizes_a_uniform_array_too(files):
    """A stacked (N, H, W, C) training set goes through the same rule."""
    big = np.stack([_upsample(files["train"]["c.png"], (40, 40)), _upsample(files["train"]["a.png"], (40, 40))])
    gen = resize_to_cover(big[0], 32, 32)[None]
    [c] = check_prompt_map(gen, ["g"], ["p"], {"p": [1, 0]}, big, ["t0", "t1"])
    assert c["train_id"] == 0 and c["l2"] < 1e-9 and c["offset"] == [0, 0] and c["extracted"]


def test_native_reader_lists_like_the_loader_and_decodes_lazily(files, tmp_path):
    cifar = cifar_images(8, "train")
    same = tmp_path / "same"
    same.mkdir()
    for i, img in enumerate(cifar):
        Image.fromarray(img).save(same / f"{i:02d}.png")
    ds = load_dataset(same, subset=5, subset_seed=3)
    native = NativeImages(same, subset=5, subset_seed=3)
    assert native.keys == ds.keys and native.index_of() == ds.index_of()
    assert all(np.array_equal(native[i], ds.images[i]) for i in range(len(native)))
    # nothing is decoded on listing; a bad image is an error naming its file, or with skip_bad a recorded skip
    mixed = NativeImages(files["data"])
    with pytest.raises(DiffauditError, match="z_bad.png.*--skip-bad"):
        mixed[3]
    lenient = NativeImages(files["data"], skip_bad=True)
    assert lenient.read(3) is None and lenient.bad == {3} and lenient.skipped[0][0].endswith("z_bad.png")
    assert lenient[0].shape == (40, 56, 3) and NativeImages(files["data"], mode="L")[1].shape == (48, 36, 1)
    # the digest covers the listing and the pixels of the images asked for, not the others
    assert mixed.digest([0]) == NativeImages(files["data"]).digest([0]) != mixed.digest([0, 1])
    view = tmp_path / "x.view.json"
    view.write_text(json.dumps({"view": 1, "spec": str(files["data"]), "options": {}, "keys": ["a.png"]}))
    with pytest.raises(DiffauditError, match="pass its dataset"):
        NativeImages(view)


def test_images_differ_in_size_is_its_own_error(files):
    with pytest.raises(ImagesDifferInSize, match="images differ in size.*--image-size"):
        load_dataset(files["data"])


def test_cli_runs_the_map_check_on_mixed_size_data(files, tmp_path, capsys):
    d = files["dir"]
    out = tmp_path / "v"
    argv = ("verify", "--samples", d / "gens.npz", "--data", files["data"], "--train-map", d / "map.json",
            "--baseline", "cifar10-test", "--out", out, "--device", "cpu")
    assert main([*map(str, argv)]) == 0  # not --quiet: the stage lines are printed
    assert "only the --train-map" in capsys.readouterr().err
    r = strict_json(out / "result.json")
    assert r["n_train"] == 4 and r["extracted"] is None and r["unique_extracted"] is None
    assert "differ in size" in r["note"] and "--baseline" in r["note"] and r["baseline_unique_extracted"] is None
    assert r["settings"]["map_resize"] == "shorter-side" and r["settings"]["data_digest"]
    checks = {c["sample"]: c for c in r["prompt_checks"]}
    assert r["prompt_checks_extracted"] == 2 and set(checks) == {"npz:0", "npz:1", "npz:2"}
    assert checks["npz:0"]["offset"] == list(OFFSETS["a.png"]) and checks["npz:0"]["l2"] < 1e-9
    assert checks["npz:1"]["train_key"] == "b.png" and checks["npz:1"]["l2"] < 1e-9
    assert not checks["npz:2"]["extracted"]
    # a resume with another --map-resize is other work; the same one is finished work
    assert run(*argv, "--map-resize", "none") == 2
    assert "--map-resize (was" in capsys.readouterr().err
    assert run(*argv) == 0

    # as stored, nothing matches
    out2 = tmp_path / "v2"
    assert run(*argv[:-4], "--out", out2, "--device", "cpu", "--map-resize", "none") == 0
    r2 = strict_json(out2 / "result.json")
    assert r2["prompt_checks_extracted"] == 0 and all(c["l2"] > 0.05 for c in r2["prompt_checks"][:2])
    # a folder an earlier version wrote (no map_resize recorded) resumes as `none`
    sfile = out2 / "settings.json"
    record = json.loads(sfile.read_text())
    del record["settings"]["map_resize"]
    sfile.write_text(json.dumps(record))
    assert run(*argv[:-4], "--out", out2, "--device", "cpu", "--map-resize", "none") == 0


def test_cli_without_train_map_keeps_the_size_error(files, tmp_path, capsys):
    d = files["dir"]
    assert run("verify", "--samples", d / "gens.npz", "--data", files["data"], "--out", tmp_path / "v",
               "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert "images differ in size" in err and "--image-size" in err


def test_map_keys_match_prompts_up_to_whitespace_and_a_map_naming_none_is_refused(files, tmp_path, capsys):
    d = files["dir"]
    argv = ("verify", "--samples", d / "gens.npz", "--data", files["data"], "--device", "cpu")
    # keys as read from caption files (a trailing newline): the same prompts
    (tmp_path / "nl.json").write_text(json.dumps({"cat\n": ["a.png"], "dog\n": [1]}))
    assert main([*map(str, argv), "--train-map", str(tmp_path / "nl.json"), "--out", str(tmp_path / "nl")]) == 0
    err = capsys.readouterr().err
    assert "1 of the 3 prompts of --samples has no entry in --train-map: its generations" in err  # "fresh"
    assert strict_json(tmp_path / "nl" / "result.json")["prompt_checks_extracted"] == 2
    # keys and prompts that share nothing: refused before anything is written (it checked 0 of 0 and read as no copy)
    (tmp_path / "none.json").write_text(json.dumps({"a red barn": ["a.png"]}))
    assert main([*map(str, argv), "--train-map", str(tmp_path / "none.json"), "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "names none of the 3 prompts of --samples (its first key 'a red barn', their first prompt 'cat')" in err
    assert not (tmp_path / "none").exists()
    # the fixture's map: "bird" names no prompt of the samples
    assert main([*map(str, argv), "--train-map", str(d / "map.json"), "--out", str(tmp_path / "m")]) == 0
    assert "1 of the 3 prompts of --train-map is not among the prompts of --samples and is not checked" in capsys.readouterr().err


def test_the_report_and_result_line_show_what_the_map_check_found(files, tmp_path, capsys):
    """The report of a --train-map check on mixed-size data showed "–" as its number, "the cliques of the
    copying medoids hold 0 generations" and "No generation was verified as a copy" beside a "Yes" verdict,
    and the result line said "n/a unique training images": the generations that reproduce their prompt's
    training image are now its number, its pairs and its line."""
    from test_report import visible_text

    from diffaudit.report import build_summary, render_html

    d = files["dir"]
    out = tmp_path / "v"
    assert main(["verify", "--samples", str(d / "gens.npz"), "--data", str(files["data"]), "--train-map",
                 str(d / "map.json"), "--out", str(out), "--device", "cpu"]) == 0
    said = capsys.readouterr()
    assert ("verify: 2 of 3 mapped generations reproduce their own prompt's training image (2 distinct training "
            "images), by the --train-map check alone") in said.out and "n/a" not in said.out, said.out
    assert build_summary(out)["extraction"]["prompt_checks_unique_extracted"] == 2
    text = visible_text(render_html(out))
    assert "Training images reproduced (--train-map check) 2" in text
    assert "npz:0 → a.png" in text and "npz:1 → b.png" in text and "npz:2 →" not in text  # the unrelated one
    assert f"crop offset {OFFSETS['a.png'][0]}, {OFFSETS['a.png'][1]}" in text
    assert "No generation was verified" not in text and "hold 0 generations" not in text
    assert "Training images are shown by id: --data's images differ in size" in text and "--image-size" not in text


def test_with_from_extract_the_unflagged_prompts_of_the_map_are_not_called_foreign(capsys):
    """Verifying the clique medoids (--from-extract) checks only the flagged prompts: the map's other prompts
    were said to be "not prompts of --samples", though every one of them was sampled."""
    from diffaudit.cli.verify import _check_map_prompts

    _check_map_prompts({"cat": [0], "dog": [1], "bird": [2], "fish": [3]}, ["cat", "dog"], "map.json", medoids=True)
    err = capsys.readouterr().err
    assert "2 of the 4 prompts of --train-map are not among the prompts --from-extract flagged" in err, err
    assert "--samples" not in err
