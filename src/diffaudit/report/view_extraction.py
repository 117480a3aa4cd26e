"""Report view of extraction: the headline verdict, the gallery of extracted pairs, flagged cliques.

A pair shows the generation (from the sample store) beside the training image it reproduces (from
the dataset recorded in the verify settings), with ℓ2, the normalised ratio, eidetic k and the
duplicate count. Missing pixels show as ids; with ``redact`` training images are never loaded, the
verified generations and clique members (copies, or candidate copies, of them) show as ids too, and
neither training keys (file names) nor prompts (captions) are shown: positions and indices stand in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffaudit.attacks.extraction.calibration import best_point
from diffaudit.core.errors import DiffauditError
from diffaudit.report.calibration_sweep import calibration_points, count
from diffaudit.report.clique_counts import clique_counts, from_extract
from diffaudit.report.fmt import fmt_p
from diffaudit.report.images import SampleImages, TrainingImages, data_digest, data_spec, image_uri
from diffaudit.report.redacted_names import generation_names, shown_as
from diffaudit.report.results import ResultSet, Stage, closest, links_out, records, resolve_path
from diffaudit.report.summary import baseline_pvalue

# The one-sided level of the exact test of the extracted count against the baseline's count: below
# it, the verdict says "yes"; at or above it, "unsure".
SIGNIFICANCE = 0.05
MAX_PAIRS = 48
MAX_PROMPTS = 30
MAX_MEMBERS = 12
THUMB = 96
PAIR_SIDE = 256


def ratio_neighbours(n_neighbors: Any, n_train: Any) -> int:
    """The n nearest training images the ratio rule averaged over: ``n_neighbors`` (default 50), at most the
    training set's ``n_train`` (verify records the n it used; older settings hold the requested one)."""
    n = int(n_neighbors) if isinstance(n_neighbors, (int, float)) else 50
    return min(n, n_train) if isinstance(n_train, int) and n_train > 0 else n


def rule_text(rule: Any, delta: Any = None, *, alpha: Any = None, n_neighbors: Any = None, n_train: Any = None) -> str:
    """The extraction rule in words (paper §4.1: (ℓ2, δ)-extraction, or the normalised distance of the
    paper's CIFAR-10 attack)."""
    if rule == "ratio":
        n = ratio_neighbours(n_neighbors, n_train)
        a = alpha if isinstance(alpha, (int, float)) else 0.5
        return f"normalised ℓ2 ratio ≤ 1 (α = {a:g}, against the {n} nearest training images)"
    if rule == "l2":
        return f"ℓ2 ≤ δ = {delta if delta is not None else 0.15}"
    return "none: verification was not run" if rule is None else str(rule)


NOT_VERIFIED = "Extraction was not verified against the training set."
#: What finding no copy says: only that these generations hold none (the paper searched 175 million).
NOT_RULED_OUT = ("That does not rule out memorization: it says only that these generations hold no copy, and more "
                 "generations (the paper made millions) may find some.")
#: The verdict of an unfinished audit before its extraction.
NOT_YET = "The audit has not finished: it has not yet measured whether the model emits its training images."
#: The verdict of a folder without any extraction result (a membership attack, a trained run, ...).
NOT_RUN = ("This folder holds no extraction result, so whether the model emits its training images is not "
           "measured here (`diffaudit audit`, or sample, extract and verify, measure it); its own results follow.")


def verdict(ex: dict[str, Any] | None, *, canaries: dict[str, Any] | None = None, unfinished: bool = False) -> dict[str, str]:
    """The answer to "was training data extracted?": level (yes/no/unsure/unknown) and a sentence.

    Against a false-positive baseline the answer is "yes" only when the one-sided exact test
    (:func:`~diffaudit.report.summary.baseline_pvalue`) puts the extracted count significantly above
    the baseline's count (p < :data:`SIGNIFICANCE`) and some training match lies closer than the closest
    baseline match (where both distances are recorded): a count above chance whose every match lies
    farther than a never-seen image came is "unsure", a sign of memorization but no copy. Otherwise "unsure".

    Verified against images none of which the model trained on (``data_vs_model``): not measured.

    Without a verification against the training set: ``canaries`` (summary.json's ``canaries``)
    answers with the canary check, which verifies the generations against the inserted canaries
    (:func:`canary_verdict`); an extract result alone says how many cliques were found and that they
    were not verified (:func:`unverified_verdict`). ``unfinished``: an audit that has not finished,
    whose missing stages are not yet run rather than left out.
    """
    if ex and ex.get("unique_extracted") is None and ex.get("prompt_checks_extracted") is not None:
        return prompt_check_verdict(ex)
    if not ex or ex.get("unique_extracted") is None:
        if canaries and canaries.get("n_extracted") is not None:
            return canary_verdict(canaries)
        return unverified_verdict(ex, unfinished=unfinished)
    n, base, total = ex["unique_extracted"], ex.get("baseline_unique_extracted"), ex.get("n_samples")
    pooled = bool(ex.get("pool"))  # generations of several models (diffaudit pool): their sentences say so
    models, emits, they = ("the models", "emit their", "they") if pooled else ("the model", "emits its", "it")
    if total == 0:  # verify --from-extract of a result that flagged nothing: no count bounds anything
        among = ex.get("n_samples_total")
        among = f" among its {among:,} generations" if isinstance(among, int) else ""
        return {"level": "unknown", "text": f"Not measured: no generation was verified (the extract result flagged no "
                f"clique{among}), so whether {models} {emits} training images is not known. Extraction flags only "
                "cliques of near-identical generations: generate more (the paper: 500 per prompt) and extract again."}
    dvm = ex.get("data_vs_model") if isinstance(ex.get("data_vs_model"), dict) else {}
    if isinstance(dvm.get("n_data"), int) and dvm["n_data"] > 0 and dvm.get("n_not_trained") == dvm["n_data"]:
        return {"level": "unknown", "text": f"Not measured: none of the {dvm['n_data']:,} images verified against is one "
                                            f"{models} that made the generations trained on, so a match to them is not "
                                            f"memorization: verify against the data {they} trained on."}
    of = f" from {total:,} generations" if isinstance(total, int) else ""
    if isinstance(total, int) and isinstance(ex.get("n_samples_total"), int):  # verify --from-extract
        of = f" from the {total:,} flagged clique medoids of {ex['n_samples_total']:,} generations"
    if n == 0:
        return {"level": "no", "text": f"No training image was extracted{of}. {NOT_RULED_OUT}"}
    s = "image was" if n == 1 else "images were"
    if base is None:  # the ratio rule matched 14 of 32 never-seen digits in the built-in audit: a count alone is no answer
        return {"level": "unsure", "text": f"Unsure: {n:,} training {s} matched{of}, but no false-positive baseline was "
                                           f"run (verify --baseline: images {models} never saw), so how many would match "
                                           "by chance is not measured."}
    p = ex["baseline_pvalue"] if ex.get("baseline_pvalue") is not None else baseline_pvalue(ex)  # as summary.json holds it
    test = f"one-sided {_test_name(ex)}, p = {fmt_p(p)}{_size_note(ex)}"
    against = f"against {_baselinecount(ex, base)} (the false-positive baseline)"
    if p < SIGNIFICANCE and ex.get("extracted_closer_than_baseline") == 0 and ex.get("baseline_l2_min") is not None:
        return {"level": "unsure", "text": (
            f"Above chance, but no copy: {n:,} training {s} matched{of}, {against}: significantly more than the baseline's "
            f"chance matches ({test}), yet none lies closer than the closest baseline match (ℓ2 "
            f"{ex['baseline_l2_min']:.3f}; the training matches at median ℓ2 {ex['extracted_l2_median']:.3f}). "
            + ("The models come near their training images more often than near images they never saw, but emit none "
               "more nearly than they come to a never-seen one" if pooled else
               "The model comes near its training images more often than near images it never saw, but emits none "
               "more nearly than it comes to a never-seen one")
            + f": a sign of memorization, not an extracted copy.{_chance_share(ex, n, base)}")}
    if p < SIGNIFICANCE:
        # every match closer than any chance match: the closeness, said next, settles what the excess would guess
        share = "" if _all_closer(ex) and n > 1 else _chance_share(ex, n, base)
        text = (f"Yes: {n:,} training {s} extracted{of}, {against}: significantly above the baseline's rate of chance "
                f"matches ({test}).{share}")
        level = "yes"
    else:
        text = (f"Inconclusive: {n:,} training {s} matched{of}, {against}: {n:,} is not significantly above the "
                f"baseline ({test}, not below {SIGNIFICANCE:g}).{_needed_note(ex, base)}")
        level = "unsure"
    return {"level": level, "text": text + _l2_note(ex, base)}


def canary_verdict(canaries: dict[str, Any]) -> dict[str, str]:
    """The verdict of a canary run: how many of the inserted canaries (known members, inserted a known
    number of times) generations reproduce, by the run's verification rule. ``canaries``: summary.json's
    ``canaries`` with ``n_extracted`` not None.

    It says what the report's count of training images holds: the model trained on --data's images and
    the canaries, each canary counted once however many times it was inserted (the training run's
    ``n_train``), while the canaries result's own ``n_train`` counts --data's images alone. Where none was
    extracted, what that does not rule out (:data:`NOT_RULED_OUT`, whose "That" is the finding) comes right
    after the finding, before those asides.

    Where the never-inserted references were verified too (``references``: {n, n_extracted}), they are the
    false-positive baseline: "yes" only when the one-sided Fisher exact test
    (:func:`~diffaudit.report.summary.baseline_pvalue`) puts the canaries' count significantly above
    theirs (p < :data:`SIGNIFICANCE`), else "unsure"."""
    k, n = canaries["n_extracted"], canaries.get("n_canaries")
    of = f" of {n:,}" if isinstance(n, int) else ""
    scope = (" The generations were verified against the inserted canaries, which are known to be in training; "
             "the canary curve below shows how extraction grows with the number of repeats.")
    if isinstance(n, int) and n > 0:
        scope += (f" The model's training images, as this report counts them, include the {n:,} "
                  f"canar{'y' if n == 1 else 'ies'}, each once however many times it was inserted (the canaries "
                  "result's n_train counts --data's images alone).")
    if k == 0:
        # what "none extracted" does not rule out follows it at once: after the counting aside, "That" would be it
        return {"level": "no", "text": f"No inserted canary was extracted (0{of}). {NOT_RULED_OUT}{scope}"}
    noun = "canary" if (n if isinstance(n, int) else k) == 1 else "canaries"  # "1 of 3 inserted canaries was"
    was, them = ("was", "it") if k == 1 else ("were", "them")
    refs = canaries.get("references") if isinstance(canaries.get("references"), dict) else {}
    r, m = refs.get("n_extracted"), refs.get("n")
    if isinstance(r, int) and isinstance(m, int) and m > 0 and isinstance(n, int) and n > 0:
        p = baseline_pvalue({"unique_extracted": k, "baseline_unique_extracted": r, "n_train": n, "baseline_n_images": m})
        against = (f"against {r:,} of the {m:,} never-inserted references (the false-positive baseline; one-sided "
                   f"Fisher exact test, p = {fmt_p(p)})")
        if p >= SIGNIFICANCE:
            return {"level": "unsure", "text": f"Inconclusive: {k:,}{of} inserted {noun} {was} matched, {against}: not "
                                               f"significantly above the references (not below {SIGNIFICANCE:g}).{scope}"}
        return {"level": "yes", "text": f"Yes: {k:,}{of} inserted {noun} {was} extracted, {against}: generations "
                                        f"reproduce {them}.{scope}"}
    return {"level": "yes", "text": f"Yes: {k:,}{of} inserted {noun} {was} extracted: generations reproduce {them}.{scope}"}


def prompt_words(kind: Any) -> tuple[str, str]:
    """What a conditional extraction's prompts are called, singular and plural: a class-conditional model's
    (extract's ``prompt_kind`` "class") are its classes, any other model's its prompts."""
    return ("class", "classes") if kind == "class" else ("prompt", "prompts")


def class_names(rs: ResultSet) -> list[str] | None:
    """The training set's class names (``class_names[label]``) where the prompts are a class-conditional
    model's classes and verify recorded the names its ``--data`` gives them (sub-folder names,
    CIFAR-10's), else None."""
    st = rs.first("verify")
    names = None if st is None or st.result.get("prompt_kind") != "class" else st.result.get("class_names")
    return [str(n) for n in names] if isinstance(names, list) and names else None


def named_class(prompt: Any, names: list[str] | None) -> Any:
    """A class prompt (its label value, "1") with its class's name where one is known and says more:
    "1 (pneumonia)"; any other prompt as it is."""
    if not isinstance(prompt, str) or not names or not prompt.isdigit() or int(prompt) >= len(names):
        return prompt
    name = names[int(prompt)]
    return prompt if name == prompt else f"{prompt} ({name})"


def unverified_verdict(ex: dict[str, Any] | None, *, unfinished: bool = False) -> dict[str, str]:
    """The verdict without any verification: "unknown"; when an extract result is there (and no verify
    stage), what it found, and that its cliques were not checked against the training set: by the
    ``verify`` command, or (``unfinished``) by the audit's verify stage, not reached yet."""
    if not ex:
        return {"level": "unknown", "text": NOT_YET if unfinished else NOT_RUN}
    if ex.get("rule") is not None:
        return {"level": "unknown", "text": NOT_VERIFIED}
    of = f" among {ex['n_samples']:,} generations" if isinstance(ex.get("n_samples"), int) else ""
    if isinstance(ex.get("n_cliques"), int):
        n = ex["n_cliques"]
        found = f"{n:,} clique{'' if n == 1 else 's'} of near-identical generations"
        copies = (" The clique holds candidate copies of one image" if n == 1 else
                  " Each clique holds candidate copies of one image, and several cliques can copy the same one")
    elif isinstance(ex.get("n_flagged"), int):
        n, p = ex["n_flagged"], ex.get("n_prompts")
        one, many = prompt_words(ex.get("prompt_kind"))
        of_p = f" of {p:,}" if isinstance(p, int) else ""
        found = f"{n:,}{of_p} {one if (p if isinstance(p, int) else n) == 1 else many} flagged"
        copies = (f" The flagged {one}'s clique holds candidate copies of a training image" if n == 1 else
                  f" The flagged {many}' cliques hold candidate copies of training images")
        short = ex.get("n_prompts_below_min_clique")
        if short and n == 0 and short == p:
            return {"level": "unknown", "text": f"Extraction could flag no {one}: each of the {p:,} {many} has fewer "
                    f"generations than the minimum clique ({ex.get('min_clique')}), so finding none says nothing about "
                    f"memorization. Generate more per {one} (the paper: 500) and extract again."}
    else:
        return {"level": "unknown", "text": NOT_VERIFIED}
    if unfinished:
        return {"level": "unknown", "text": f"Extraction found {found}{of}; the audit has not yet verified "
                                            "them against the training set."}
    text = f"Extraction found {found}{of}; verification against the training set was not run."
    if n:
        text += (f"{copies}: `diffaudit verify --samples SAMPLES --data DATA --from-extract EXTRACT/result.json` checks "
                 f"{'it against the training set' if n == 1 else 'them and maps them to training images'}.")
    return {"level": "unknown", "text": text}


def baseline_phrase(ex: dict[str, Any] | None) -> str:
    """The false-positive baseline in a few words for a command's last line, "" without one:
    "false-positive baseline: 14 among 32 never-seen images, p = 1.3e-07"."""
    if not ex or ex.get("baseline_unique_extracted") is None:
        return ""
    size = ex.get("baseline_n_images")
    among = f" among {size:,} never-seen images" if isinstance(size, int) else ""
    p = ex.get("baseline_pvalue")
    return f"false-positive baseline: {ex['baseline_unique_extracted']:,}{among}" + ("" if p is None else f", p = {fmt_p(p)}")


def _baselinecount(ex: dict[str, Any], base: int) -> str:
    """The baseline's count with its set's size: "2 false positives among 1,000 never-seen images"."""
    fp = "false positive" if base == 1 else "false positives"
    size = ex.get("baseline_n_images")
    if isinstance(size, int):
        return f"{base:,} {fp} among {size:,} never-seen images"
    return f"{base:,} {fp} among never-seen images (their number not recorded: taken as equal to the training set)"


def _chance_expected(ex: dict[str, Any], base: int) -> float | None:
    """How many training images the baseline's rate would match by chance (n_train · base / n_baseline);
    None without both set sizes or when that is negligible (below 0.5)."""
    size, n_train = ex.get("baseline_n_images"), ex.get("n_train")
    if not base or not (isinstance(size, int) and isinstance(n_train, int)) or size == 0:
        return None
    expected = n_train * base / size
    return None if expected < 0.5 else expected


def _chance_share(ex: dict[str, Any], n: int, base: int) -> str:
    """How many of the ``n`` matches the baseline's rate would give by chance, when that is not negligible
    (:func:`_chance_expected`): a significant excess is not every match a memorized image."""
    expected = _chance_expected(ex, base)
    if expected is None:
        return ""
    n_train = ex["n_train"]
    return (f" At the baseline's rate about {min(expected, n):,.0f} of the {n_train:,} training images would match by "
            f"chance: the excess of the {n:,} matches over that, about {max(n - expected, 0):,.0f}, is what the count alone "
            "attributes to memorization (how close the matches lie can tell more).")


def _test_name(ex: dict[str, Any]) -> str:
    """The test :func:`~diffaudit.report.summary.baseline_pvalue` ran: Fisher's with both set sizes recorded."""
    sizes = isinstance(ex.get("n_train"), int) and isinstance(ex.get("baseline_n_images"), int)
    return "Fisher exact test" if sizes else "exact binomial test (equal sets assumed)"


def _size_note(ex: dict[str, Any]) -> str:
    """When the baseline set and the training set differ in size: that the test weighs them."""
    size, n_train = ex.get("baseline_n_images"), ex.get("n_train")
    if not (isinstance(size, int) and isinstance(n_train, int)) or size == n_train:
        return ""
    return f", which weighs the {size:,} never-seen images against the {n_train:,} training images"


#: The largest count :func:`needed_count` tries before it says none would do.
NEEDED_SEARCH = 100_000


def needed_count(ex: dict[str, Any], base: int) -> int | None:
    """The fewest extracted training images that the one-sided exact test (:func:`baseline_pvalue`) would put
    significantly above ``base`` baseline matches, with the set sizes ``ex`` records; None without both sizes,
    or when none up to the training set's size (at most :data:`NEEDED_SEARCH`) would. The p-value falls as
    the count rises (the hypergeometric tail of n + b draws at n), so the first count below the level is it."""
    n_train, n_base = ex.get("n_train"), ex.get("baseline_n_images")
    if not (isinstance(n_train, int) and isinstance(n_base, int) and n_train > 0 and n_base > 0):
        return None
    def significant(k: int) -> bool:
        return baseline_pvalue({**ex, "unique_extracted": k, "baseline_unique_extracted": base}) < SIGNIFICANCE

    lo, hi = 1, min(n_train, NEEDED_SEARCH)
    if not significant(hi):
        return None
    while lo < hi:  # bisection: significance is monotone in the count
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if significant(mid) else (mid + 1, hi)
    return lo


def _needed_note(ex: dict[str, Any], base: int) -> str:
    """Beside an inconclusive count against a baseline set smaller than the training set: how many training
    images would have had to match for the test to say yes, and that a larger never-seen set lowers it (a
    baseline of 10,000 images against 50,000 needs 17 matches where equal sets need 5, both with none on the
    baseline). "" with sets of equal size, where the count needed is plain from the two counts."""
    n_train, n_base = ex.get("n_train"), ex.get("baseline_n_images")
    if not (isinstance(n_train, int) and isinstance(n_base, int)) or n_base >= n_train:
        return ""
    k = needed_count(ex, base)
    if k is None and n_train > NEEDED_SEARCH:  # not searched that far: nothing to say
        return ""
    if k is None:
        return (f" Against {base:,} baseline matches among only {n_base:,} never-seen images, no count of the "
                f"{n_train:,} training images could be significant: give more never-seen images (--baseline, or "
                "--heldout in an audit).")
    return (f" With only {n_base:,} never-seen images against {n_train:,} training images, at least {k:,} training "
            f"images would have to match (against {base:,} baseline {'match' if base == 1 else 'matches'}) to be "
            "significant; more never-seen images (--baseline, or --heldout in an audit) lower that.")


def _all_closer(ex: dict[str, Any]) -> bool:
    """Whether every training match lies closer than the closest baseline match (and the farthest is recorded)."""
    closer = ex.get("extracted_closer_than_baseline")
    return bool(closer) and closer == ex.get("unique_extracted") and ex.get("extracted_l2_max") is not None


def _l2_note(ex: dict[str, Any], base: int) -> str:
    """How far the training matches lie against the closest baseline match (when both are recorded)."""
    if not base or ex.get("extracted_l2_median") is None or ex.get("baseline_l2_min") is None:
        return ""
    text = (f" The training matches lie at median ℓ2 {ex['extracted_l2_median']:.3f}; the closest baseline match is at "
            f"ℓ2 {ex['baseline_l2_min']:.3f}.")
    closer = ex.get("extracted_closer_than_baseline")
    if _all_closer(ex) and closer > 1:
        expected = _chance_expected(ex, base)
        chance = ("" if expected is None else f", so none of them is one of the chance matches the count allows for "
                  f"(about {min(expected, closer):,.0f} at the baseline's rate)")
        text += (f" All {closer:,} training matches are closer than any baseline match (the farthest at ℓ2 "
                 f"{ex['extracted_l2_max']:.3f}): copies that no never-seen image came as near to{chance}.")
    elif closer:  # the count weighs every match alike; how close a match is, the count does not see
        text += (f" {closer:,} of the training matches {'is' if closer == 1 else 'are'} closer than any baseline match "
                 f"(the closest training match at ℓ2 {ex['extracted_l2_min']:.3f}): {'a copy' if closer == 1 else 'copies'} "
                 "no never-seen image came as near to.")
    return text


def prompt_check_verdict(ex: dict[str, Any]) -> dict[str, str]:
    """The verdict of a verify run where only the ``--train-map`` check ran (--data could not be searched
    whole: its images differ from the generations' size, or from each other's): each mapped generation
    against its own prompt's training image(s), not the whole set."""
    k, n, u = ex["prompt_checks_extracted"], ex.get("prompt_checks_n"), ex.get("prompt_checks_unique_extracted")
    of = f" of {n:,}" if isinstance(n, int) else ""
    scope = (" Only the --train-map check ran (--data's images are not all of the generations' size, so the whole "
             "set could not be searched): each generation was compared with its own prompt's training image.")
    if k == 0:
        text = (f"No generation{of} checked against its own prompt's training image reproduces it (ℓ2 ≤ δ under every "
                f"crop alignment). {NOT_RULED_OUT}{scope}")
        return {"level": "no", "text": text}
    imgs = "" if not isinstance(u, int) else f" ({u:,} distinct training image{'' if u == 1 else 's'})"
    return {"level": "yes", "text": f"Yes: {k:,}{of} generations{imgs} reproduce their own prompt's training image "
                                    f"within ℓ2 ≤ δ under crop alignment.{scope}"}


def _bases(stage: Stage, rs: ResultSet) -> tuple[Path, ...]:
    return (stage.path, rs.root, stage.path.parent, rs.root.parent)


#: Why a stage folder that is a link out of the reported folder shows no images.
LINKED = ("the {} folder is a link out of the reported folder, so none of the images it names is embedded (a "
          "result folder from elsewhere could link to any result on this machine)")


def sample_images(stage: Stage | None, rs: ResultSet) -> SampleImages:
    """The generations a stage read: its recorded ``samples`` setting, else the audit's store.

    An input inside the reported folder (links followed) came with it: its generations are shown, unless
    it holds a link out of the folder (a store's shard linked to a file elsewhere), when none is. Any other
    input is shown only when it is the one the stage recorded (its ``samples_identity``, of the verified
    medoids after ``verify --from-extract``, see :class:`SampleImages`): a result folder from elsewhere may
    name any folder on this machine."""
    from diffaudit.store.location import is_object_url

    path = None
    value = stage.settings.get("samples") if stage is not None else None
    if isinstance(value, str) and is_object_url(value):
        return _object_store_images(stage)
    if stage is not None:
        path = resolve_path(value, *_bases(stage, rs))
        if path is None and isinstance(value, str) and "{" in Path(value).name:  # shards named by a brace pattern
            return _pattern_images(stage, rs, value)
    if path is None and rs.store_dirs:
        path = rs.store_dirs[0]
    if path is None:
        return SampleImages(None)
    if rs.holds(path):
        link = links_out(path, rs.root) if path.is_dir() else None
        if link is None:
            return SampleImages(path)
        return SampleImages.refused(path, f"{link} is a link out of the reported folder, so none of the generations in "
                                          f"{path} is embedded (a result folder from elsewhere could link to any file on "
                                          "this machine)")
    identity = stage.settings.get("samples_identity") if stage is not None else None
    # verify --from-extract records the identity of the medoids it verified, not of the whole input
    verified = stage.result.get("verified_medoids") if stage is not None else None
    return SampleImages(path, trusted=False, identity=identity, verified=verified)


def _pattern_images(stage: Stage, rs: ResultSet, pattern: str) -> SampleImages:
    """The generations of a stage that read WebDataset shards by a brace pattern (``gen-{000..009}.tar``),
    found as given or relative to the stage's folders like any recorded path (:func:`resolve_path`).

    They are shown only when they are the generations the stage recorded (its ``samples_identity``),
    wherever they lie: a pattern names many files, any of which could be a link out of the folder."""
    from diffaudit.data.shards import expand_pattern

    def shards_exist(candidate: Path) -> bool:
        try:
            return bool(expand_pattern(str(candidate)))
        except DiffauditError:  # a shard of the pattern is missing there
            return False

    found = resolve_path(pattern, *_bases(stage, rs), exists=shards_exist)
    if found is None:
        return SampleImages.refused(Path(pattern), f"no shard of {pattern} is found from here")
    return SampleImages(found, trusted=False, identity=stage.settings.get("samples_identity"),
                        verified=stage.result.get("verified_medoids"))


def _object_store_images(stage: Stage) -> SampleImages:
    """The generations of a stage that read a sample store by URL (``s3://...``): shown when the store is the
    one the stage recorded (its ``samples_identity``), like any input from outside the reported folder;
    a store that cannot be reached from here (no credentials, no s3fs) shows its generations by id."""
    from diffaudit.store import SampleStore

    url = stage.settings["samples"]
    try:
        if not SampleStore.is_store(url):
            return SampleImages.refused(url, f"{url} holds no sample store as seen from here (no manifest.json)")
        return SampleImages(url, trusted=False, identity=stage.settings.get("samples_identity"))
    except DiffauditError as exc:
        return SampleImages.refused(url, f"{url} cannot be read from here ({exc})")


def duplicate_counts(rs: ResultSet) -> dict[str, int]:
    """Training key -> size of its near-duplicate group, from a dedup result (if any)."""
    st = rs.first("dedup")
    out: dict[str, int] = {}
    if st is None:
        return out
    for g in records(st.result, "members", preferred=("groups",)):
        keys = g.get("keys") or [f"#{m}" for m in g.get("members", [])]
        for k in keys:
            out[str(k)] = len(g.get("members") or keys)
    return out


def _position(train_id: Any) -> str:
    """How a redacted training example is named: its position in the training set as loaded."""
    return f"#{train_id}" if train_id is not None else "(redacted)"


def gallery(rs: ResultSet, *, redact: bool) -> dict[str, Any] | None:
    """Pairs of the verify stage, most exact first (smallest ℓ2), at most ``MAX_PAIRS``; each training image
    beside the closest generation counted for it (:func:`closest`). After ``verify
    --from-extract`` (``from_extract``), each pair's ``n_matching`` counts clique medoids, and
    ``clique_generations`` the generations in their cliques (:mod:`~diffaudit.report.clique_counts`).
    With ``redact`` no pixels, and each training example is named by its position in the training
    set, not by its key (a file name may carry a name or a record number)."""
    st = rs.first("verify")
    if st is None:
        return None
    # --data not searched whole (only the --train-map check ran): its generations that reproduce their own
    # prompt's training image are the pairs
    train_map = not isinstance(st.result.get("extracted"), list) and isinstance(st.result.get("prompt_checks"), list)
    pairs = ([c for c in st.result["prompt_checks"] if isinstance(c, dict) and c.get("extracted")] if train_map else
             [closest(e) for e in (st.result.get("extracted") or []) if isinstance(e, dict)])
    medoids_only = from_extract(st)
    counts = clique_counts(rs, st) if medoids_only else None
    # each record with the generations in its medoids' cliques (None: not --from-extract, or unknown)
    rows = list(zip(pairs, counts["per_record"] if counts else [None] * len(pairs)))
    rows.sort(key=lambda r: (r[0].get("l2") is None, r[0].get("l2") if isinstance(r[0].get("l2"), (int, float)) else 0))
    shown = rows[:MAX_PAIRS]
    linked = not rs.holds(st.path)  # another verify folder on this machine: its numbers, none of its images
    samples = SampleImages(None) if linked or redact else sample_images(st, rs)
    notes = []
    if shown and linked and not redact:
        notes.append("Generations and training images are shown by id: " + LINKED.format("verify") + ".")
    elif shown and samples.path is None and not redact:
        notes.append("The sample store was not found; generations are shown by id.")
    if shown and samples.refusal:
        notes.append(f"Generations are shown by id: {samples.refusal}.")
    train = None
    if shown and not redact and st.result.get("data_mixed_sizes"):  # no training set to load whole
        notes.append("Training images are shown by id: --data's images differ in size, and verify read only each "
                     "generation's own prompt's training images, each at its own size.")
    elif not redact and not linked and shown:
        spec, opts = data_spec(st.settings)
        train = TrainingImages(spec, opts, _bases(st, rs), digest=data_digest(st.settings))
        if train.error:
            notes.append(f"Training images are shown by id: {train.error}.")
    dups = duplicate_counts(rs)
    names = None if redact else class_names(rs)  # a folder name may say more than is to be shown
    generations = generation_names(rs) if redact else {}  # file names may name people; positions do not
    items = []
    for e, in_cliques in shown:
        key = e.get("train_key")
        group = e.get("duplicates")
        n_dup = 1 + len(group) if isinstance(group, list) else (dups.get(str(key)) if key is not None else None)
        gen = None if redact else samples.get(e.get("sample"))  # a verified copy shows its training image
        timg = None if train is None else train.get(key, e.get("train_id"))
        items.append({
            "sample": shown_as(generations, e.get("sample")),
            # the prompt it was generated from: which caption emits this training image (a caption of the
            # training data itself, so not shown redacted)
            "prompt": None if redact else named_class(samples.prompt_of(e.get("sample")), names),
            "gen_uri": image_uri(gen, max_side=PAIR_SIDE),
            # redacted: a file name may name a person; the position in the training set does not
            "train_key": _position(e.get("train_id")) if redact else key if key is not None else e.get("train_id"),
            "train_id": None if redact else e.get("train_id"),
            "train_uri": image_uri(timg, max_side=PAIR_SIDE),
            "l2": e.get("l2"),
            "ratio": e.get("ratio"),
            "eidetic_k": e.get("eidetic_k"),
            "duplicates": n_dup,
            "n_matching": e.get("n_matching_samples"),
            "clique_generations": in_cliques,
            "offset": e.get("offset") if train_map and isinstance(e.get("offset"), list) else None,
        })
    if samples.error:  # known once the shards were read, above
        notes.append(f"Some generations are shown by id: {samples.error}.")
    return {"items": items, "total": len(pairs), "notes": notes, "redacted": redact, "from_extract": medoids_only,
            "train_map": train_map,
            # the training data was rewritten since verify read it: said at the top, since every number is of the old
            "data_changed": str(train.spec) if train is not None and train.changed else None}


def cliques(rs: ResultSet, *, redact: bool = False) -> dict[str, Any] | None:
    """Flagged prompts (largest clique ≥ min size), ranked by mean internal distance, with thumbnails.
    With ``redact`` neither thumbnails (a clique's members are candidate copies of a training image)
    nor prompts (captions of the training data): each prompt shows as its index."""
    st = rs.first("extract")
    if st is None:
        return None
    prompts = records(st.result, "members", preferred=("prompts", "groups", "cliques", "results"))
    # The black-box unconditional mode reports only cliques of at least --min-clique: all flagged.
    unconditional = st.result.get("mode") == "unconditional" or (prompts and not any("flagged" in p for p in prompts))
    flagged = prompts if unconditional else [p for p in prompts if p.get("flagged")]
    flagged.sort(key=lambda p: (p.get("mean_distance") is None, p.get("mean_distance") or 0.0))
    linked = not rs.holds(st.path)  # another extract folder on this machine: its numbers, none of its images
    samples = SampleImages(None) if linked or redact else sample_images(st, rs)
    classes = st.result.get("prompt_kind") == "class"
    one, many = prompt_words(st.result.get("prompt_kind"))
    names = None if redact else class_names(rs)
    generations = generation_names(rs) if redact else {}  # as the verified pairs name them
    items = []
    for p in flagged[:MAX_PROMPTS]:
        members = [str(m) for m in (p.get("members") or [])]
        medoid = p.get("medoid")
        order = ([str(medoid)] if medoid is not None and str(medoid) in members else []) + [m for m in members if m != str(medoid)]
        thumbs = [{"id": shown_as(generations, m), "uri": None if redact else image_uri(samples.get(m), max_side=THUMB),
                   "medoid": m == str(medoid)} for m in order[:MAX_MEMBERS]]
        items.append({
            # a caption of the training data; a class index is not one
            "prompt": None if redact and not classes else named_class(p.get("prompt"), names),
            "prompt_index": p.get("prompt_index"),
            "n_generations": p.get("n_generations", p.get("component_size")),
            "largest_clique": p.get("largest_clique", p.get("size", len(members))),
            "mean_distance": p.get("mean_distance"),
            "medoid": shown_as(generations, medoid),
            "members": thumbs,
            "more": max(0, len(order) - MAX_MEMBERS),
            "bound_hit": bool(p.get("bound_hit") or p.get("search_bound_hit")),
            "truncated": bool(p.get("truncated")),
        })
    notes = []
    short = st.result.get("n_prompts_below_min_clique")
    if isinstance(short, int) and short:
        notes.append(f"{short:,} of the {len(prompts):,} {many} {'has' if short == 1 else 'have'} fewer generations "
                     f"than the minimum clique ({st.settings.get('min_clique')}): "
                     f"{'it could not be flagged, whatever it emits' if short == 1 else 'they could not be flagged, whatever they emit'}.")
    if unconditional:
        notes += _search_limits(st, prompts)
    if items and linked and not redact:
        notes.append("Clique members are shown by id: " + LINKED.format("extract") + ".")
    elif items and samples.path is None and not redact:
        notes.append("The sample store was not found; clique members are shown by id.")
    if items and samples.refusal:
        notes.append(f"Clique members are shown by id: {samples.refusal}.")
    if samples.error:  # known once the shards were read, above
        notes.append(f"Some clique members are shown by id: {samples.error}.")
    settings = st.settings
    return {
        "items": items,
        "unconditional": bool(unconditional),
        "classes": classes,  # the prompts are class indices
        "n_prompts": len(prompts),
        "n_flagged": len(flagged),
        "max_members": MAX_MEMBERS,
        "edge_threshold": settings.get("edge_threshold"),
        "min_clique": settings.get("min_clique"),
        "grid": settings.get("grid"),  # tiles per side of the tiled ℓ2
        "notes": notes,
        "calibration": None if unconditional else calibration(st),
    }


def _search_limits(st: Stage, groups: list[dict[str, Any]]) -> list[str]:
    """Notes on what the unconditional search may have missed (extract's blackbox limits): components
    cut to --max-component (``n_truncated_components``; older results: the components of the cliques
    marked ``truncated``) and saturated generations (``n_saturated``)."""
    notes = []
    cut = count(st.result.get("n_truncated_components"))
    if cut is None:
        cut = len({str(g.get("component")) for g in groups if g.get("truncated")})
    limit = st.settings.get("max_component")
    limit = f"{limit:,}" if count(limit) is not None else "--max-component"
    if cut:
        one = cut == 1
        notes.append(f"{cut:,} connected component{'' if one else 's'} larger than --max-component ({limit}) "
                     f"{'was' if one else 'were'} cut to {'its' if one else 'their'} {limit} best-connected "
                     "generations: cliques among the generations cut away may be missed (raise --max-component to "
                     f"analyse {'it' if one else 'them'} in full).")
    sat = count(st.result.get("n_saturated"))
    if sat:
        k = count(st.result.get("k_neighbors"))
        nearest = f"all {k:,} nearest neighbours" if k is not None else "all their nearest neighbours"
        notes.append(f"{sat:,} generation{' is' if sat == 1 else 's are'} saturated ({nearest} within the edge threshold): "
                     "near-duplicates beyond them may be missed, so cliques may be larger, or more, than shown (raise "
                     "`extract --k-neighbors`).")
    return notes


def calibration(st: Stage) -> dict[str, Any] | None:
    """The ``extract --calibrate`` sweep as a table: a row per edge threshold, a cell per minimum clique
    (precision, recall, flagged prompts), the best F1 (ties as extract's line picks it) and the run's
    own settings marked; None without a calibration."""
    found = calibration_points(st)
    if found is None:
        return None
    points, cal = found
    best = best_point(points)
    own = (st.settings.get("edge_threshold"), st.settings.get("min_clique"))
    cells = {(p.edge_threshold, p.min_clique): p for p in points}
    sizes = sorted({p.min_clique for p in points})
    rows = []
    for t in sorted({p.edge_threshold for p in points}):
        row = []
        for m in sizes:
            p = cells.get((t, m))
            row.append(None if p is None else {"precision": p.precision, "recall": p.recall, "flagged": p.flagged,
                                               "best": p is best, "current": (t, m) == own})
        rows.append({"edge_threshold": t, "cells": row})
    return {"rows": rows, "sizes": sizes, "n_memorized": count(cal.get("n_memorized")),
            "unknown_prompts": count(cal.get("unknown_prompts")), "best": best is not None}
