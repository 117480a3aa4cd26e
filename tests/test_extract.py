"""Generate-and-filter on real CIFAR-10 images: known answers for the conditional and black-box modes."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from diffaudit.attacks.extraction import (
    FilterSettings,
    calibrate,
    extract_unconditional,
    filter_conditional,
    near_duplicate_graph,
    verify,
    VerifySettings,
)
from diffaudit.attacks.extraction.filter import filter_prompt, filter_prompts, group_by_prompt
from diffaudit.core.errors import DiffauditError
from diffaudit.distances import pairwise_l2, pairwise_tiled_l2
from helpers import cifar_images, noisy_copies


def flat_background_set(sources: np.ndarray, n: int) -> np.ndarray:
    """n grey images with a distinct 6x6 CIFAR patch at the same place (inside one 8x8 tile):
    patches chosen pairwise 0.15..0.5 apart, so plain ℓ2 = 0.1875·d ≤ 0.094 but tiled = 0.75·d ≥ 0.11."""
    patches = sources[:, 9:15, 9:15].astype(np.float64) / 255
    kept: list[int] = []
    for i in range(len(sources)):
        d = [np.sqrt(((patches[i] - patches[j]) ** 2).mean()) for j in kept]
        if all(0.15 < x < 0.5 for x in d):
            kept.append(i)
        if len(kept) == n:
            break
    assert len(kept) == n
    out = np.full((n, 32, 32, 3), 128, np.uint8)
    out[:, 9:15, 9:15] = sources[kept, 9:15, 9:15]
    return out


@pytest.fixture(scope="module")
def world():
    train = cifar_images(300, "train")
    test = cifar_images(400, "test")
    memorized = noisy_copies(train[17], 20, seed=1)
    flat = flat_background_set(test[100:400], 20)
    distinct = test[:20]
    images = np.concatenate([memorized, flat, distinct])
    captions = ["a memorized photo"] * 20 + ["a grey card"] * 20 + ["a varied scene"] * 20
    ids = [f"p{p}-i{i}" for p in range(3) for i in range(20)]
    return dict(train=train, test=test, images=images, captions=captions, ids=ids, flat=flat)


def test_conditional_known_answer(world):
    res = filter_conditional(world["images"], world["ids"], world["captions"])
    by = {r.prompt: r for r in res}
    mem = by["a memorized photo"]
    assert mem.flagged and mem.largest_clique == 20 and mem.rank == 1
    assert mem.members == world["ids"][:20] and mem.medoid in mem.members
    assert 0 < mem.mean_distance < 0.05
    assert not by["a grey card"].flagged and by["a grey card"].largest_clique < 10
    assert not by["a varied scene"].flagged
    assert res[0].prompt == "a memorized photo"  # flagged first
    # verification of the flagged medoid: the right training image
    medoid = world["ids"].index(mem.medoid)
    v = verify(world["images"][[medoid]], [mem.medoid], world["train"], [f"train:{i}" for i in range(300)],
               settings=VerifySettings(rule="l2"))
    assert v.unique_extracted == 1
    assert v.extracted[0].train_id == 17 and v.extracted[0].train_key == "train:17"
    assert v.extracted[0].l2 < 0.03


def test_flat_backgrounds_fool_plain_l2_but_not_tiled(world):
    flat = world["flat"]
    plain = pairwise_l2(flat).numpy()
    tiled = pairwise_tiled_l2(flat).numpy()
    off = ~np.eye(len(flat), dtype=bool)
    assert plain[off].max() <= 0.1 < tiled[off].min()
    # the same filter with a 1x1 grid (plain ℓ2) flags the grey cards: the paper's reason for tiles
    res = filter_conditional(world["images"], world["ids"], world["captions"], settings=FilterSettings(grid=1))
    assert {r.prompt for r in res if r.flagged} == {"a memorized photo", "a grey card"}


def test_graph_on_uneven_tiles_and_margins(world):
    g = near_duplicate_graph(world["images"][:20, :30, :29], threshold=0.1, grid=4)  # 30x29: uneven tiles
    assert g.adjacency.sum() == 20 * 19 and g.refined == 0
    g2 = near_duplicate_graph(world["images"][:20], threshold=0.1, compute="float32")
    assert np.array_equal(g2.adjacency, near_duplicate_graph(world["images"][:20], threshold=0.1).adjacency)
    with pytest.raises(DiffauditError, match="edge threshold"):
        near_duplicate_graph(world["images"][:3], threshold=0)


def test_unconditional_black_box_finds_each_memorized_image(world):
    train, test = world["train"], world["test"]
    samples = np.concatenate([noisy_copies(train[5], 15, 2), test[:150], noisy_copies(train[42], 12, 3)])
    ids = [f"s{i}" for i in range(len(samples))]
    res = extract_unconditional(samples, ids, k_neighbors=16)
    sizes = sorted(g.size for g in res.groups)
    assert sizes == [12, 15]
    members = sorted(tuple(g.member_indices) for g in res.groups)
    assert members == [tuple(range(15)), tuple(range(165, 177))]
    assert not res.bound_hit and res.n_components == 2
    assert all(g.medoid in g.members for g in res.groups)
    # without copies, nothing
    none = extract_unconditional(test[:150], ids[:150], k_neighbors=16)
    assert none.groups == []


def test_unconditional_from_edges_of_chunks_equals_from_the_whole_search(world):
    """The CLI keeps only the edges within the threshold, chunk by chunk: same graph, same cliques."""
    from diffaudit.attacks.extraction.blackbox import NeighbourEdges
    from diffaudit.distances.knn import iter_knn, knn_search

    train, test = world["train"], world["test"]
    samples = np.concatenate([noisy_copies(train[5], 15, 2), test[:100], noisy_copies(train[42], 12, 3)])
    ids = [f"s{i}" for i in range(len(samples))]
    knn = knn_search(samples, samples, 16, exclude_self=True, device="cpu")
    whole = NeighbourEdges.from_knn(knn, 0.1)
    chunked = NeighbourEdges.from_chunks(len(samples), iter_knn(samples, samples, 16, exclude_self=True, device="cpu",
                                                                query_block=20), 0.1)
    assert len(whole.rows) == len(chunked.rows) > 0 and whole.saturated == chunked.saturated
    assert set(zip(whole.rows.tolist(), whole.cols.tolist())) == set(zip(chunked.rows.tolist(), chunked.cols.tolist()))
    assert all(knn.distances[r, list(knn.indices[r]).index(c)] <= 0.1 for r, c in zip(chunked.rows, chunked.cols))
    a = extract_unconditional(samples, ids, k_neighbors=16, knn=knn)
    b = extract_unconditional(samples, ids, k_neighbors=16, knn=chunked)
    assert [g.to_dict() for g in a.groups] == [g.to_dict() for g in b.groups] and len(b.groups) == 2
    assert (a.n_candidate_edges, a.n_saturated) == (b.n_candidate_edges, b.n_saturated)
    with pytest.raises(DiffauditError, match="covers"):
        extract_unconditional(samples[:50], ids[:50], k_neighbors=16, knn=chunked)


def test_unconditional_saturation_and_truncation_reported(world):
    samples = noisy_copies(world["train"][8], 30, 4)
    res = extract_unconditional(samples, [f"s{i}" for i in range(30)], k_neighbors=5, max_component=20)
    assert res.n_saturated == 30  # every copy has more than 5 near-duplicates
    assert res.groups[0].truncated and res.groups[0].size >= 10
    whole = extract_unconditional(samples[:12], [f"s{i}" for i in range(12)], k_neighbors=11)
    assert whole.n_saturated == 0 and whole.groups[0].size == 12  # k = n − 1: every edge was seen, no warning


def test_calibration_precision_recall(world):
    groups = group_by_prompt(world["captions"])
    dists = [near_duplicate_graph(world["images"][idx], threshold=1.0).distances for _, idx in groups]
    truth = [p == "a memorized photo" for p, _ in groups]
    pts = calibrate(dists, truth, thresholds=[0.01, 0.1, 0.5], clique_sizes=[10])
    by = {p.edge_threshold: p for p in pts}
    assert by[0.01].flagged == 0 and by[0.01].precision is None and by[0.01].recall == 0.0
    assert by[0.1].precision == 1.0 and by[0.1].recall == 1.0
    assert by[0.5].recall == 1.0 and by[0.5].precision < 1.0  # a loose threshold flags the grey cards too
    with pytest.raises(DiffauditError, match="sweep-min-clique"):
        calibrate(dists, truth, thresholds=[0.1], clique_sizes=[1])


def test_filter_settings_validation():
    with pytest.raises(DiffauditError, match="--edge-threshold"):
        FilterSettings(edge_threshold=1.5).validate()
    with pytest.raises(DiffauditError, match="--min-clique"):
        FilterSettings(min_clique=1).validate()
    with pytest.raises(DiffauditError, match="counts differ"):
        filter_conditional(np.zeros((2, 8, 8, 3), np.uint8), ["a", "b"], ["x"])


def test_filter_prompts_gives_filter_prompts_results_in_order(world):
    """The pipelined loop (next graph queued before this prompt's clique search) changes nothing."""
    imgs, ids = world["images"], world["ids"]
    work = [(0, "memorized", imgs[:20], ids[:20]), (1, "none", imgs[:0], []), (2, "grey", imgs[20:40], ids[20:40]),
            (3, "varied", imgs[40:], ids[40:])]
    got = [r.to_dict() for r in filter_prompts(iter(work))]
    assert got == [filter_prompt(x, i, p, prompt_index=pi).to_dict() for pi, p, x, i in work]
    assert [r["prompt"] for r in got] == ["memorized", "none", "grey", "varied"] and got[0]["flagged"]


class _QueuedGraph:
    """Stands for a CUDA event: the graph counts as still being computed until ``synchronize``."""

    def __init__(self, log, name):
        self.log, self.name = log, name

    def synchronize(self):
        self.log.append(f"wait {self.name}")


@pytest.mark.parametrize("queued", [False, True])
def test_filter_prompts_order_and_errors_with_and_without_queued_graphs(world, monkeypatch, queued):
    """On the CPU each result comes at once; with graphs still queued on a GPU (simulated), each comes
    after the next prompt's graph is queued. Either way a bad prompt's error comes after every
    earlier result."""
    import diffaudit.attacks.extraction.filter as filt

    log = []
    real = filt.start_near_duplicate_graph

    def start(images, **kw):
        g = real(images, **kw)
        log.append(f"start {len(images)}")
        if queued:
            g.ready = _QueuedGraph(log, len(images))
        return g

    monkeypatch.setattr(filt, "start_near_duplicate_graph", start)
    imgs, ids = world["images"], world["ids"]
    work = [(0, "memorized", imgs[:20], ids[:20]), (1, "varied", imgs[40:57], ids[40:57]),
            (2, "bad", imgs[:3, :, :, :1][:, :1], ["x", "y", "z"])]  # 1x32 images: finer than the 4x4 grid
    it = filter_prompts(iter(work), settings=FilterSettings(grid=4))
    got = [next(it).prompt]
    got.append(next(it).prompt)
    with pytest.raises(DiffauditError, match="grid"):
        next(it)
    assert got == ["memorized", "varied"]
    if queued:
        assert log == ["start 20", "start 17", "wait 20", "wait 17"]
    else:
        assert log == ["start 20", "start 17"]


def test_graph_distances_are_the_correctly_rounded_roots_of_exact_mean_squares():
    """So they are equal on every device: torch's vectorised CPU float64 sqrt is off by one ulp for
    some values (on this machine 10 of these 1,600), where the H100 and numpy agree."""
    x = np.random.default_rng(5).integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    t = x.astype(np.int64)
    ms = np.zeros((40, 40))
    for r in range(0, 8, 2):
        for c in range(0, 8, 2):
            tile = t[:, r:r + 2, c:c + 2].reshape(40, -1)
            ms = np.maximum(ms, ((tile[:, None] - tile[None]) ** 2).sum(-1) * (1.0 / (12 * 255.0 ** 2)))
    assert np.array_equal(near_duplicate_graph(x, threshold=0.1).distances, np.sqrt(ms))


@pytest.mark.gpu
def test_cuda_graph_filter_and_blackbox_equal_cpu(world):
    """On CUDA (the exact int8 GEMM by default; bf16 with the pairs near the threshold recomputed
    exactly) the graph and verdicts match."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA")
    imgs = world["images"]
    cpu = near_duplicate_graph(imgs, threshold=0.1)
    gpu = near_duplicate_graph(imgs, threshold=0.1, device="cuda")
    assert np.array_equal(cpu.distances, gpu.distances) and gpu.refined == 0
    bf16 = near_duplicate_graph(imgs, threshold=0.1, device="cuda", compute="bf16")
    assert np.array_equal(cpu.adjacency, bf16.adjacency)
    assert np.abs(cpu.distances - bf16.distances).max() < 5e-3  # sqrt near 0 magnifies the fp32 margin
    a = filter_conditional(imgs, world["ids"], world["captions"])
    b = filter_conditional(imgs, world["ids"], world["captions"], device="cuda")
    assert [(r.prompt, r.flagged, r.members, r.medoid) for r in a] == [(r.prompt, r.flagged, r.members, r.medoid) for r in b]
    # the pipelined loop on the GPU (each graph copied back while the next is queued), prompts of
    # different sizes, on the host and already on the device: every field as on the CPU
    work = [(0, "m", imgs[:20], world["ids"][:20]), (1, "g", imgs[20:33], world["ids"][20:33]),
            (2, "v", imgs[33:60], world["ids"][33:60]), (3, "m2", imgs[5:14], world["ids"][5:14])]
    want = [r.to_dict() for r in filter_prompts(iter(work))]
    assert [r.to_dict() for r in filter_prompts(iter(work), device="cuda")] == want
    on_gpu = [(pi, p, torch.from_numpy(x).cuda(), i) for pi, p, x, i in work]
    assert [r.to_dict() for r in filter_prompts(iter(on_gpu))] == want
    samples = np.concatenate([noisy_copies(world["train"][5], 15, 2), world["test"][:150]])
    ids = [f"s{i}" for i in range(len(samples))]
    ua = extract_unconditional(samples, ids, k_neighbors=16, device="cpu")
    ub = extract_unconditional(samples, ids, k_neighbors=16, device="cuda")
    assert [g.members for g in ua.groups] == [g.members for g in ub.groups]
