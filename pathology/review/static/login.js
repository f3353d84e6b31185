// hccbio review: the sign-in form posts JSON to /api/login; the session cookie it sets is
// HttpOnly (no script reads it), and each page carries its CSRF token.
(function () {
  "use strict";
  var form = document.getElementById("login-form");
  if (!form) { return; }
  var message = document.getElementById("login-message");
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    message.textContent = "signing in ...";
    fetch("/api/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      credentials: "same-origin",
      body: JSON.stringify({
        user: document.getElementById("login-user").value,
        password: document.getElementById("login-password").value
      })
    }).then(function (response) {
      return response.json().then(function (data) { return [response.ok, data]; });
    }).then(function (result) {
      if (!result[0]) {
        message.textContent = "not signed in: " + result[1].error;
        document.getElementById("login-password").value = "";
        return;
      }
      message.textContent = "signed in as " + result[1].user;
      window.location.assign(form.getAttribute("data-next") || "/");
    }).catch(function (error) { message.textContent = "not signed in: " + error; });
  });
})();
