"""Altair charts that render with no network: in the static book, in Jupyter and in Colab.

Altair's default renderer loads vega, vega-lite and vega-embed from a CDN, so nothing renders in a
book read offline. Here:

- :func:`wrapped_bundle` is vl-convert's single-file bundle of vega-embed, vega-lite and vega, wrapped
  in a function scope (its top-level ``const _`` collides with Sphinx's global ``_``: a SyntaxError
  and nothing renders). :func:`write_bundle` writes it into the book's ``_static/`` at build time;
  Jupyter Book 1.x loads every ``.js`` under ``html_static_path`` in the ``<head>`` of every page,
  so ``window.vegaEmbed`` exists before any chart's inline script runs.
- :func:`enable` registers and enables the ``"forgetting"`` Altair renderer: each chart becomes a
  ``<div>`` plus a call to the global ``vegaEmbed`` with the spec (data embedded). Only where that
  global is missing (a live Jupyter or Colab kernel, which have the network) does the script load
  vega-embed from the CDN, pinned to the versions this Altair emits.
- Altair 5 and 6 both work: :func:`display_module` picks ``altair.vegalite.v5`` or ``v6`` from
  ``alt.SCHEMA_VERSION`` (Colab ships Altair 5; the lock pins 6).
- In the kernels the book build executes chapters in (``STATIC_ENV`` set by ``forgetting.book.KERNEL_ENV``)
  the charts are for the static book, which always carries the bundle: their scripts name no CDN,
  and say so on the page if the bundle did not load.
"""

from __future__ import annotations

import importlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

import altair as alt

RENDERER_NAME = "forgetting"
BUNDLE_NAME = "forgetting-vega.js"

#: Embed options for vega-embed. SVG output (crisp text, inspectable marks), export actions only (no links that
#: leave the page such as "Open in Vega Editor").
EMBED_OPTIONS: dict[str, Any] = {
    "renderer": "svg",
    "actions": {"export": True, "source": False, "compiled": False, "editor": False},
}

_CDN = "https://cdn.jsdelivr.net/npm/"
#: Environment variable set to "1" by the book build for the kernels that execute chapters.
STATIC_ENV = "FORGETTING_STATIC_BOOK"


def display_module():
    """The ``altair.vegalite.v<major>.display`` module of the installed Altair (``v5`` in Altair 5, ``v6`` in 6).

    Picked from ``alt.SCHEMA_VERSION`` (``"v5.20.1"``, ``"v6.4.1"``): Colab images ship Altair 5, the lock
    pins Altair 6, and each has only its own ``vegalite/v<major>`` package.
    """
    major = alt.SCHEMA_VERSION.lstrip("v").split(".", 1)[0]
    try:
        return importlib.import_module(f"altair.vegalite.v{major}.display")
    except ModuleNotFoundError as err:
        raise ImportError(
            f"altair {alt.__version__} (Vega-Lite schema {alt.SCHEMA_VERSION}) has no altair.vegalite.v{major}.display; "
            "the forgetting charts support Altair 5.4+ and 6"
        ) from err


def _versions() -> dict[str, str]:
    """The vega, vega-lite and vega-embed versions the installed Altair emits (for the CDN fallback)."""
    display = display_module()
    return {
        "vega": display.VEGA_VERSION,
        "vega-lite": display.VEGALITE_VERSION,
        "vega-embed": display.VEGAEMBED_VERSION,
    }


def wrapped_bundle() -> str:
    """vl-convert's bundle of vega-embed + vega-lite + vega, safe to load next to Sphinx's scripts.

    The bundle sets ``window.vegaEmbed``, ``window.vega`` and ``window.vegaLite``; wrapping it in a
    function keeps its other top-level names (``_`` among them) out of the global scope.
    """
    import vl_convert

    vl_version = alt.SCHEMA_VERSION.lstrip("v").rsplit(".", 1)[0]  # "6.4.1" -> "6.4"
    try:
        bundle = vl_convert.javascript_bundle(vl_version=vl_version)
    except ValueError:  # this vl-convert does not know Altair's minor version: take its latest
        bundle = vl_convert.javascript_bundle()
    header = (
        f"/* vega-embed {vl_convert.get_vega_embed_version()}, vega {vl_convert.get_vega_version()}, "
        f"vega-lite {vl_version}: bundled by vl-convert {vl_convert.__version__} for the forgetting book.\n"
        "   Wrapped in a function scope: the bundle's top-level `_` would collide with Sphinx's. */\n"
    )
    return header + "(function () {\n" + bundle + "\n}).call(window);\n"


def write_bundle(static_dir: str | Path) -> Path:
    """Write :func:`wrapped_bundle` to ``static_dir/forgetting-vega.js`` (only if its content changed)."""
    static_dir = Path(static_dir)
    static_dir.mkdir(parents=True, exist_ok=True)
    path = static_dir / BUNDLE_NAME
    text = wrapped_bundle()
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        tmp = path.with_suffix(".js.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return path


_SCRIPT = """\
(function () {
  var el = document.getElementById(%(id)s);
  var spec = %(spec)s;
  var opt = %(opt)s;
  function show(embed) {
    embed(el, spec, opt).catch(function (err) {
      el.innerHTML = '<pre class="forgetting-vega-error">chart error: ' + String(err).replace(/</g, '&lt;') + '</pre>';
    });
  }
  function fromCdn() {  // a live kernel (Jupyter, Colab): no bundle on the page, the network is there
    var urls = %(urls)s;
    if (urls === null) {  // made for the static book, which carries the bundle: no CDN to fall back on
      el.textContent = "chart not drawn: the book's bundle forgetting-vega.js did not load";
      return;
    }
    if (typeof window.define === "function" && window.define.amd) {  // classic Jupyter: require.js
      var paths = {};
      Object.keys(urls).forEach(function (k) { paths[k] = urls[k] + "?noext"; });
      window.requirejs.config({paths: paths});
      window.requirejs(["vega-embed"], show);
      return;
    }
    var order = ["vega", "vega-lite", "vega-embed"], i = 0;
    (function next() {
      if (i === order.length) { show(window.vegaEmbed); return; }
      var s = document.createElement("script");
      s.src = urls[order[i++]];
      s.onload = next;
      s.onerror = function () { el.textContent = "could not load vega-embed from " + s.src; };
      document.head.appendChild(s);
    })();
  }
  if (typeof window.vegaEmbed === "function") { show(window.vegaEmbed); }
  else if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", function () {
      if (typeof window.vegaEmbed === "function") { show(window.vegaEmbed); } else { fromCdn(); }
    });
  } else { fromCdn(); }
})();
"""


def chart_html(spec: dict, embed_options: dict | None = None, output_div: str | None = None) -> str:
    """The HTML of one chart: a ``<div>`` and a script calling the global ``vegaEmbed``.

    ``spec`` is a Vega-Lite dict with its data inline (``chart.to_dict()``). The script falls back to
    the CDN where ``vegaEmbed`` is missing, unless ``STATIC_ENV`` is "1" (a chart for the static book).
    """
    div_id = output_div or f"forgetting-vega-{uuid.uuid4().hex[:12]}"
    opt = {**EMBED_OPTIONS, **(embed_options or {})}
    if os.environ.get(STATIC_ENV) == "1":
        urls = None
    else:
        urls = {name: f"{_CDN}{name}@{version}" for name, version in _versions().items()}

    def dumps(obj: Any) -> str:  # JSON that cannot close the <script> element it sits in
        return json.dumps(obj, separators=(",", ":")).replace("</", "<\\/")

    script = _SCRIPT % {"id": dumps(div_id), "spec": dumps(spec), "opt": dumps(opt), "urls": dumps(urls)}
    return (
        f'<div id="{div_id}" class="forgetting-vega"></div>\n'
        f'<script type="text/javascript">\n{script}</script>'
    )


def renderer(spec: dict, **metadata: Any) -> dict[str, str]:
    """Altair renderer: a text/html mimebundle made by :func:`chart_html`."""
    return {"text/html": chart_html(spec, metadata.get("embed_options"), metadata.get("output_div"))}


def enable(**embed_options: Any) -> None:
    """Register and enable the offline renderer (idempotent). Options go to vega-embed.

    >>> from forgetting.viz import offline
    >>> offline.enable()            # charts in this kernel now render offline in the built book
    """
    if RENDERER_NAME not in alt.renderers.names():
        alt.renderers.register(RENDERER_NAME, renderer)
    if embed_options:
        alt.renderers.enable(RENDERER_NAME, embed_options=embed_options)
    else:
        alt.renderers.enable(RENDERER_NAME)
