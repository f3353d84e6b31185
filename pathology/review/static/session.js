// hccbio review: the signed-in reviewer's sign-out button (every page).
(function () {
  "use strict";
  var button = document.getElementById("sign-out");
  if (!button) { return; }
  var meta = document.querySelector("meta[name='csrf-token']");
  button.addEventListener("click", function () {
    fetch("/api/logout", {
      method: "POST",
      headers: { "X-CSRF-Token": meta ? meta.getAttribute("content") : "" },
      credentials: "same-origin"
    }).then(function () { window.location.assign("/login"); });
  });
})();
