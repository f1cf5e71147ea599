"""The book's bibliography style: entries labelled by author and year, as the text cites them.

sphinxcontrib-bibtex cites author–year in the text (``bibtex_reference_style: author_year``) but
labels the list with the formatting style's labels, which are numbers for ``plain``. This module
registers a pybtex label style ``authoryear`` ("Ramasesh et al. 2021", "McCloskey and Cohen 1989",
"Kirkpatrick et al. 2017") and a formatting style ``authoryear`` (pybtex's ``plain`` with those
labels); ``_config.yml`` selects it with ``bibtex_default_style: authoryear``. Registration happens
when the book's Sphinx extension is set up (:func:`register`), before the bibliography is read.
"""

from __future__ import annotations

from collections import Counter


def entry_label(entry) -> str:
    """``"Surname YEAR"``, ``"A and B YEAR"`` or ``"A et al. YEAR"`` from a pybtex entry's authors;
    without authors, the entry's ``key`` field or its title's first words."""
    year = entry.fields.get("year", "n.d.")
    people = entry.persons.get("author", [])
    surnames = [" ".join(p.prelast_names + p.last_names) for p in people]
    if not surnames:
        who = entry.fields.get("key") or " ".join(str(entry.fields.get("title", "anonymous")).split()[:3])
    elif len(surnames) == 1:
        who = surnames[0]
    elif len(surnames) == 2:
        who = f"{surnames[0]} and {surnames[1]}"
    else:
        who = f"{surnames[0]} et al."
    return f"{who} {year}".replace("{", "").replace("}", "")


def register() -> None:
    """Register the ``authoryear`` label and formatting styles with pybtex (idempotent)."""
    from pybtex.plugin import PluginNotFound, find_plugin, register_plugin
    from pybtex.style.formatting.plain import Style as PlainStyle
    from pybtex.style.labels import BaseLabelStyle

    class AuthorYearLabels(BaseLabelStyle):
        def format_labels(self, sorted_entries):
            labels = [entry_label(e) for e in sorted_entries]
            seen: Counter = Counter()
            repeated = {label for label, n in Counter(labels).items() if n > 1}
            for label in labels:  # two works of one author and year: 2021a, 2021b
                if label in repeated:
                    seen[label] += 1
                    label = f"{label}{chr(ord('a') + seen[label] - 1)}"
                yield label

    class AuthorYearStyle(PlainStyle):
        default_label_style = "authoryear"

    try:
        find_plugin("pybtex.style.labels", "authoryear")
    except PluginNotFound:
        register_plugin("pybtex.style.labels", "authoryear", AuthorYearLabels)
        register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)
