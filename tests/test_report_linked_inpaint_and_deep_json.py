"""Two behaviours of the report kept through a simplification of its code.

A linked inpaint stage folder (a link out of the reported folder) embeds no grid and says so without a
count, so it is not walked for grid files at all. ``parse_json`` (scores files, loss logs, train_ids.json)
reads through :func:`diffaudit.core.io.loads_json`: a document nested deeper than Python's parser follows
and one nested past the report's :data:`~diffaudit.report.results.MAX_DEPTH` are both a ValueError naming
the file, never a RecursionError.
"""

from __future__ import annotations

import pytest

from diffaudit.core.io import write_json_atomic
from diffaudit.report import render_html
from diffaudit.report.results import MAX_DEPTH, parse_json
from test_report import Page, _envelope


def test_a_linked_inpaint_folder_is_not_walked_for_grids(tmp_path, monkeypatch):
    import diffaudit.report.view_misc as view_misc

    elsewhere = tmp_path / "elsewhere" / "inpaint"
    (elsewhere / "grids").mkdir(parents=True)
    (elsewhere / "grids" / "t0.png").write_bytes(b"not read")
    write_json_atomic(elsewhere / "result.json", _envelope(
        "inpaint", {"mask": "left", "top_k": 1}, {"seed": 0}, top_k=1,
        targets=[{"id": "t0", "member": True, "best_l2": 0.1, "mean_topk_l2": 0.1, "grid": "grids/t0.png"}]))
    received = tmp_path / "received"
    received.mkdir()
    write_json_atomic(received / "audit.json", {"settings": {}})
    (received / "inpaint").symlink_to(elsewhere, target_is_directory=True)

    def no_walk(*args):
        raise AssertionError("a linked inpaint folder was walked for grid files")

    monkeypatch.setattr(view_misc, "_grid_files", no_walk)
    html = render_html(received)
    text = " ".join("".join(Page(html).text).split())
    assert "The inpaint folder is a link out of the reported folder: its grids are not embedded" in text
    assert not Page(html).images("inpaint")


@pytest.mark.parametrize("text, said", [
    ("[" * 200_000 + "]" * 200_000, "more levels of brackets than Python's parser follows"),
    ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), f"more than {MAX_DEPTH}"),
])
def test_parse_json_refuses_a_document_nested_too_deeply_by_name(text, said):
    with pytest.raises(ValueError, match="scores.json is nested too deeply to be read as JSON") as caught:
        parse_json(text, "run/scores.json")
    assert said in str(caught.value)
    assert parse_json("[" * MAX_DEPTH + "]" * MAX_DEPTH, "ok.json") is not None
