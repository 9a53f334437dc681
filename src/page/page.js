// crmgate status page: polls status and status/history once a second and
// redraws the markup the server rendered (src/page/mod.rs draws the same
// markup: change both together). Every value is escaped before it is put
// in the page. When a poll fails the page says so at once and keeps the
// last numbers, greyed.
(function () {
  "use strict";
  var CAPACITY = 300;
  var W = 600, H = 160, LEFT = 46, RIGHT = 594, TOP = 12, BOTTOM = 136;
  var POLL_MS = 1000, TIMEOUT_MS = 3000;

  function esc(text) {
    return String(text).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function num(v, decimals) {
    var scale = Math.pow(10, decimals);
    return String(Math.round(v * scale) / scale);
  }
  function rate(v) { return num(v, 2) + "/s"; }
  function millis(v) {
    if (v < 10) return num(v, 1) + " ms";
    if (v < 1000) return num(v, 0) + " ms";
    return num(v / 1000, 1) + " s";
  }
  function pad(n) { return n < 10 ? "0" + n : String(n); }
  function duration(sec) {
    var d = Math.floor(sec / 86400), h = Math.floor(sec / 3600) % 24,
        m = Math.floor(sec / 60) % 60, s = sec % 60;
    if (d > 0) return d + " d " + h + " h";
    if (h > 0) return h + " h " + pad(m) + " min";
    if (m > 0) return m + " min " + pad(s) + " s";
    return s + " s";
  }
  function clock(date) {
    return pad(date.getHours()) + ":" + pad(date.getMinutes()) + ":" + pad(date.getSeconds());
  }

  function fact(label, id, value, inner) {
    return "<div><dt>" + label + "</dt><dd id=\"" + id + "\" data-value=\"" + esc(value) + "\">" +
      inner + "</dd></div>";
  }

  function facts(s, h) {
    var out = "";
    var state = s.ready ? "<span class=\"pill ok\">Ready</span>"
      : "<span class=\"pill bad\">Not ready: starting or draining</span>";
    out += fact("State", "f-state", String(s.ready), state);
    var backend = { local: "Local", shared: "Redis (shared)",
      connecting: "<span class=\"pill warn\">Connecting to Redis</span>",
      fallback: "<span class=\"pill warn\">Fallback: Redis unreachable</span> "
        + esc(s.budget_backend_cause || "") }[s.budget_backend];
    out += fact("Budget backend", "f-backend", s.budget_backend,
      backend === undefined ? esc(s.budget_backend) : backend);
    out += fact("Uptime", "f-uptime", String(s.uptime_seconds), duration(s.uptime_seconds));
    out += fact("Queued", "f-queued", String(s.queued_total), s.queued_total + " of " + s.queue_capacity);
    var sum = esc(s.config_checksum);
    out += "<div><dt>Config checksum</dt><dd id=\"f-checksum\" data-value=\"" + sum + "\" title=\"" +
      sum + "\">" + esc(s.config_checksum.slice(0, 12)) + "</dd></div>";
    var last = h.reloads.last, reload;
    if (!last) {
      reload = "None since start";
    } else {
      var ago = duration(Math.max(0, s.uptime_seconds - last.uptime_seconds));
      reload = last.outcome === "success" ? "<span class=\"pill ok\">Applied</span> " + ago + " ago"
        : "<span class=\"pill bad\">Rejected</span> " + ago + " ago, old config kept";
    }
    out += fact("Last reload", "f-reload", last ? last.outcome : "none", reload);
    return out;
  }

  var LEGEND = "<div class=\"legend\"><span><i class=\"l-sends\"></i>sends/s</span>" +
    "<span><i class=\"l-throttled\"></i>CRM 503/429 per s</span>" +
    "<span><i class=\"l-limit\"></i>limit (effective rate)</span></div>";

  function budgets(s, h) {
    var keys = [];
    s.budgets.forEach(function (b) {
      if (!keys.some(function (k) { return k.egress === b.egress && k.cls === b.class; })) {
        keys.push({ egress: b.egress, cls: b.class });
      }
    });
    return keys.map(function (k) {
      var n = { configured: 0, effective: 0, sent: 0, queued: 0, oldest: 0 };
      s.budgets.forEach(function (b) {
        if (b.egress !== k.egress || b.class !== k.cls) return;
        n.configured += b.configured_rate;
        n.effective += b.effective_rate;
        n.sent += b.sent_last_window;
        n.queued += b.queued;
        n.oldest = Math.max(n.oldest, b.oldest_wait_ms);
      });
      var series = h.budgets.filter(function (x) { return x.egress === k.egress && x.class === k.cls; })[0];
      var e = esc(k.egress), c = esc(k.cls);
      return "<article class=\"budget\" data-egress=\"" + e + "\" data-class=\"" + c + "\">" +
        "<h3>" + e + " <span class=\"class\">· " + c + "</span></h3><dl class=\"nums\">" +
        "<div><dt>Configured</dt><dd data-field=\"configured\" data-value=\"" + num(n.configured, 2) + "\">" + rate(n.configured) + "</dd></div>" +
        "<div><dt>Effective</dt><dd data-field=\"effective\" data-value=\"" + num(n.effective, 2) + "\">" + rate(n.effective) + "</dd></div>" +
        "<div><dt>Sent, last window</dt><dd data-field=\"sent\" data-value=\"" + n.sent + "\">" + n.sent + "</dd></div>" +
        "<div><dt>Waiting</dt><dd data-field=\"queued\" data-value=\"" + n.queued + "\">" + n.queued + "</dd></div>" +
        "<div><dt>Oldest wait</dt><dd data-field=\"oldest\" data-value=\"" + n.oldest + "\">" + millis(n.oldest) + "</dd></div>" +
        "</dl>" + chart(series) + LEGEND + "</article>";
    }).join("");
  }

  function niceCeiling(v) {
    v = Math.max(v, 1);
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    for (;;) {
      var ms = [1, 2, 2.5, 5];
      for (var i = 0; i < ms.length; i++) if (ms[i] * p >= v - 1e-9) return ms[i] * p;
      p *= 10;
    }
  }

  function line(points, area, y0) {
    var d = "", run = [];
    function flush() {
      if (!run.length) return;
      run.forEach(function (p, i) { d += (i === 0 ? "M" : "L") + num(p[0], 1) + "," + num(p[1], 1); });
      if (area) {
        d += "L" + num(run[run.length - 1][0], 1) + "," + num(y0, 1) + "L" + num(run[0][0], 1) + "," + num(y0, 1) + "Z";
      }
      run = [];
    }
    points.forEach(function (p) { if (p[1] === null) flush(); else run.push(p); });
    flush();
    return d;
  }

  function chart(series) {
    var sends = series ? series.sends : [], throttled = series ? series.throttled : [],
        limit = series ? series.limit : [];
    var len = sends.length, step = (RIGHT - LEFT) / (CAPACITY - 1);
    function x(i) { return LEFT + (CAPACITY - len + i) * step; }
    var top = 1;
    sends.concat(throttled, limit).forEach(function (v) { if (v !== null && v > top) top = v; });
    var ymax = niceCeiling(top * 1.1);
    function y(v) { return BOTTOM - (v / ymax) * (BOTTOM - TOP); }
    var total = 0;
    sends.forEach(function (v) { if (v !== null) total += v; });
    var out = "<svg class=\"chart\" viewBox=\"0 0 " + W + " " + H + "\" role=\"img\" " +
      "aria-label=\"sends per second over the last 5 minutes\" data-total-sends=\"" + total +
      "\" data-samples=\"" + len + "\">";
    [0, ymax / 2, ymax].forEach(function (v) {
      var yy = num(y(v), 1);
      out += "<line class=\"grid\" x1=\"" + LEFT + "\" x2=\"" + RIGHT + "\" y1=\"" + yy + "\" y2=\"" + yy +
        "\"></line><text x=\"" + (LEFT - 4) + "\" y=\"" + num(y(v) + 4, 1) +
        "\" text-anchor=\"end\">" + rate(v) + "</text>";
    });
    [[0, "−5 min"], [60, "−4 min"], [120, "−3 min"], [180, "−2 min"], [240, "−1 min"], [299, "now"]]
      .forEach(function (t) {
        var anchor = t[0] === 0 ? "start" : t[0] === 299 ? "end" : "middle";
        out += "<text x=\"" + num(LEFT + t[0] * step, 1) + "\" y=\"" + (H - 6) +
          "\" text-anchor=\"" + anchor + "\">" + t[1] + "</text>";
      });
    function points(values) {
      return values.map(function (v, i) { return [x(i), v === null ? null : y(v)]; });
    }
    var sp = points(sends);
    out += "<path class=\"sends-area\" d=\"" + line(sp, true, BOTTOM) + "\"></path>" +
      "<path class=\"sends\" d=\"" + line(sp, false, BOTTOM) + "\"></path>";
    throttled.forEach(function (v, i) {
      if (v === null || v <= 0) return;
      var t = y(v);
      out += "<rect class=\"throttled\" x=\"" + num(x(i) - step / 2, 1) + "\" y=\"" + num(t, 1) +
        "\" width=\"" + num(Math.max(step, 1.5), 1) + "\" height=\"" + num(BOTTOM - t, 1) + "\"></rect>";
    });
    out += "<path class=\"limit\" d=\"" + line(points(limit), false, BOTTOM) + "\"></path></svg>";
    return out;
  }

  function tenants(s) {
    function ratio(c) {
      return !c || c.requests_last_minute === 0
        ? "data-value=\"\"><span class=\"na\" title=\"no GET in the last minute\">–</span>"
        : "data-value=\"" + num(c.hit_ratio, 3) + "\">" + num(c.hit_ratio * 100, 0) + "%";
    }
    function wait(v) {
      return v === null ? "data-value=\"\"><span class=\"na\" title=\"nothing waited in the last minute\">–</span>"
        : "data-value=\"" + num(v, 1) + "\">" + millis(v);
    }
    return s.tenants.map(function (t) {
      var by = [0, 0, 0, 0];
      Object.keys(t.totals_by_status).forEach(function (code) {
        var c = Number(code.charAt(0));
        if (c >= 2 && c <= 5) by[c - 2] += t.totals_by_status[code];
      });
      var q = t.queue_wait_last_minute, name = esc(t.name);
      return "<tr data-tenant=\"" + name + "\"><td>" + name + "</td>" +
        "<td class=\"n\" data-field=\"weight\">" + t.weight + "</td>" +
        "<td class=\"n\" data-field=\"waiting\">" + t.queued + "</td>" +
        "<td class=\"n\" data-field=\"inflight\">" + t.inflight + "</td>" +
        "<td class=\"n\" data-field=\"displaced\">" + t.displaced + "</td>" +
        "<td class=\"n\" data-field=\"p50\" " + wait(q ? q.p50_ms : null) + "</td>" +
        "<td class=\"n\" data-field=\"p95\" " + wait(q ? q.p95_ms : null) + "</td>" +
        "<td class=\"n\" data-field=\"2xx\">" + by[0] + "</td>" +
        "<td class=\"n\" data-field=\"3xx\">" + by[1] + "</td>" +
        "<td class=\"n\" data-field=\"4xx\">" + by[2] + "</td>" +
        "<td class=\"n\" data-field=\"5xx\">" + by[3] + "</td>" +
        "<td class=\"n\" data-field=\"cache\" " + ratio(t.cache_last_minute) + "</td>" +
        "<td class=\"n\" data-field=\"coalesced\">" +
        (t.cache_last_minute ? t.cache_last_minute.slots_saved_last_minute : 0) + "</td>" +
        "<td class=\"n\" data-field=\"exports\">" + t.export_pages + "</td></tr>";
    }).join("");
  }

  var live = document.getElementById("live"), liveText = document.getElementById("live-text"),
      stale = document.getElementById("stale"), lastOk = null, updates = 0;

  function fetchJson(path) {
    var ctl = new AbortController();
    var timer = setTimeout(function () { ctl.abort(); }, TIMEOUT_MS);
    return fetch(path, { cache: "no-store", signal: ctl.signal }).then(function (r) {
      clearTimeout(timer);
      if (!r.ok) throw new Error(path + ": HTTP " + r.status);
      return r.json();
    }, function (e) { clearTimeout(timer); throw e; });
  }

  function showStale() {
    document.body.classList.add("is-stale");
    live.className = "live off";
    liveText.textContent = "Not updating";
    stale.textContent = "Data stopped updating" + (lastOk ? " at " + clock(lastOk) : "") +
      ": the gateway does not answer. The numbers below are the last ones received.";
    stale.hidden = false;
  }

  function poll() {
    Promise.all([fetchJson("status"), fetchJson("status/history")]).then(function (docs) {
      var s = docs[0], h = docs[1];
      document.getElementById("facts").innerHTML = facts(s, h);
      document.getElementById("budgets").innerHTML = budgets(s, h);
      document.querySelector("#tenants tbody").innerHTML = tenants(s);
      lastOk = new Date();
      updates += 1;
      document.body.dataset.updates = String(updates);
      document.body.classList.remove("is-stale");
      stale.hidden = true;
      live.className = "live on";
      liveText.textContent = "Live · updated " + clock(lastOk);
    }, showStale).then(function () { setTimeout(poll, POLL_MS); });
  }
  poll();
})();
