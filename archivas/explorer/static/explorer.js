// The explorer's live updates: one EventSource on /events. A `tip` event carries the
// node's status and the recent-block rows that changed; a `status` event the status only.
// Everything is written with textContent and DOM nodes, never as HTML.
(function () {
  "use strict";

  var COIN = 100000000;
  var clockOffsetMs = 0; // the node's clock minus ours, from the events' `now`
  var state = { events: 0, height: null, connected: false, inserted: 0 };
  window.archivasExplorer = state;

  function age(seconds) {
    if (seconds < 0) { return "in the future"; }
    var s = Math.floor(seconds);
    if (s < 60) { return s + " s"; }
    if (s < 3600) { return Math.floor(s / 60) + " min"; }
    if (s < 86400) { return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min"; }
    return Math.floor(s / 86400) + " d";
  }

  function rchv(units) {
    var whole = Math.floor(units / COIN), frac = String(units % COIN);
    while (frac.length < 8) { frac = "0" + frac; }
    return whole + "." + frac + " RCHV";
  }

  function short(text, head, tail) {
    if (!text) { return ""; }
    return text.length <= head + tail + 1 ? text : text.slice(0, head) + "\u2026" + text.slice(-tail);
  }

  function utc(ms) {
    return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
  }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    (children || []).forEach(function (c) {
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return node;
  }

  function cell(cls, children) { return el("td", cls ? { "class": cls } : {}, children); }

  function rowFor(b) {
    var ts = el("span", { "class": "age", "data-ts": String(b.timestamp) }, [age(nowSeconds() - b.timestamp / 1000)]);
    return el("tr", { "data-height": String(b.height), "data-hash": b.hash, "class": "fresh" }, [
      cell("num", [el("a", { href: "/explorer/block/" + b.height }, [String(b.height)])]),
      cell("", [el("a", { "class": "mono", href: "/explorer/block/" + b.hash, title: b.hash }, [short(b.hash, 10, 6)])]),
      cell("", [ts, " ago ", el("span", { "class": "utc" }, [utc(b.timestamp)])]),
      cell("", b.farmer ? [el("a", { "class": "mono", href: "/explorer/address/" + b.farmer, title: b.farmer },
                                 [short(b.farmer, 12, 6)])] : []),
      cell("num", [String(b.transfers)]),
      cell("num", [rchv(b.reward)]),
      cell("num", [String(b.segments)])
    ]);
  }

  function nowSeconds() { return (Date.now() + clockOffsetMs) / 1000; }

  function updateStrip(blocks, status, strip) {
    var table = document.getElementById("recent-blocks");
    if (!table) { return; }
    var body = table.tBodies[0];
    blocks.forEach(function (b) {
      var old = body.querySelector('tr[data-height="' + b.height + '"]');
      if (old && old.getAttribute("data-hash") === b.hash) { return; }
      if (old) { body.removeChild(old); }
      var row = rowFor(b), rows = body.rows, i = 0;
      while (i < rows.length && Number(rows[i].getAttribute("data-height")) > b.height) { i += 1; }
      body.insertBefore(row, i < rows.length ? rows[i] : null);
      state.inserted += 1;
    });
    // Rows above the tip (a reorganisation to a shorter, heavier chain) and past the strip go.
    Array.prototype.slice.call(body.rows).forEach(function (r, i) {
      if (Number(r.getAttribute("data-height")) > status.height || i >= strip) { body.removeChild(r); }
    });
  }

  function lookup(obj, path) {
    return path.split(".").reduce(function (o, k) { return o === null || o === undefined ? o : o[k]; }, obj);
  }

  function applyStatus(status) {
    if (typeof status.now === "number") { clockOffsetMs = status.now * 1000 - Date.now(); }
    state.height = status.height;
    var sync = status.sync || {};
    var derived = {
      "sync.state": sync.active ? "syncing" : "in sync",
      "sync.eta": sync.eta || "\u2014",
      "blockSeconds": typeof status.blockSeconds === "number" ? status.blockSeconds.toFixed(2) : "\u2014",
      "sync.blocksPerSecond": typeof sync.blocksPerSecond === "number" ? sync.blocksPerSecond.toFixed(1) : "\u2014"
    };
    document.querySelectorAll("[data-live]").forEach(function (node) {
      var key = node.getAttribute("data-live");
      var value = key in derived ? derived[key] : lookup(status, key);
      if (value === undefined || value === null) { return; }
      node.textContent = String(value);
      if (node.tagName === "A" && (key === "height" || key === "tipHash")) {
        node.setAttribute("href", "/explorer/block/" + value);
      }
    });
    var bar = document.getElementById("sync-progress");
    if (bar && typeof sync.percent === "number") { bar.value = sync.percent; }
  }

  function updateAges() {
    var now = nowSeconds();
    document.querySelectorAll(".age[data-ts]").forEach(function (node) {
      node.textContent = age(now - Number(node.getAttribute("data-ts")) / 1000);
    });
  }

  function live(on) {
    state.connected = on;
    var badge = document.getElementById("live");
    if (badge) { badge.className = on ? "live on" : "live off"; }
  }

  function start() {
    setInterval(updateAges, 1000);
    if (!window.EventSource) { return; }
    var source = new EventSource("/events");
    source.onopen = function () { live(true); };
    source.onerror = function () { live(false); };
    source.addEventListener("tip", function (e) {
      var doc = JSON.parse(e.data);
      state.events += 1;
      applyStatus(doc.status);
      updateStrip(doc.blocks || [], doc.status, doc.strip || 20);
      updateAges();
    });
    source.addEventListener("status", function (e) {
      state.events += 1;
      applyStatus(JSON.parse(e.data));
    });
    window.addEventListener("pagehide", function () { source.close(); });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
}());
