"""The report's "Terms used here" section: each term the report's sections use, in plain words.

A report is read by people who did not run the audit (a privacy officer, a release reviewer), for whom
TPR, AUC, ℓ2 or "clique" are not words. :func:`glossary` lists, for the sections a report holds, what each
of its terms means and how to read it, with the paper's definition (Carlini et al. 2023) where it has one.
Where the report's numbers come from settings (the rule's α and n, the eidetic δ), the entries use them.
"""

from __future__ import annotations

from typing import Any

from diffaudit.report.view_extraction import ratio_neighbours


def _extraction_terms(ex: dict[str, Any]) -> list[tuple[str, str]]:
    """Generation, ℓ2, extracted (by the rule verify ran), false-positive baseline, k-eidetic."""
    # the ratio rule measures a copy against its neighbours; the l2 rule takes one δ for every image
    why = {"ratio": ", which is why the extraction rule below measures a copy against its neighbours",
           "l2": ", so the rule's one δ below is not equally strict on every dataset"}.get(ex.get("rule"), "")
    terms = [
        ("generation", "an image the audited model made. The audit asks whether any generation is a copy of a "
                       "training image."),
        ("ℓ2 (distance)", "how far apart two images are: the root-mean-square difference of their pixels, each "
                          "scaled to [0, 1]. 0 is the same image; below about 0.05 the two look the same to the eye "
                          "(a JPEG of an image is about 0.02 from it). How far apart different images lie depends on "
                          "the data (small, plain images such as digits can be 0.1 to 0.2 from their nearest other "
                          f"image){why}."),
    ]
    if ex.get("rule") == "ratio":
        alpha = ex.get("alpha") if isinstance(ex.get("alpha"), (int, float)) else 0.5
        n = ratio_neighbours(ex.get("n_neighbors"), ex.get("n_train"))
        every = n == ex.get("n_train") and n < 50
        terms.append(("extracted", f"a generation copies its closest training image when that image is at most "
                      f"α = {alpha:g} times as far from it as its {n} nearest training images are on average (the "
                      "normalised ℓ2 ratio ≤ 1: the paper's rule for CIFAR-10, with the 50 nearest"
                      + ("; here every training image, as there are fewer" if every else "") + "). The rule asks for "
                      "a copy of one training image rather than a likeness of many, relative to how close the "
                      "training images lie to each other: where they lie far apart, a copy by this rule can be "
                      "further than 0.05 from its training image, and then is close, not pixel for pixel the same. "
                      "Extracted images are counted unique: each training image once, however many generations "
                      "copy it."))
    elif ex.get("rule") == "l2":
        delta = ex.get("delta") if isinstance(ex.get("delta"), (int, float)) else 0.15
        terms.append(("extracted", f"a generation copies a training image when their ℓ2 is at most δ = {delta:g} "
                      "(the paper's (ℓ2, δ)-extraction)."))
    if ex.get("rule") is not None:
        n_base, n_train = ex.get("baseline_n_images"), ex.get("n_train")
        size = (f" It holds as many never-seen images as there are training images ({n_train:,}), so the two counts "
                "compare directly; it draws them on its own, so their number need not equal the membership attack's "
                "non-members." if isinstance(n_base, int) and n_base == n_train else " It draws its own never-seen "
                "images, so their number need not equal the membership attack's non-members.")
        terms.append(("false-positive baseline", "the same verification run with images the model never trained "
                      "on standing in for the training set. Whatever it matches is a coincidence of the rule, so "
                      "the count of extracted training images is evidence only where it is well above the "
                      "baseline's." + size))
        delta = ex.get("eidetic_delta") if isinstance(ex.get("eidetic_delta"), (int, float)) else 0.1
        terms.append(("k (eidetic memorization)", f"how many training images, the copied one included, lie within "
                      f"ℓ2 {delta:g} of the copied training image. The paper calls a copied image k-eidetic "
                      "memorized: k = 1 means the model reproduced one particular image, not a picture that the "
                      "training set holds many versions of."))
    return terms


def _clique_terms(cliques: dict[str, Any]) -> list[tuple[str, str]]:
    """Tiled ℓ2, clique, medoid: the filter that finds copies without the training set."""
    grid = cliques.get("grid")
    tiles = f"{grid} x {grid} here" if isinstance(grid, int) and grid > 0 else "4 x 4 by default"
    per = "" if cliques.get("unconditional") else " for one class" if cliques.get("classes") else " for one prompt"
    terms = [
        ("tiled ℓ2", f"the ℓ2 of two images taken tile by tile, on a grid of tiles ({tiles}), keeping the "
                     "largest: two images are close only if they are close everywhere, not merely on a shared "
                     "background."),
        ("clique", "a group of generations each within the edge threshold (tiled ℓ2) of every other: the model "
                   f"made nearly the same image again and again{per}, which is how a memorized image shows itself "
                   "without the training set (the paper's generate-and-filter)."),
        ("medoid", "the member of a clique closest to all the others: the one that stands for it, shown first, "
                   "and the one checked against the training set when only the cliques are verified."),
    ]
    if cliques.get("unconditional"):
        terms.append(("connected component", "generations linked to each other through chains of near-identical "
                      "pairs; the cliques are searched within each."))
    return terms


def _membership_terms(mia: dict[str, Any]) -> list[tuple[str, str]]:
    """Member, AUC, TPR at FPR, interval, p-value, timestep, loss, and LiRA where a row is one."""
    terms = [
        ("member, non-member", "an image the model trained on, and one it never saw. A membership attack (membership "
                               "inference) gives every image a score; larger means \"more likely a member\"."),
        ("AUC", "the chance that a random member scores above a random non-member: 0.5 is guessing, 1 a perfect "
                "split. Well below 0.5, the scores run the wrong way: the attack takes non-members for members."),
        ("TPR at 1% FPR", "the share of members the attack finds (true-positive rate) when its threshold lets "
                          "through only 1% of non-members (false-positive rate). It says whether some members "
                          "are identified with confidence, which an average such as the AUC can hide; with fewer "
                          "than 100 non-members it cannot be measured (n/a), and the share of members that score "
                          "above every non-member is given instead where recorded. TPR at 0.1% FPR needs 1,000 "
                          "non-members. Chance, an attack that guesses, finds 1% of members at 1% FPR."),
        ("95% CI [low, high]", "the 95% (bootstrap) confidence interval: the range the number would plausibly take on "
                               "another draw of as many members and non-members. [1.000, 1.000]: every draw separated "
                               "them perfectly, which is not certainty: a perfect score leaves nothing to resample, "
                               "and with few members another draw could fall short of it (the exact interval of a "
                               "rate, where given, bounds that)."),
        ("p", "how often chance alone would give a result at least this strong (a one-sided exact or rank test; the "
              "outlier correlation's is two-sided); below 0.05 the result is taken as evidence, unless its section says why "
              "not (an outlier correlation under an attack that separates every member)."),
        ("loss, timestep t", "the attack adds noise to an image, the amount set by the timestep t (0: none; T − 1, "
                             "999 for the usual 1,000-step schedule: pure noise), and measures how well the model "
                             "predicts that noise (its loss). A model tends to denoise its own training images "
                             "better; the paper finds t between 50 and 300 most revealing. The training loss is an "
                             "average over every t, so it is not comparable with the loss at one t."),
    ]
    if mia.get("roc_uri"):
        terms.append(("ROC curve", "the TPR an attack reaches at each FPR, drawn on log-log axes so that the low "
                      "false-positive rates, where confident attacks show, are visible."))
    rows = mia.get("rows") or []
    if any(str(r.get("attack") or r.get("key", "")).startswith(("lira", "strong-lira")) for r in rows):
        terms.append(("LiRA, shadow models", "the likelihood-ratio attack trains shadow models, each on a random "
                      "half of the data, and asks whether an image's loss under the audited model looks like its "
                      "losses in the shadows that trained on it or in those that did not. \"offline\": only the "
                      "shadows that did not; \"fixed\": one variance for every image; " + _strong_words(rows)))
    return terms


#: How Strong LiRA combines its queries into one score, by ``mia --strong-aggregate``.
STRONG_AGGREGATES = {
    "sum-llr": "scores each query on its own (one likelihood ratio per noise draw and flip) and sums their log "
               "ratios (--strong-aggregate sum-llr)",
    "mean-loss": "averages the loss over the queries first and scores that one average as LiRA does "
                 "(--strong-aggregate mean-loss, the paper's wording)",
}


def _strong_words(rows: list[dict[str, Any]]) -> str:
    """What Strong LiRA did with its queries (several noise draws, each also flipped or not): the aggregate
    its rows record (``strong_aggregate``), each row's where they differ; both where one is not recorded
    (or no Strong LiRA ran), so that the term never says what the Settings table contradicts."""
    strong = [r for r in rows if str(r.get("attack") or r.get("key", "")).startswith("strong")]
    aggregates = [r.get("strong_aggregate") for r in strong]
    draws = {r.get("n_draws") for r in strong}
    flips = {r.get("flips") for r in strong}
    n_draws = next(iter(draws)) if len(draws) == 1 else None  # one count for every row, else none said
    how_many = f"{n_draws} noise draws" if isinstance(n_draws, int) else "several noise draws"
    flipped = (" and their horizontal flips" if flips == {True} else " (here not flipped: --no-flips)" if flips == {False}
               else " and, with --flips, their horizontal flips")
    queries = f"Strong LiRA queries each image with {how_many}{flipped}"
    if strong and all(a in STRONG_AGGREGATES for a in aggregates):
        if len(set(aggregates)) == 1:
            return f"{queries}, and here {STRONG_AGGREGATES[aggregates[0]]}."
        each = "; ".join(f"{r.get('label') or r.get('key')} {STRONG_AGGREGATES[a]}" for r, a in zip(strong, aggregates))
        return f"{queries}: here {each}."
    return (f"{queries}, and either sums the log-likelihood ratios of the queries, each scored on its own "
            "(--strong-aggregate sum-llr, the default), or averages their losses first and scores the average "
            "(mean-loss).")


def glossary(ctx: dict[str, Any]) -> list[tuple[str, str]]:
    """``[(term, meaning)]`` for the sections the report context ``ctx`` holds (report/html.py's
    ``report_context``: ``summary``, ``cliques``, ``mia``, ``inpainting``, ``canaries``), in the order
    the report shows them; empty when it holds none of them."""
    summary = ctx.get("summary") or {}
    terms: list[tuple[str, str]] = []
    ex = summary.get("extraction")
    if ex:
        terms += _extraction_terms(ex)
    if ctx.get("cliques"):
        terms += _clique_terms(ctx["cliques"])
    if ctx.get("mia"):
        terms += _membership_terms(ctx["mia"])
    if ctx.get("inpainting"):
        terms.append(("inpainting attack", "half of each target image is hidden and the model fills it in many "
                      "times; if it fills in members' hidden halves closer to the original than non-members', it "
                      "remembers them."))
    if ctx.get("canaries"):
        terms.append(("canary, exposure", "a made-up image inserted into the training set a known number of "
                      "times. Its exposure, in bits, is how much lower its loss is than that of references never "
                      "inserted: log2(references + 1) − log2(its rank among them)."))
    if summary.get("outliers"):
        terms.append(("outlier score", "how unusual an image is in its dataset: its mean distance to its nearest "
                      "neighbours in an embedding (a vector the image is mapped to, where similar images lie close)."))
    if (summary.get("model") or {}).get("dp"):
        terms.append(("ε (DP-SGD)", "the privacy budget of differentially private training (DP-SGD: clipped, noised "
                      "gradient steps): the smaller, the less any one training example can change what the model "
                      "does."))
    return terms
