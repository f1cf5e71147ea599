/* The search page opened from disk (file://): browsers do not let a page read the book's other files,
   so Sphinx lists the matching pages without their excerpts. Say so, and how to get them, above the
   results. Served over http(s) (Read the Docs, `python -m http.server`), nothing is added. */
document.addEventListener("DOMContentLoaded", function () {
  if (window.location.protocol !== "file:") return;
  var results = document.getElementById("search-results");
  if (!results) return;  // not the search page
  var note = document.createElement("p");
  note.className = "forgetting-search-note admonition note";
  note.textContent = "Opened from disk, this page lists the matching pages without excerpts: the browser " +
    "does not let a page read the book's other files. To see excerpts, serve the book " +
    "(python -m http.server --directory _build/html) and open http://localhost:8000/search.html.";
  results.parentNode.insertBefore(note, results);
});
