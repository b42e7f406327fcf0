"use strict";
// Renders the timeline and the node table of the run report from its JSON data block, then wires sorting,
// filtering and bar clicks. Every string from the data goes through esc() before it reaches innerHTML.
(function () {
  var data = JSON.parse(document.getElementById("report-data").textContent);
  var STATUS = data.statuses, TYPES = data.types, THREADS = data.threads;
  var FAILED = {"error": 1, "fail": 1, "runtime error": 1};
  var ESC = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\"": "&quot;", "'": "&#39;"};
  function esc(text) { return String(text).replace(/[&<>"']/g, function (c) { return ESC[c]; }); }
  function secs(ms) { return ms === null ? "" : (ms / 1000).toFixed(ms < 10000 ? 2 : 1); }
  function count(n) { return n === null ? "" : n.toLocaleString("en"); }

  // One record per node: [unique_id, name or null (the id's third part), status, type, thread or -1,
  // start ms from the first node or -1, bar ms, execution ms, rows or null, failures or null].
  var nodes = data.nodes.map(function (n, i) {
    return {i: i, id: n[0], name: n[1] === null ? (n[0].split(".")[2] || n[0]) : n[1], status: STATUS[n[2]],
            type: TYPES[n[3]], thread: n[4], start: n[5], bar: n[6], ms: n[7], rows: n[8], failures: n[9]};
  });

  function timeline() {
    var lanes = THREADS.map(function () { return []; });
    var span = Math.max(data.span_ms, 1);
    nodes.forEach(function (n) {
      if (n.thread < 0) { return; }
      var timed = n.start >= 0;
      var left = timed ? (n.start / span * 100).toFixed(3) : 0, width = timed ? (n.bar / span * 100).toFixed(3) : 0;
      lanes[n.thread].push("<div class=\"bar" + (timed ? "" : " untimed") + "\" data-unique-id=\"" + esc(n.id) +
        "\" data-status=\"" + esc(n.status) + "\" style=\"left:" + left + "%;width:" + width + "%\" title=\"" +
        esc(n.id + " \u2014 " + n.status + ", " + secs(n.ms) + " s") + "\"></div>");
    });
    document.getElementById("timeline").innerHTML = THREADS.map(function (t, i) {
      return "<div class=\"lane\" data-thread=\"" + esc(t) + "\">" + lanes[i].join("") + "</div>";
    }).join("");
    if (!THREADS.length) {
      document.getElementById("timeline-axis").textContent = "No node ran on a dbt thread.";
      return;
    }
    var axis = [], step = niceStep(span / 8);
    for (var at = 0; at <= span; at += step) {
      var label = step >= 1000 ? String(Math.round(at / 1000)) : (at / 1000).toFixed(step >= 100 ? 1 : 2);
      axis.push("<span style=\"left:" + (at / span * 100).toFixed(3) + "%\">" + label + " s</span>");
    }
    document.getElementById("timeline-axis").innerHTML = axis.join("");
  }

  function niceStep(raw) {
    var power = Math.pow(10, Math.floor(Math.log10(Math.max(raw, 1))));
    var steps = [1, 2, 5, 10];
    for (var k = 0; k < steps.length; k++) { if (steps[k] * power >= raw) { return steps[k] * power; } }
    return 10 * power;
  }

  function row(n) {  // cells: name and id, type, status, thread, start, duration, rows, failures
    var cls = FAILED[n.status] ? " class=\"failed\"" : (n.status === "warn" ? " class=\"warned\"" : "");
    return "<tr data-unique-id=\"" + esc(n.id) + "\" data-status=\"" + esc(n.status) + "\"" + cls + "><td>" +
      esc(n.name) + "<small>" + esc(n.id) + "</small><td>" + esc(n.type) + "<td>" + esc(n.status) + "<td>" +
      (n.thread < 0 ? "" : esc(THREADS[n.thread])) + "<td>" + (n.start < 0 ? "" : secs(n.start)) + "<td>" +
      secs(n.ms) + "<td>" + count(n.rows) + "<td>" + count(n.failures) + "</tr>";
  }

  var tbody = document.querySelector("#nodes tbody"), rows = [], shown = document.getElementById("node-count-shown");
  function table() {
    tbody.innerHTML = nodes.map(row).join("");
    rows = Array.prototype.slice.call(tbody.rows);
    shown.textContent = nodes.length.toLocaleString("en") + " nodes";
  }

  var KEYS = {
    name: function (n) { return n.name.toLowerCase() + "\u0000" + n.id; },
    status: function (n) { return n.status; },
    duration: function (n) { return n.ms; },
    rows: function (n) { return n.rows; }
  };
  var sorted = {key: null, dir: 1};
  function sortBy(key) {
    sorted = {key: key, dir: sorted.key === key ? -sorted.dir : (key === "duration" || key === "rows" ? -1 : 1)};
    var value = KEYS[key];
    var order = nodes.slice().sort(function (a, b) {
      var x = value(a), y = value(b);
      if (x === y) { return a.i - b.i; }
      if (x === null) { return 1; }
      if (y === null) { return -1; }
      return (x < y ? -1 : 1) * sorted.dir;
    });
    var fragment = document.createDocumentFragment();
    order.forEach(function (n) { fragment.appendChild(rows[n.i]); });
    tbody.appendChild(fragment);
    document.querySelectorAll("#nodes th[data-sort]").forEach(function (th) {
      if (th.dataset.sort === key) { th.setAttribute("aria-sort", sorted.dir > 0 ? "ascending" : "descending"); }
      else { th.removeAttribute("aria-sort"); }
    });
  }

  function filter(text) {
    var needle = text.trim().toLowerCase(), visible = 0;
    nodes.forEach(function (n) {
      var match = !needle || n.id.toLowerCase().indexOf(needle) >= 0 || n.name.toLowerCase().indexOf(needle) >= 0;
      if (rows[n.i].hidden === match) { rows[n.i].hidden = !match; }
      visible += match ? 1 : 0;
    });
    shown.textContent = needle ? visible.toLocaleString("en") + " of " + nodes.length.toLocaleString("en") + " nodes"
                               : nodes.length.toLocaleString("en") + " nodes";
  }

  function wire() {
    var input = document.getElementById("node-filter");
    input.addEventListener("input", function () { filter(input.value); });
    document.querySelectorAll("#nodes th[data-sort]").forEach(function (th) {
      th.addEventListener("click", function () { sortBy(th.dataset.sort); });
    });
    document.getElementById("timeline").addEventListener("click", function (event) {
      var bar = event.target.closest(".bar");
      if (!bar) { return; }
      input.value = bar.dataset.uniqueId;
      filter(input.value);
      document.getElementById("nodes").scrollIntoView({block: "start"});
    });
    if (input.value) { filter(input.value); }  // a value the browser restored
  }

  // Where the time went (ms since navigation start): read by bench/run_report.py, harmless elsewhere.
  var marks = {start: performance.now()};
  timeline();
  marks.timeline = performance.now();
  table();
  marks.table = performance.now();
  wire();
  requestAnimationFrame(function () {
    marks.frame = performance.now();
    setTimeout(function () {
      var root = document.documentElement;
      root.setAttribute("data-marks", JSON.stringify(marks, function (k, v) { return k ? Math.round(v) : v; }));
      root.setAttribute("data-ready", performance.now().toFixed(1));
    }, 0);
  });
})();
