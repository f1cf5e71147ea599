"""The book's small Sphinx extension (``sphinx.extra_extensions: [forgetting.book]`` in ``_config.yml``;
``forgetting.book`` re-exports :func:`setup`).

With the thebe launch button off it drops sphinx-thebe's scripts (Jupyter Book always loads
sphinx-thebe, which adds its configuration script twice: a console SyntaxError on every page), and
it gives pydata-sphinx-theme a default colour mode (without one it logs a console error), and it
registers the bibliography's author-year style (:mod:`forgetting.book.bibliography`), and points each
chapter's Colab launch button at its rendered notebook in ``notebooks/``
(:func:`forgetting.book.colab.retarget_launch_buttons`).
"""

from __future__ import annotations


def _drop_thebe(app) -> None:
    """Jupyter Book always loads sphinx-thebe, which adds its configuration script twice (a console
    SyntaxError on every page) and names a CDN; with the thebe launch button off it does nothing."""
    theme_options = app.config.html_theme_options or {}
    if (theme_options.get("launch_buttons") or {}).get("thebe"):
        return
    for event in ("env-before-read-docs", "doctree-resolved"):
        for listener in list(app.events.listeners.get(event, [])):
            if getattr(listener.handler, "__module__", "").startswith("sphinx_thebe"):
                app.disconnect(listener.id)


def _theme_defaults(app, config) -> None:
    # pydata-sphinx-theme logs a console error when no default colour mode is configured
    context = dict(config.html_context or {})
    context.setdefault("default_mode", "light")
    config.html_context = context


def setup(app) -> dict:
    """Sphinx extension for the book: no sphinx-thebe scripts when thebe is off; a default colour mode."""
    from forgetting.book.bibliography import register  # deferred: pybtex loads only in a Sphinx build
    from forgetting.book.colab import retarget_launch_buttons  # deferred: as above, Sphinx-only

    register()  # the bibliography's author-year labels (bibtex_default_style: authoryear)
    app.connect("config-inited", _theme_defaults)
    app.connect("builder-inited", _drop_thebe)
    app.connect("html-page-context", retarget_launch_buttons, priority=502)  # after the theme's (501)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


__all__ = ["setup"]
