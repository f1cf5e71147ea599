"""The book's JavaScript, vendored from npm so that the built pages load nothing from a CDN.

:func:`vendor_assets` (``make vendor``) puts MathJax 3, require.js and the ipywidgets HTML manager
(the versions in :data:`VENDORED_NPM`) under ``_vendor/html/vendor/`` (:func:`vendor_dir`), with
``widgets-config.js``, the glue between the widget manager and the page. ``html_extra_path`` in
``_config.yml`` copies that folder to the HTML root. (The vega bundle is not vendored from npm:
:func:`forgetting.viz.offline.write_bundle` writes it into ``_static/`` at build time.)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

from forgetting import paths
from forgetting.book.config import BookBuildError

#: npm packages vendored under ``_vendor/html/vendor/`` (MathJax 3, not 4, because Sphinx 7.4 configures v3).
VENDORED_NPM = {"mathjax": "3.2.2", "requirejs": "2.3.8", "@jupyter-widgets/html-manager": "1.0.15"}
VENDOR_LAYOUT = 4  # bump when the files written under _vendor/html/vendor/ change


def vendor_dir(root: str | Path | None = None) -> Path:
    """Where the npm assets live: ``_vendor/html`` (its content is copied to the HTML root)."""
    return (Path(root) if root is not None else paths.REPO_ROOT) / "_vendor" / "html"


def vendor_assets(root: str | Path | None = None, *, force: bool = False) -> Path:
    """Vendor MathJax 3, require.js and @jupyter-widgets/html-manager into ``_vendor/html/vendor/``.

    Uses ``npm pack`` (tarballs only, no dependency tree) for the versions in ``VENDORED_NPM``;
    a no-op when the stamp says they are there. Layout::

        _vendor/html/vendor/mathjax/tex-mml-chtml.js (+ the rest of MathJax's es5/ folder)
        _vendor/html/vendor/require.js
        _vendor/html/vendor/widgets-config.js (widget manager's font paths, MathJax 2 -> 3 shim)
        _vendor/html/vendor/html-manager/embed-amd.js (+ fonts)
    """
    target = vendor_dir(root)
    stamp = target / "vendor" / "VENDORED.json"
    wanted = {"packages": VENDORED_NPM, "layout": VENDOR_LAYOUT}
    if not force and stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return target
    npm = shutil.which("npm")
    if npm is None:
        raise BookBuildError(
            "the book's JavaScript (MathJax, require.js, the widget manager) is not vendored and npm is "
            "missing: install Node.js/npm (e.g. `apt-get install -y npm`) and run `make vendor`"
        )
    packs = target.parent / "npm"
    packs.mkdir(parents=True, exist_ok=True)
    specs = [f"{name}@{version}" for name, version in VENDORED_NPM.items()]
    proc = subprocess.run([npm, "pack", *specs, "--pack-destination", str(packs), "--json"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise BookBuildError(f"npm pack {' '.join(specs)} failed:\n{proc.stderr.strip()[-2000:]}")
    files = {entry["name"]: packs / entry["filename"] for entry in json.loads(proc.stdout)}
    out = target / "vendor"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    _extract(files["mathjax"], "package/es5/", out / "mathjax")
    _extract(files["requirejs"], "package/require.js", out / "require.js")
    _extract(files["@jupyter-widgets/html-manager"], "package/dist/", out / "html-manager", skip=(".map",))
    for name, tgz in files.items():
        for lic in ("package/LICENSE", "package/LICENSE.txt", "package/LICENSE.md"):
            if _extract(tgz, lic, out / "licenses" / f"{name.replace('/', '__')}-LICENSE", missing_ok=True):
                break
    (out / "widgets-config.js").write_text(_WIDGETS_CONFIG, encoding="utf-8")
    stamp.write_text(json.dumps(wanted, indent=2) + "\n")
    return target


# Loaded between require.js and embed-amd.js (nb_ipywidgets_js in _config.yml).
_WIDGETS_CONFIG = """\
/* forgetting book: glue between the vendored @jupyter-widgets/html-manager and this page (no CDN). */
(function () {
  // the widget manager's AMD modules find their fonts relative to their require.js module URL,
  // by default beside the page ("chapters/@jupyter-widgets/..."): point them at the vendored copy
  var here = document.currentScript.src.replace(/[^/]*$/, "");
  window.requirejs.config({paths: {"@jupyter-widgets/html-manager/dist": here + "html-manager"}});
  // ipywidgets 8 typesets descriptions with the MathJax 2 API (MathJax.Hub.Queue); the book runs
  // MathJax 3, which has typesetPromise instead: translate, or every widget throws
  function queue(job) {
    var el = Array.isArray(job) ? job[2] : null, mj = window.MathJax;
    if (!el || !mj) return;
    if (mj.typesetPromise) { mj.typesetPromise([el]); }
    else if (mj.startup && mj.startup.promise) { mj.startup.promise.then(function () { window.MathJax.typesetPromise([el]); }); }
  }
  function install() { if (window.MathJax && !window.MathJax.Hub) { window.MathJax.Hub = {Queue: queue}; } }
  install();
  document.addEventListener("DOMContentLoaded", install);  // MathJax 3 replaces its global when it loads
})();
"""


def _extract(tgz: Path, prefix: str, dest: Path, *, skip: tuple[str, ...] = (), missing_ok: bool = False) -> bool:
    """Copy the members of ``tgz`` under ``prefix`` (a folder ending in "/" or one file) to ``dest``."""
    found = False
    with tarfile.open(tgz, "r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile() or member.name.endswith(skip):
                continue
            if prefix.endswith("/"):
                if not member.name.startswith(prefix):
                    continue
                rel = Path(member.name[len(prefix):])
                if ".." in rel.parts:
                    continue
                path = dest / rel
            elif member.name == prefix:
                path = dest
            else:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst)
            found = True
    if not found and not missing_ok:
        raise BookBuildError(f"{tgz.name}: nothing under {prefix!r}")
    return found


__all__ = ["VENDORED_NPM", "VENDOR_LAYOUT", "vendor_assets", "vendor_dir"]
