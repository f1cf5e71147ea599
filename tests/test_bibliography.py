"""The bibliography's author-year labels (forgetting.book.bibliography) on the book's own entries."""

from __future__ import annotations

from pybtex.database import parse_file

from forgetting import paths
from forgetting.book.bibliography import entry_label, register


def test_labels_of_the_books_entries():
    bib = parse_file(str(paths.REPO_ROOT / "chapters" / "references.bib"))
    labels = {key: entry_label(entry) for key, entry in bib.entries.items()}
    assert labels["ramasesh2021anatomy"] == "Ramasesh et al. 2021"
    assert labels["mccloskey1989catastrophic"] == "McCloskey and Cohen 1989"
    assert labels["mechanistic2026"] == "Imanov 2026"
    assert all(not label[0].isdigit() for label in labels.values())  # never a bare number


def test_registered_style_labels_repeated_author_years_apart():
    from pybtex.database import BibliographyData, Entry, Person
    from pybtex.plugin import find_plugin

    register()
    register()  # idempotent
    entries = []
    for key in ("a", "b"):
        e = Entry("article", fields={"title": key, "year": "2020"})
        e.persons["author"] = [Person("Smith, Ann")]
        e.key = key
        entries.append(e)
    BibliographyData(entries={e.key: e for e in entries})
    labels = list(find_plugin("pybtex.style.labels", "authoryear")().format_labels(entries))
    assert labels == ["Smith 2020a", "Smith 2020b"]
    assert find_plugin("pybtex.style.formatting", "authoryear")().label_style is not None
