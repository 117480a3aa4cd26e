"""Embedders for near-duplicate search: registry, pixel, phash (golden DCT), CLIP on a tiny local model."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fftpack

from diffaudit.core.errors import DiffauditError
from diffaudit.defenses.calibration import brightness, jpeg_reencode, shift
from diffaudit.defenses.embedders import EMBEDDERS, Embedder, get_embedder, pairwise_similarity, shift_images


def _images(n=6, size=32, c=3, seed=0):
    rng = np.random.default_rng(seed)
    # smooth random images (blurred noise) look more like photos than white noise does
    base = rng.random((n, size // 4, size // 4, c))
    return (np.kron(base, np.ones((1, 4, 4, 1))) * 255).astype(np.uint8)


def test_registry_names_and_unknown_name():
    assert set(EMBEDDERS) == {"pixel", "phash", "clip"}
    with pytest.raises(DiffauditError, match="unknown embedder 'dino'.*pixel"):
        get_embedder("dino")
    with pytest.raises(DiffauditError, match="bad option"):
        get_embedder("pixel", colour="gray")
    with pytest.raises(DiffauditError, match="color"):
        get_embedder("pixel", color="hsv")


def test_embedders_reject_bad_images():
    with pytest.raises(DiffauditError, match="uint8"):
        get_embedder("pixel").embed(np.zeros((2, 8, 8, 3), dtype=np.float32))
    with pytest.raises(DiffauditError, match="C in"):
        get_embedder("phash").embed(np.zeros((2, 8, 8, 2), dtype=np.uint8))


def test_pixel_embedding_is_unit_and_brightness_invariant():
    e = get_embedder("pixel")
    x = _images()
    v = e.embed(x)
    assert v.shape == (6, 97) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    darker = np.stack([brightness(im, 0.9) for im in x])
    sim = (e.embed(darker) * v).sum(1)
    assert sim.min() > 0.999  # a gain only rescales the centred vector
    other = e.embed(_images(seed=1))
    assert (other * v).sum(1).max() < 0.9  # different images are not near-duplicates


def test_pixel_blank_images_group_only_with_each_other():
    e = get_embedder("pixel", size=8, color="rgb")
    blank = np.stack([np.full((16, 16, 3), 10, np.uint8), np.full((16, 16, 3), 200, np.uint8)])
    v = e.embed(np.concatenate([blank, _images(2, 16)]))
    assert v.shape[1] == 3 * 64 + 1
    assert v[0] @ v[1] == pytest.approx(1.0)
    assert abs(v[0] @ v[2]) < 1e-6 and abs(v[1] @ v[3]) < 1e-6


def test_shift_views_first_view_is_plain_and_half_the_shifts():
    e = get_embedder("pixel", max_shift=2)
    assert len(e.shifts) == 13 and e.shifts[0] == (0, 0)
    assert {(-dx, -dy) for dx, dy in e.shifts[1:]}.isdisjoint(e.shifts)  # never both s and -s
    x = _images(3)
    views = e.embed_views(x)
    assert views.shape == (13, 3, 97)
    np.testing.assert_array_equal(views[0], e.embed(x))
    j = e.shifts.index((1, 2))
    np.testing.assert_allclose(views[j], e.embed(shift_images(x, 1, 2)), atol=1e-6)
    # the generic implementation (shift, then embed) agrees with the pixel fast path
    np.testing.assert_allclose(Embedder.embed_views(e, x), views, atol=1e-6)


def test_shift_images_repeats_edges():
    x = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1)
    y = shift_images(x, 1, 0)[0, :, :, 0]
    np.testing.assert_array_equal(y[:, 1:], x[0, :, :3, 0])
    np.testing.assert_array_equal(y[:, 0], x[0, :, 0, 0])
    np.testing.assert_array_equal(shift(x[0], 0, -1)[:3, :, 0], x[0, 1:, :, 0])


def test_phash_matches_reference_dct_hash():
    """Golden check against the common pHash recipe (imagehash.phash) on a 32x32 gray image."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, size=(1, 32, 32, 1), dtype=np.uint8)
    pixels = img[0, :, :, 0].astype(np.float64) / 255.0
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)
    low = dct[:8, :8]
    expected = np.packbits((low > np.median(low)).reshape(1, -1), axis=1)
    e = get_embedder("phash", max_shift=0)
    got = e.embed(img)
    assert got.shape == (1, 8) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, expected)


def test_phash_similarity_is_one_minus_hamming():
    e = get_embedder("phash")
    x = _images(4)
    h = e.embed(x)
    sim = e.similarity(h, h)
    np.testing.assert_allclose(np.diag(sim), 1.0)
    bits = np.unpackbits(h, axis=1).astype(int)
    ham = np.abs(bits[:, None, :] - bits[None, :, :]).sum(-1)
    np.testing.assert_allclose(sim, 1 - ham / 64)
    jpeg = np.stack([jpeg_reencode(im, 50) for im in x])
    assert e.similarity(e.embed(jpeg), h).diagonal().min() >= e.default_threshold


def test_pairwise_similarity_unknown_metric():
    with pytest.raises(DiffauditError, match="metric"):
        pairwise_similarity(np.zeros((1, 2)), np.zeros((1, 2)), "l1", 2)


@pytest.fixture(scope="module")
def tiny_clip_dir(tmp_path_factory):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection
    import torch

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8, projection_dim=16)
    d = tmp_path_factory.mktemp("tiny-clip")
    CLIPVisionModelWithProjection(cfg).save_pretrained(d)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(d)
    return d


def test_clip_embedder_on_tiny_local_model_finds_exact_duplicate(tiny_clip_dir):
    from diffaudit.defenses.dedup import find_duplicates

    e = get_embedder("clip", model=str(tiny_clip_dir), batch_size=3)
    assert e.dim == 16 and e.metric == "cosine"
    x = _images(5, 32)
    x = np.concatenate([x, x[2:3]])  # image 5 is an exact copy of image 2
    v = e.embed(x)
    assert v.shape == (6, 16) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(v[5], v[2], atol=1e-6)
    res = find_duplicates(x, e, threshold=0.99999)
    assert [g.tolist() for g in res.groups] == [[2, 5]]
    # grayscale input is repeated to RGB
    assert e.embed(x[:2, :, :, :1]).shape == (2, 16)


def test_clip_embedder_without_processor_config(tmp_path, tiny_clip_dir):
    import shutil

    d = tmp_path / "bare"
    shutil.copytree(tiny_clip_dir, d)
    (d / "preprocessor_config.json").unlink()
    e = get_embedder("clip", model=str(d))
    assert e.embed(_images(2, 24)).shape == (2, 16)


def test_clip_embedder_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(DiffauditError, match="not available locally.*--clip-model"):
        get_embedder("clip", model=str(tmp_path / "nothing-here"))


def test_clip_loading_never_touches_the_network(monkeypatch):
    """A hub name not in the cache: a clear error, without the hub's "couldn't connect to
    huggingface.co" wording, and no connection attempted (local_files_only=True)."""
    import socket

    attempts = []

    def refuse(self, address, *a, **k):
        attempts.append(address)
        raise OSError("network is off in this test")

    import huggingface_hub.utils._detect_agent as agent  # its registry, fetched once per process: not yet

    if hasattr(agent, "_registry"):
        monkeypatch.setattr(agent, "_registry", None)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(None, address))
    with pytest.raises(DiffauditError) as err:
        get_embedder("clip", model="diffaudit-tests/no-such-clip-model")
    msg = str(err.value)
    assert attempts == []
    assert "not available locally" in msg and "'diffaudit-tests/no-such-clip-model' is not a local folder" in msg
    assert "--clip-model PATH" in msg and "save_pretrained" in msg
    assert "huggingface.co" not in msg and "connect" not in msg


def test_clip_loads_with_local_files_only_and_drops_the_hub_text(monkeypatch, tiny_clip_dir):
    import transformers

    calls = []

    def offline_cache_miss(name, **kwargs):
        calls.append(kwargs)
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them in "
                      "the cached files.\nCheck your internet connection or see how to run the library in offline mode.")

    monkeypatch.setattr(transformers.CLIPVisionModelWithProjection, "from_pretrained", offline_cache_miss)
    with pytest.raises(DiffauditError) as err:
        get_embedder("clip")
    assert calls == [{"local_files_only": True, "use_safetensors": True}]
    assert "huggingface.co" not in str(err.value) and "--clip-model PATH" in str(err.value)
    monkeypatch.undo()  # a real folder: the processor is loaded offline too
    seen = []
    real = transformers.CLIPImageProcessor.from_pretrained.__func__

    def spy(cls, name, **kwargs):
        seen.append(kwargs)
        return real(cls, name, **kwargs)

    for cls in {transformers.CLIPImageProcessor, getattr(transformers, "CLIPImageProcessorPil", transformers.CLIPImageProcessor)}:
        monkeypatch.setattr(cls, "from_pretrained", classmethod(spy))
    get_embedder("clip", model=str(tiny_clip_dir))
    assert seen and all(kw.get("local_files_only") is True for kw in seen)


def test_clip_folder_that_does_not_exist_or_holds_no_model(tmp_path):
    with pytest.raises(DiffauditError, match=r"CLIP model not available locally: .*nothing-here does not exist\. "
                                             r"Pass --clip-model PATH"):
        get_embedder("clip", model=str(tmp_path / "nothing-here"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DiffauditError, match=r"the folder .*empty holds no CLIP model that loads"):
        get_embedder("clip", model=str(tmp_path / "empty"))


def test_clip_weights_load_from_safetensors_only_never_from_a_pickle(tiny_clip_dir, tmp_path, monkeypatch):
    """A CLIP folder whose weights are a pickled pytorch_model.bin is refused as a clear error naming
    the folder, without the pickle being opened."""
    import shutil

    import torch
    from transformers import CLIPVisionModelWithProjection

    pickled = tmp_path / "pickled-clip"
    pickled.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        shutil.copy(tiny_clip_dir / name, pickled)
    torch.save(CLIPVisionModelWithProjection.from_pretrained(tiny_clip_dir).state_dict(), pickled / "pytorch_model.bin")
    opened = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: opened.append(a[0]) or real_load(*a, **k))
    with pytest.raises(DiffauditError, match=f"the folder {pickled} holds no CLIP model that loads") as err:
        get_embedder("clip", model=str(pickled)).embed(np.zeros((1, 32, 32, 3), np.uint8))
    assert opened == [] and "weights_only" not in str(err.value)


def test_a_clip_model_replaced_in_place_is_another_embedder_on_resume(tiny_clip_dir, tmp_path, tmp_npz, capsys, monkeypatch):
    """`dedup --embedder clip` records its model's weights digest: a folder resumed after the model was replaced
    under the same path is refused, naming the contents of --clip-model; the same folder by another spelling
    resumes; a folder recorded before the digest resumes as it did."""
    import json
    import shutil

    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from diffaudit.cli.main import main

    data, clip, out = tmp_npz(_images(8, 32)), tmp_path / "clip", tmp_path / "dd"
    shutil.copytree(tiny_clip_dir, clip)
    args = ["dedup", "--data", str(data), "--embedder", "clip", "--clip-model", str(clip), "--out", str(out), "--quiet"]
    assert main(args) == 0
    record = json.loads((out / "settings.json").read_text())["settings"]["embedder"]
    assert record["model"] == str(clip.resolve()) and len(record["model_digest"]) == 16
    monkeypatch.chdir(tmp_path)
    assert main([*args[:6], "./clip", *args[7:]]) == 0  # ./clip is the same folder: resumed, not refused
    settings = json.loads((out / "settings.json").read_text())
    del settings["settings"]["embedder"]["model_digest"]  # as an earlier version recorded it
    (out / "settings.json").write_text(json.dumps(settings))
    assert main(args) == 0, capsys.readouterr().err
    with torch.random.fork_rng():  # another model of the same shape, written over the first
        torch.manual_seed(1)
        CLIPVisionModelWithProjection(CLIPVisionConfig.from_pretrained(clip)).save_pretrained(clip)
    capsys.readouterr()
    assert main(args) == 2
    assert "the contents of --clip-model (was " in capsys.readouterr().err


def test_a_clip_text_encoder_is_refused_as_an_image_model(tmp_path):
    """A Stable Diffusion pipeline's text_encoder/ is an easy --clip-model mistake: a clear error, not the loader's
    RuntimeError about mismatched sizes."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4, vocab_size=99)
    CLIPTextModel(cfg).save_pretrained(tmp_path / "text_encoder")
    with pytest.raises(DiffauditError, match=r"holds a CLIP text encoder \(config.json model_type 'clip_text_model'\), "
                                             r"not a CLIP image model"):
        get_embedder("clip", model=str(tmp_path / "text_encoder"))
