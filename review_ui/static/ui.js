// Shared helpers of the review UI's pages (our own code; nothing from a CDN).
// uiPost(url, params): a same-origin POST that carries the session's CSRF token in the
// X-CSRF-Token header, for scripts that act without submitting a form.
(function () {
  "use strict";
  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }
  window.uiPost = function (url, params) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: {
        "X-CSRF-Token": csrfToken(),
        "Content-Type": "application/x-www-form-urlencoded",
      },
      body: new URLSearchParams(params || {}).toString(),
    });
  };
})();
