// Keyboard of the wafer view: each key submits the button that carries it in data-key
// (1-9 relabel, Enter confirm, U unusable, J/K next/previous), so keys and mouse take the
// same path through the server's forms. "?" opens the key list.
(function () {
  "use strict";
  var sent = false;

  function typing(target) {
    var tag = target && target.tagName;
    return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || target.isContentEditable;
  }

  function keyOf(event) {
    if (event.key === "Enter") return "Enter";
    return event.key.length === 1 ? event.key.toLowerCase() : null;
  }

  function onKey(event) {
    if (event.ctrlKey || event.metaKey || event.altKey || typing(event.target)) return;
    var dialog = document.getElementById("keys-dialog");
    if (dialog && dialog.open) return; // the dialog has its own keys (Escape closes it)
    if (event.key === "?") {
      event.preventDefault();
      dialog.showModal();
      return;
    }
    var key = keyOf(event);
    if (key === null) return;
    // Enter on a focused button or link keeps its native meaning.
    if (key === "Enter" && event.target.closest && event.target.closest("button, a")) return;
    var button = document.querySelector('button[data-key="' + key + '"]');
    if (!button || button.disabled) return;
    event.preventDefault();
    if (sent) return; // one verdict per page: a held key must not judge the next wafer
    sent = true;
    button.classList.add("pressed");
    button.form.requestSubmit(button);
  }

  // The lot's other wafers, the heatmap and similar wafers come after the page is shown: the
  // next item never waits for them.
  function loadFragment(id) {
    var section = document.getElementById(id);
    if (!section || !section.dataset.src) return;
    fetch(section.dataset.src, { credentials: "same-origin" })
      .then(function (response) {
        // A redirect means the session ended: keep what the page shows.
        if (!response.ok || response.redirected) return null;
        return response.text();
      })
      .then(function (html) {
        if (html !== null) section.innerHTML = html;
      })
      .catch(function () { /* offline or stopped: the page's own text stays */ });
  }

  function loadFragments() {
    loadFragment("novelty");
    loadFragment("lot-wafers");
  }

  document.addEventListener("keydown", onKey);
  document.addEventListener("DOMContentLoaded", function () {
    var help = document.getElementById("show-keys");
    var dialog = document.getElementById("keys-dialog");
    if (help && dialog) {
      help.addEventListener("click", function () { dialog.showModal(); });
    }
    // Tests and tools wait for this before pressing keys.
    document.documentElement.dataset.keys = "ready";
  });
  window.addEventListener("load", function () { setTimeout(loadFragments, 0); });
  // Back/forward cache restores the page with sent=true; allow keys again.
  window.addEventListener("pageshow", function () { sent = false; });
})();
