"""Prompt selection: captions of the most duplicated images, as a UTF-8 prompt file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffaudit.cli.main import main
from diffaudit.core.errors import DiffauditError
from diffaudit.defenses.prompts import normalise_caption, rank_prompts, write_prompt_file


def test_rank_prompts_orders_by_duplicate_count_then_caption_frequency():
    captions = ["a cat", "a dog", "a cat", "un café\nau lait", "", "a bird"]
    counts = np.array([0, 3, 1, 5, 9, 0])
    ranked = rank_prompts(captions, counts)
    assert [r.prompt for r in ranked] == ["un café au lait", "a dog", "a cat", "a bird"]
    assert ranked[2].indices == [0, 2] and ranked[2].score == 1 and ranked[2].n_images == 2
    assert [r.prompt for r in rank_prompts(captions, counts, top=2)] == ["un café au lait", "a dog"]
    assert [r.prompt for r in rank_prompts(captions, counts, min_score=1)] == ["un café au lait", "a dog", "a cat"]
    # equal scores: the caption shared by more images first, then first appearance
    tie = rank_prompts(["x", "y", "y", "z"], np.array([2, 2, 2, 2]))
    assert [r.prompt for r in tie] == ["y", "x", "z"]


def test_rank_prompts_errors():
    with pytest.raises(DiffauditError, match="no captions"):
        rank_prompts(None, np.zeros(3))
    with pytest.raises(DiffauditError, match="shape"):
        rank_prompts(["a", "b"], np.zeros(3))
    with pytest.raises(DiffauditError, match="--top"):
        rank_prompts(["a"], np.zeros(1), top=0)


def test_prompt_file_is_one_line_per_prompt_utf8(tmp_path):
    p = write_prompt_file(tmp_path / "p.txt", ["héllo\u2028wörld", "  spaced   out  ", "日本語"])
    text = p.read_bytes().decode("utf-8")
    assert text.splitlines() == ["héllo wörld", "spaced out", "日本語"]
    assert normalise_caption("a\r\nb\tc") == "a b c"
    with pytest.raises(DiffauditError, match="no prompt"):
        write_prompt_file(tmp_path / "e.txt", [])


def _captioned(tmp_npz, digits):
    """30 distinct random block images (32x32) with captions; #2 has 3 exact copies, #5 one."""
    rng = np.random.default_rng(0)
    base = np.repeat(np.repeat(rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8), 4, axis=1), 4, axis=2)
    images = np.concatenate([base, base[[2, 2, 2, 5]]])
    captions = [f"photo number {i}" for i in range(30)] + ["copy of two", "copy of two", "other copy ✓", "copy of five"]
    return tmp_npz(images, captions=np.array(captions, dtype=str))


def test_prompts_cli_on_captioned_npz(tmp_path, tmp_npz, digits, capsys):
    from diffaudit.cli.sample import read_prompts

    data = _captioned(tmp_npz, digits)
    out = tmp_path / "pr"
    assert main(["--json", "prompts", "--data", str(data), "--out", str(out), "--top", "4"]) == 0
    r = json.loads(capsys.readouterr().out)
    lines = (out / "prompts.txt").read_text(encoding="utf-8").splitlines()
    # images 2, 30, 31, 32 form a group of 4 (duplicate count 3); 5 and 33 a group of 2 (count 1)
    assert lines[:3] == ["copy of two", "photo number 2", "other copy ✓"]
    assert lines[3] in ("photo number 5", "copy of five")
    assert read_prompts(str(out / "prompts.txt")) == lines  # what `diffaudit sample --prompts` reads
    assert read_prompts(str(out)) == lines  # the folder of `diffaudit prompts`: its prompts.txt
    with pytest.raises(DiffauditError, match="is a JSON document, not a prompt file"):
        read_prompts(str(out / "result.json"))  # every line of it would have been a prompt
    assert r["n_prompts"] == 4 and r["prompts"][0] == {"prompt": "copy of two", "score": 3, "n_images": 2, "indices": [30, 31]}
    assert r["n_duplicated_images"] == 6
    # each prompt's own images by key, as `verify --train-map` reads them
    train_map = json.loads((out / "train_map.json").read_text(encoding="utf-8"))
    assert list(train_map) == lines and train_map["copy of two"] == ["npz:30", "npz:31"]
    assert r["train_map_file"] == "train_map.json"
    # with more prompts asked than duplicated captions, the rest are plain captions: the result line says so
    assert main(["prompts", "--data", str(data), "--out", str(tmp_path / "pr8"), "--top", "8"]) == 0
    line = capsys.readouterr().out
    assert "8 prompts in" in line and "(3 of them captions of images without a near-duplicate; --min-score 1" in line
    assert main(["prompts", "--data", str(data), "--out", str(tmp_path / "pr8"), "--top", "8"]) == 0
    assert "(3 of them captions" in capsys.readouterr().out  # and when it is already finished


def test_prompts_cli_reuses_a_dedup_run_and_checks_it(tmp_path, tmp_npz, digits, capsys):
    data = _captioned(tmp_npz, digits)
    dd = tmp_path / "dd"
    assert main(["dedup", "--data", str(data), "--out", str(dd), "--embedder", "phash"]) == 0
    assert main(["prompts", "--data", str(data), "--out", str(tmp_path / "pr"), "--duplicates", str(dd), "--top", "1"]) == 0
    assert (tmp_path / "pr" / "prompts.txt").read_text(encoding="utf-8") == "copy of two\n"
    # the dedup folder's result.json is the same input (was refused: "--duplicates (was '.../dd', now '.../dd/result.json')"),
    # also where an earlier version recorded the folder
    stamp = (tmp_path / "pr" / "result.json").stat().st_mtime_ns
    again = ["prompts", "--data", str(data), "--out", str(tmp_path / "pr"), "--duplicates", str(dd / "result.json"), "--top", "1"]
    assert main(again) == 0
    record = json.loads((tmp_path / "pr" / "settings.json").read_text())
    assert record["settings"]["duplicates"] == str((dd / "result.json").resolve())
    record["settings"]["duplicates"] = str(dd.resolve())
    (tmp_path / "pr" / "settings.json").write_text(json.dumps(record))
    assert main(again) == 0 and (tmp_path / "pr" / "result.json").stat().st_mtime_ns == stamp
    # the dedup run redone in place with other groups: the kept prompts are of the old ones, so a mismatch
    assert main(["dedup", "--data", str(data), "--out", str(dd), "--embedder", "phash", "--threshold", "0.5", "--fresh"]) == 0
    capsys.readouterr()
    assert main(["prompts", "--data", str(data), "--out", str(tmp_path / "pr"), "--duplicates", str(dd), "--top", "1"]) == 2
    assert "duplicate_counts" in capsys.readouterr().err
    # the captions rewritten in place (same pixels): the prompts were the old captions, and the dedup run
    # recorded the old data, so both refuse; the dedup run's check comes first
    with np.load(data) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["captions"] = np.array([f"new caption {i}" for i in range(len(arrays["captions"]))])
    np.savez(data, **arrays)
    assert main(["prompts", "--data", str(data), "--out", str(tmp_path / "pr"), "--duplicates", str(dd), "--top", "1"]) == 2
    assert "made on other data than --data" in capsys.readouterr().err
    # a dedup run of another dataset is refused
    other = tmp_npz(digits.images[:10], name="other.npz", captions=np.array([str(i) for i in range(10)]))
    capsys.readouterr()
    assert main(["prompts", "--data", str(other), "--out", str(tmp_path / "pr2"), "--duplicates", str(dd)]) == 2
    assert "same --data" in capsys.readouterr().err


def test_a_dedup_run_of_another_file_of_the_same_length_is_refused(tmp_path, tmp_npz, digits, capsys):
    """Keys npz:<i> name an image of any .npz of that length: the dedup run's data digest decides."""
    data = _captioned(tmp_npz, digits)
    with np.load(data) as z:
        arrays = {k: z[k] for k in z.files}
    other = tmp_npz(arrays["images"][::-1].copy(), name="other.npz", captions=arrays["captions"])
    dd = tmp_path / "dd"
    assert main(["--quiet", "dedup", "--data", str(data), "--out", str(dd)]) == 0
    capsys.readouterr()
    assert main(["prompts", "--data", str(other), "--out", str(tmp_path / "pr"), "--duplicates", str(dd)]) == 2
    assert "made on other data than --data" in capsys.readouterr().err and not (tmp_path / "pr").exists()


def test_a_chain_of_images_each_like_the_next_is_not_one_duplicated_group(tmp_path, tmp_npz, capsys):
    """24 images, each a small step from the last (the ends far apart), and 8 exact copies of one image.
    The chain is one connected group of 24 (a score of 23 each by group size, ahead of the copies' 7),
    but no chain image has more than 5 near-duplicates: the copies come first."""
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (2, 8, 8, 1)).astype(np.float64)
    chain = [np.round(a + (b - a) * k / 23).astype(np.uint8) for k in range(24)]
    copy = rng.integers(0, 256, (8, 8, 1)).astype(np.uint8)
    images = np.stack(chain + [copy] * 8)
    captions = np.array([f"chain {k}" for k in range(24)] + ["the copied image"] * 8)
    data = tmp_npz(images, name="chain.npz", captions=captions)
    out = tmp_path / "pr"
    assert main(["--json", "prompts", "--data", str(data), "--out", str(out), "--top", "3",
                 "--embedder", "pixel", "--threshold", "0.99"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["prompts"][0] == {"prompt": "the copied image", "score": 7, "n_images": 8, "indices": list(range(24, 32))}
    assert all(p["score"] <= 5 for p in r["prompts"][1:]) and r["score"] == "neighbour_count"
    assert r["settings"]["threshold"] == 0.99 and r["settings"]["embedder"]["name"] == "pixel"


def test_a_bad_threshold_is_refused_before_the_folder_exists(tmp_path, tmp_npz, digits, capsys):
    data = _captioned(tmp_npz, digits)
    assert main(["prompts", "--data", str(data), "--out", str(tmp_path / "pr"), "--threshold", "5"]) == 2
    assert "--threshold must be a finite similarity" in capsys.readouterr().err and not (tmp_path / "pr").exists()
    assert main(["prompts", "--data", str(data), "--out", str(tmp_path / "pr"), "--clip-model", "x"]) == 2
    assert "--clip-model is for --embedder clip" in capsys.readouterr().err


def test_prompts_cli_needs_captions(tmp_path, tmp_npz, digits, capsys):
    data = tmp_npz(digits.images[:10])
    assert main(["prompts", "--data", str(data), "--out", str(tmp_path / "pr")]) == 2
    err = capsys.readouterr().err
    assert "no captions" in err and "a .txt file beside each image of a folder" in err  # every way to give them


def test_images_with_empty_captions_are_counted_and_said(tmp_path, tmp_npz, digits, capsys):
    """An empty caption gives no prompt however duplicated its image is: said, and counted in the result."""
    images = np.concatenate([digits.images[:6], digits.images[[0, 0]]])
    captions = np.array(["", " ", "two", "three", "four", "five", "", "a copy of zero"], dtype=str)
    assert main(["prompts", "--data", str(tmp_npz(images, captions=captions)), "--out", str(tmp_path / "pr")]) == 0
    assert "prompts: 3 of 8 images have an empty caption (no prompt, however duplicated)" in capsys.readouterr().err
    r = json.loads((tmp_path / "pr" / "result.json").read_text())
    assert r["n_uncaptioned_images"] == 3 and r["n_prompts"] == 5


def test_prompts_reads_the_parts_dedup_decoded(tmp_path, tmp_npz, digits, monkeypatch):
    """With --data-cache, prompts reads the .npy parts (and captions) dedup decoded instead of decoding again,
    and writes the prompts it writes from memory."""
    import diffaudit.data.decoded as decoded

    data, cache, dd = _captioned(tmp_npz, digits), tmp_path / "cache", tmp_path / "dd"
    assert main(["dedup", "--data", str(data), "--out", str(dd), "--embedder", "phash", "--data-cache", str(cache)]) == 0
    assert main(["prompts", "--data", str(data), "--out", str(tmp_path / "mem"), "--duplicates", str(dd), "--top", "3"]) == 0
    monkeypatch.setattr(decoded, "iter_decoded", lambda *a, **k: pytest.fail("the data was decoded again"))
    assert main(["prompts", "--data", str(data), "--out", str(tmp_path / "disk"), "--duplicates", str(dd), "--top", "3",
                 "--data-cache", str(cache)]) == 0
    assert (tmp_path / "disk" / "prompts.txt").read_text(encoding="utf-8") == \
        (tmp_path / "mem" / "prompts.txt").read_text(encoding="utf-8")


def test_a_prompt_file_saved_with_a_byte_order_mark_or_blank_lines_reads_as_its_prompts(tmp_path, capsys):
    """A Windows editor's byte-order mark is not part of the first prompt (it would no longer equal its training
    caption); blank lines are skipped, and said, since prompt pK then is not line K + 1; trailing ones say nothing."""
    from diffaudit.cli.sample import read_prompts

    f = tmp_path / "p.txt"
    f.write_bytes("\ufeffa photo of a cat\r\n\r\n{not json\r\n\r\n".encode("utf-8"))
    assert read_prompts(str(f)) == ["a photo of a cat", "{not json"]
    err = capsys.readouterr().err
    assert "blank lines of" in err and "(the first is line 2)" in err
    f.write_text("one\ntwo\n\n\n", encoding="utf-8")
    assert read_prompts(str(f)) == ["one", "two"] and "blank" not in capsys.readouterr().err
    # a prompt given twice (up to the whitespace stripped) is sampled twice, and said: extract groups them as one
    f.write_text("same\nother\n  same  \nsame\n", encoding="utf-8")
    assert read_prompts(str(f)) == ["same", "other", "same", "same"]
    assert ("sample: warning: 2 prompt lines of " in capsys.readouterr().err)
    f.write_text("same\nother\n  same  \n", encoding="utf-8")
    read_prompts(str(f))
    assert "1 prompt line of " in (err := capsys.readouterr().err) and "repeats an earlier one (the first: p2, 'same')" in err


def test_the_train_map_of_prompts_checks_each_generation_against_its_own_images(tmp_path, tmp_npz, digits):
    """prompts -> sample (a tiny Stable Diffusion pipeline, 32x32) -> verify --train-map prompts/train_map.json:
    every generation is checked against the images its prompt captions, with no map written by hand."""
    from diffaudit.models.sd_configs import build_stable_diffusion

    data = _captioned(tmp_npz, digits)
    sd = tmp_path / "sd"
    build_stable_diffusion(tiny=True, size=32).save_pretrained(sd, safe_serialization=True)
    assert main(["--quiet", "prompts", "--data", str(data), "--top", "2", "--min-score", "1", "--out", str(tmp_path / "pr")]) == 0
    assert main(["--quiet", "sample", "--model", str(sd), "--prompts", str(tmp_path / "pr"), "--per-prompt", "2",
                 "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "gens")]) == 0
    assert main(["--quiet", "verify", "--samples", str(tmp_path / "gens"), "--data", str(data), "--train-map",
                 str(tmp_path / "pr" / "train_map.json"), "--device", "cpu", "--out", str(tmp_path / "v")]) == 0
    r = json.loads((tmp_path / "v" / "result.json").read_text())
    assert len(r["prompt_checks"]) == 4  # 2 prompts x 2 generations, none left unchecked
    assert {c["train_key"] for c in r["prompt_checks"] if c["prompt"] == "copy of two"} <= {"npz:30", "npz:31"}
