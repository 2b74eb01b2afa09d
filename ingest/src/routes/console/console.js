// imgpipe console: uploads with progress, then each image's live status. No framework; the
// API's own answers (the JSON envelope's code and message) are shown as they come.
"use strict";

(function () {
  const drop = document.getElementById("drop");
  const input = document.getElementById("files");
  const list = document.getElementById("uploads");
  if (!drop || !input || !list) return;

  const api = "/console/api/v1";
  const queue = [];
  let running = 0;
  const PARALLEL = 2;

  function item(file) {
    const li = document.createElement("li");
    li.className = "upload";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = file.name;
    const bar = document.createElement("progress");
    bar.max = 100;
    bar.value = 0;
    const state = document.createElement("span");
    state.className = "state";
    state.textContent = "waiting";
    const thumb = document.createElement("img");
    thumb.alt = "";
    thumb.hidden = true;
    li.append(thumb, name, bar, state);
    list.append(li);
    return { li, bar, state, thumb };
  }

  function refused(xhr) {
    let body = {};
    try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
    const code = body.code || "error";
    let text = xhr.status + " " + code + ": " + (body.message || xhr.statusText);
    const retry = xhr.getResponseHeader("Retry-After");
    if (retry) text += " (retry in " + retry + " s)";
    return text;
  }

  function watch(id, ui) {
    const events = new EventSource(api + "/images/" + encodeURIComponent(id) + "/stream");
    events.addEventListener("status", function (event) {
      const image = JSON.parse(event.data);
      ui.state.textContent = image.status;
      ui.li.dataset.status = image.status;
      if (image.dominant_color) ui.thumb.style.background = image.dominant_color;
      // The BlurHash (drawn by the server) until the thumbnail itself has arrived.
      if (image.blurhash && !ui.thumb.dataset.loaded) {
        ui.thumb.src = "/console/placeholder.bmp?hash=" + encodeURIComponent(image.blurhash);
        ui.thumb.hidden = false;
      }
      const thumb = (image.variants || []).find(function (v) { return v.name === "thumb"; });
      if (thumb && thumb.url && !ui.fetching) {
        ui.fetching = true;
        const real = new Image();
        real.onload = function () {
          ui.thumb.src = thumb.url;
          ui.thumb.dataset.loaded = "true";
          ui.thumb.hidden = false;
        };
        real.src = thumb.url;
      }
      if (image.status === "failed" && image.failure) {
        ui.state.textContent = "failed: " + image.failure.code + " " + (image.failure.reason || "");
      }
      if (["ready", "failed", "deleted"].indexOf(image.status) >= 0) events.close();
    });
    events.addEventListener("end", function () { events.close(); });
    const link = document.createElement("a");
    link.href = "/console/images/" + encodeURIComponent(id);
    link.textContent = "details";
    ui.li.append(link);
  }

  function send(file) {
    const ui = item(file);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", api + "/images");
    xhr.setRequestHeader("Content-Type", "application/octet-stream");
    const key = new Uint8Array(16);
    crypto.getRandomValues(key);
    xhr.setRequestHeader("Idempotency-Key", Array.from(key, function (b) {
      return b.toString(16).padStart(2, "0");
    }).join(""));
    xhr.upload.onprogress = function (event) {
      if (event.lengthComputable) ui.bar.value = Math.round((100 * event.loaded) / event.total);
      ui.state.textContent = "uploading";
    };
    xhr.onload = function () {
      running -= 1;
      next();
      if (xhr.status === 202) {
        ui.bar.value = 100;
        const accepted = JSON.parse(xhr.responseText);
        ui.li.dataset.id = accepted.id;
        ui.state.textContent = accepted.status;
        watch(accepted.id, ui);
      } else {
        ui.li.dataset.status = "refused";
        ui.state.textContent = refused(xhr);
      }
    };
    xhr.onerror = function () {
      running -= 1;
      next();
      ui.state.textContent = "the connection failed";
    };
    xhr.send(file);
  }

  function next() {
    while (running < PARALLEL && queue.length > 0) {
      running += 1;
      send(queue.shift());
    }
  }

  function add(files) {
    Array.prototype.forEach.call(files, function (file) { queue.push(file); });
    next();
  }

  input.addEventListener("change", function () { add(input.files); input.value = ""; });
  drop.addEventListener("dragover", function (event) { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", function () { drop.classList.remove("over"); });
  drop.addEventListener("drop", function (event) {
    event.preventDefault();
    drop.classList.remove("over");
    add(event.dataTransfer.files);
  });
})();
