// crmgate status page: once a second, fetches the page's sections as the
// server renders them (status/fragments, src/page/mod.rs draws every one,
// charts included) and swaps them in. When a fetch fails the page says so
// at once and keeps the last numbers, greyed.
(function () {
  "use strict";
  var POLL_MS = 1000, TIMEOUT_MS = 3000;
  var live = document.getElementById("live"), liveText = document.getElementById("live-text"),
      stale = document.getElementById("stale"), lastOk = null, updates = 0;
  var sections = {
    facts: document.getElementById("facts"),
    budgets: document.getElementById("budgets"),
    tenants: document.querySelector("#tenants tbody")
  };

  function pad(n) { return n < 10 ? "0" + n : String(n); }
  function clock(date) {
    return pad(date.getHours()) + ":" + pad(date.getMinutes()) + ":" + pad(date.getSeconds());
  }

  function fetchFragments() {
    var ctl = new AbortController();
    var timer = setTimeout(function () { ctl.abort(); }, TIMEOUT_MS);
    return fetch("status/fragments", { cache: "no-store", signal: ctl.signal }).then(function (r) {
      clearTimeout(timer);
      if (!r.ok) throw new Error("status/fragments: HTTP " + r.status);
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
    fetchFragments().then(function (f) {
      // The server escaped every value in these fragments.
      Object.keys(sections).forEach(function (name) { sections[name].innerHTML = f[name]; });
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
