"""The README's and RESULTS.md's result tables are their generators' output on the committed results files."""
import json

import pytest

from gmm_triton.tools import tables


def test_documents_match_their_results_files():
    for doc in tables.DOCUMENTS:
        text = (tables.ROOT / doc).read_text(encoding="utf-8")
        assert tables.regenerate(text) == text, f"{doc} differs from its results files: run `make tables`"


def test_every_table_is_used_and_its_results_file_is_committed():
    used = {n for doc in tables.DOCUMENTS for n in tables.blocks((tables.ROOT / doc).read_text(encoding="utf-8"))}
    assert used == set(tables.TABLES)
    for path, _, _ in tables.TABLES.values():
        results = json.loads((tables.ROOT / path).read_text(encoding="utf-8"))
        assert results.get("commit"), f"{path} does not record the commit it was run at"
        assert results.get("settings"), f"{path} does not record its settings"


def test_an_edited_number_is_stale(tmp_path):
    """A hand edit inside a block is undone by the generator, so the check above fails on it."""
    readme = (tables.ROOT / "README.md").read_text(encoding="utf-8")
    name = tables.blocks(readme)[0]
    body = tables.render(name)
    edited = readme.replace(body, body.replace("|", "| 9", 1), 1)
    assert edited != readme and tables.regenerate(edited) == readme
    with pytest.raises(KeyError, match="does not know"):
        tables.regenerate("<!-- table:nope (x) -->\nold\n<!-- /table:nope -->\n")
