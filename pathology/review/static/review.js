// hccbio review: OpenSeadragon viewer with overlay layers, and the sign-off form.
(function () {
  "use strict";
  var holder = document.getElementById("viewer-config");
  if (!holder) { return; }
  var config = JSON.parse(holder.getAttribute("data-config"));
  var viewer = OpenSeadragon({
    id: "viewer",
    prefixUrl: config.prefix,
    tileSources: config.dzi,
    showNavigator: true,
    imageSmoothingEnabled: false,
    crossOriginPolicy: false,
    drawer: "canvas"
  });
  var layers = {};
  viewer.addHandler("open", function () {
    Object.keys(config.layers).forEach(function (name) {
      var layer = config.layers[name];
      viewer.addTiledImage({
        tileSource: { type: "image", url: layer.url, buildPyramid: false },
        x: 0, y: 0, width: layer.width, opacity: 0,
        success: function (event) { layers[name] = event.item; }
      });
    });
  });
  document.querySelectorAll(".layer-toggle").forEach(function (box) {
    box.addEventListener("change", function () {
      var item = layers[box.getAttribute("data-layer")];
      if (item) { item.setOpacity(box.checked ? 0.85 : 0); }
    });
  });
  window.hccbioViewer = viewer;
  window.hccbioLayers = layers;

  // Multichannel slides: per-channel toggle, colour and display maximum. The choice travels
  // in the tile URLs (ch=index-rrggbb-max,...); the base image is replaced in place so that
  // the overlay layers above it stay.
  var channelRows = Array.prototype.slice.call(document.querySelectorAll("#channels .channel"));
  var defaults = channelRows.map(function (row) {
    return {
      shown: row.querySelector(".channel-toggle").checked,
      color: row.querySelector(".channel-color").value,
      max: row.querySelector(".channel-max").value
    };
  });
  function channelQuery() {
    return channelRows.filter(function (row) {
      return row.querySelector(".channel-toggle").checked;
    }).map(function (row) {
      return [row.getAttribute("data-index"),
              row.querySelector(".channel-color").value.replace("#", ""),
              Math.max(Number(row.querySelector(".channel-max").value), 1e-6).toFixed(6)
             ].join("-");
    }).join(",");
  }
  var pending = null;
  function redraw() {
    if (pending) { window.clearTimeout(pending); }
    pending = window.setTimeout(function () {
      pending = null;
      var query = channelQuery();
      window.hccbioChannels = query;
      viewer.addTiledImage({
        tileSource: config.dzi + "?ch=" + encodeURIComponent(query),
        index: 0,
        replace: true
      });
    }, 150);
  }
  channelRows.forEach(function (row) {
    row.querySelectorAll("input").forEach(function (input) {
      input.addEventListener(input.type === "range" ? "input" : "change", redraw);
    });
  });
  var reset = document.getElementById("channels-reset");
  if (reset) {
    reset.addEventListener("click", function () {
      channelRows.forEach(function (row, i) {
        row.querySelector(".channel-toggle").checked = defaults[i].shown;
        row.querySelector(".channel-color").value = defaults[i].color;
        row.querySelector(".channel-max").value = defaults[i].max;
      });
      redraw();
    });
  }

  var message = document.getElementById("review-message");
  var csrf = document.querySelector("meta[name='csrf-token']");
  function send(decision) {
    // Signed in: the server records the account, never a name sent here; the CSRF token
    // travels in a header. Without accounts: the typed name.
    var body = {
      decision: decision,
      comment: document.getElementById("comment").value,
      result_sha256: config.result
    };
    var reviewer = document.getElementById("reviewer");
    if (reviewer) { body.reviewer = reviewer.value; }
    var headers = { "Content-Type": "application/json" };
    if (csrf) { headers["X-CSRF-Token"] = csrf.getAttribute("content"); }
    fetch(config.review, {
      method: "POST",
      headers: headers,
      credentials: "same-origin",
      body: JSON.stringify(body)
    }).then(function (response) {
      return response.json().then(function (data) { return [response.ok, data]; });
    }).then(function (result) {
      if (!result[0]) { message.textContent = "not saved: " + result[1].error; return; }
      var status = document.querySelector("[data-status]");
      status.textContent = result[1].decision;
      status.className = "status " + result[1].decision;
      var note = document.querySelector("[data-note]");
      if (note) { note.remove(); }
      message.textContent = "saved " + result[1].time + " (" + result[1].reviewer + ")";
    }).catch(function (error) { message.textContent = "not saved: " + error; });
  }
  document.querySelectorAll("button[data-decision]").forEach(function (button) {
    button.addEventListener("click", function () { send(button.getAttribute("data-decision")); });
  });
})();
