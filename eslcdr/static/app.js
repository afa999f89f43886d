/* eslcdr's operator page.  Reads only the HTTP API of the server it came
 * from, with the token typed into the form (kept in sessionStorage) or given
 * in the URL fragment (#token=...&account=...; a fragment never reaches a
 * server, and the page removes the token from the address bar at once).
 * Every value from the API is written with textContent, never as HTML. */
(function () {
  "use strict";

  var GREGORIAN = 62167219200; // seconds from year 0 to the Unix epoch
  var STATS_EVERY = 30000;
  var CHANNEL_ROWS = 50; // the longest-running first (the API's order)
  var CHANNELS_EVERY = 5000;
  // range (s) -> bucket (s): a few dozen points per chart
  var BUCKETS = { 3600: 120, 21600: 600, 86400: 1800, 604800: 10800, 2592000: 43200 };
  var COLORS = ["#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c"];

  var state = { token: "", account: "", collector: false, charts: {}, timers: {}, channels: [], fetchedAt: 0,
                unreachable: null };  // the central API's unreachable_nodes (null: a node's API)

  function $(id) { return document.getElementById(id); }

  function el(tag, text, cls) {
    var node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function setStatus(text, isError) {
    var status = $("status");
    status.textContent = text;
    status.className = isError ? "error" : "";
  }

  // -- token and account ------------------------------------------------------

  function readFragment() {
    var params = new URLSearchParams(window.location.hash.replace(/^#/, ""));
    var token = params.get("token");
    var account = params.get("account");
    if (token) {
      sessionStorage.setItem("eslcdr.token", token);
      params.delete("token");
      var rest = params.toString();
      history.replaceState(null, "", window.location.pathname + window.location.search + (rest ? "#" + rest : ""));
    }
    if (account) sessionStorage.setItem("eslcdr.account", account);
  }

  function ApiError(status, message) {
    this.status = status;
    this.message = message;
  }

  function api(path) {
    return fetch(path, {
      headers: { "X-Auth-Token": state.token, "Accept": "application/json" },
      cache: "no-store",
      credentials: "omit"
    }).then(function (response) {
      return response.json().catch(function () { return null; }).then(function (body) {
        if (!response.ok) {
          throw new ApiError(response.status, (body && body.message) || response.statusText);
        }
        return body;
      });
    });
  }

  function accountPath(account) {
    return "/v2/accounts/" + encodeURIComponent(account);
  }

  function range() {
    var span = parseInt($("range").value, 10) || 86400;
    var now = Math.floor(Date.now() / 1000);
    return { from: now - span + GREGORIAN, to: now + GREGORIAN, interval: BUCKETS[span] || 3600 };
  }

  function rangeQuery(r) {
    return "created_from=" + r.from + "&created_to=" + r.to;
  }

  function fail(error, what) {
    if (error instanceof ApiError) {
      if (error.status === 401) {
        setStatus("The token was refused: type a valid one.", true);
        stopTimers();
        $("token").focus();
        return;
      }
      if (error.status === 403) {
        setStatus("This token cannot read account " + state.account + ".", true);
        return;
      }
      setStatus(what + ": " + error.status + " " + error.message, true);
      return;
    }
    setStatus(what + ": " + (error && error.message ? error.message : String(error)), true);
  }

  function start() {
    state.token = sessionStorage.getItem("eslcdr.token") || "";
    state.account = sessionStorage.getItem("eslcdr.account") || "";
    $("token").value = state.token;
    $("account").value = state.account;
    if (!state.token) {
      setStatus("Type an API token to start.");
      $("token").focus();
      return;
    }
    setStatus("Checking the token…");
    api("/v2/auth/tokeninfo").then(function (body) {
      var scope = body.data.account_id;
      state.collector = scope === "*";
      if (!state.collector) {
        state.account = scope; // an account token reads its own account only
        $("account").value = scope;
        $("account").readOnly = true;
      } else {
        $("account").readOnly = false;
      }
      sessionStorage.setItem("eslcdr.account", state.account);
      $("dashboard").hidden = false;
      refreshStats();
      refreshChannels();
    }).catch(function (error) { fail(error, "token"); });
  }

  function stopTimers() {
    Object.keys(state.timers).forEach(function (name) { clearTimeout(state.timers[name]); });
    state.timers = {};
  }

  function later(name, fn, ms) {
    clearTimeout(state.timers[name]);
    state.timers[name] = setTimeout(fn, ms);
  }

  // -- KPIs, charts, causes, worst legs ---------------------------------------

  function refreshStats() {
    if (!state.account) {
      setStatus(state.collector ? "Collector token: pick an account (live channels below show them all)." : "");
      later("stats", refreshStats, STATS_EVERY);
      return;
    }
    var r = range();
    var base = accountPath(state.account) + "/cdrs";
    var q = rangeQuery(r);
    Promise.all([
      api(base + "/stats?" + q + "&interval=" + r.interval),
      api(base + "/worst?by=mos&limit=8&" + q),
      api(base + "/worst?by=no_rtp&limit=8&" + q),
      api(base + "/worst?by=pdd&limit=8&" + q)
    ]).then(function (answers) {
      var stats = answers[0].data;
      drawTiles(stats.totals);
      drawCharts(stats.buckets);
      drawCauses(stats.totals.hangup_causes || {});
      drawWorst("worst-mos", answers[1].data, "mos");
      drawWorst("worst-no_rtp", answers[2].data, "no_rtp");
      drawWorst("worst-pdd", answers[3].data, "pdd");
      setStatus("Account " + state.account + " · updated " + new Date().toLocaleTimeString());
      document.body.setAttribute("data-stats-loaded", "1");
    }).catch(function (error) {
      fail(error, "KPIs");
    }).then(function () {
      if (state.token) later("stats", refreshStats, STATS_EVERY);
    });
  }

  function fmt(value, digits) {
    if (value === undefined || value === null) return "–";
    return typeof value === "number" && digits !== undefined ? value.toFixed(digits) : String(value);
  }

  function drawTiles(t) {
    var tiles = [
      ["Legs", fmt(t.legs), "attempts " + fmt(t.attempts) + " · seizures " + fmt(t.seizures)],
      ["ASR", fmt(t.asr, 1) + " %", fmt(t.answered) + " of " + fmt(t.seizures) + " seizures"],
      ["NER", fmt(t.ner, 1) + " %", fmt(t.user_outcomes) + " user outcomes · " + fmt(t.failures) + " failures"],
      ["ACD", fmt(t.acd_seconds, 0) + " s", "over " + fmt(t.answered) + " answered seizures"],
      ["PDD p50 / p95", fmt(t.pdd_ms_p50) + " / " + fmt(t.pdd_ms_p95) + " ms", "over " + fmt(t.pdd_legs) + " seizures"],
      ["MOS", fmt(t.mos_avg, 2), fmt(t.low_mos) + " of " + fmt(t.mos_legs) + " legs under 3.6"],
      ["No RTP", fmt(t.no_rtp), "of " + fmt(t.rtp_legs) + " answered legs with RTP"]
    ];
    var box = $("kpis");
    box.replaceChildren();
    tiles.forEach(function (tile) {
      var div = el("div", null, "tile");
      div.appendChild(el("span", tile[0], "label"));
      div.appendChild(el("strong", tile[1]));
      div.appendChild(el("small", tile[2]));
      box.appendChild(div);
    });
  }

  function column(buckets, key) {
    return buckets.map(function (b) { return b[key] === undefined ? null : b[key]; });
  }

  var CHARTS = {
    "chart-calls": [["attempts", "attempts"], ["seizures", "seizures"], ["answered", "answered"]],
    "chart-ratios": [["asr", "ASR %"], ["ner", "NER %"]],
    "chart-acd": [["acd_seconds", "ACD s"]],
    "chart-pdd": [["pdd_ms_p50", "p50 ms"], ["pdd_ms_p95", "p95 ms"]],
    "chart-mos": [["mos_avg", "MOS"], ["low_mos", "legs < 3.6"]]
  };

  function drawCharts(buckets) {
    var x = buckets.map(function (b) { return b.from - GREGORIAN; });
    Object.keys(CHARTS).forEach(function (id) {
      var spec = CHARTS[id];
      var data = [x];
      var points = 0;
      spec.forEach(function (s) {
        var values = column(buckets, s[0]);
        values.forEach(function (v) { if (v !== null) points += 1; });
        data.push(values);
      });
      var figure = $(id);
      figure.setAttribute("data-points", String(points));
      var chart = state.charts[id];
      if (chart && chart.series.length === data.length) {
        chart.setData(data);
        return;
      }
      if (chart) chart.destroy();
      var series = [{}];
      var twoScales = id === "chart-mos";
      spec.forEach(function (s, i) {
        series.push({
          label: s[1],
          stroke: COLORS[i % COLORS.length],
          width: 2,
          scale: twoScales && i === 1 ? "count" : "y",
          points: { show: x.length <= 60, size: 4 },
          spanGaps: false
        });
      });
      var axes = [{}, { scale: "y", size: 60 }];
      var scales = { x: { time: true } };
      if (twoScales) {
        axes.push({ scale: "count", side: 1, size: 40, grid: { show: false } });
        scales.y = { range: [1, 4.5] };
      }
      state.charts[id] = new uPlot({
        width: chartWidth(figure),
        height: 200,
        series: series,
        axes: axes,
        scales: scales,
        legend: { live: false }
      }, data, figure);
    });
  }

  function chartWidth(figure) {
    return Math.max(260, figure.clientWidth - 16);
  }

  function drawCauses(causes) {
    var list = $("causes").querySelector("ol");
    list.replaceChildren();
    var names = Object.keys(causes);
    var most = names.reduce(function (m, n) { return Math.max(m, causes[n]); }, 0) || 1;
    names.forEach(function (name) {
      var item = el("li");
      item.appendChild(el("span", name, "cause"));
      var bar = el("span", null, "bar");
      bar.style.width = Math.round(causes[name] / most * 100) + "%";
      item.appendChild(bar);
      item.appendChild(el("span", causes[name], "count"));
      list.appendChild(item);
    });
    if (!names.length) list.appendChild(el("li", "no seizures in this range", "empty"));
  }

  function when(gregorian) {
    var d = new Date((gregorian - GREGORIAN) * 1000);
    return (d.getMonth() + 1) + "/" + d.getDate() + " " +
      String(d.getHours()).padStart(2, "0") + ":" + String(d.getMinutes()).padStart(2, "0");
  }

  var CODEC = ["codec", function (l) { return l.codec || "–"; }];
  var REMOTE = ["remote", function (l) { return l.remote_media_ip || "–"; }];
  var WORST = {
    mos: [CODEC, REMOTE,
          ["MOS", function (l) { return fmt(l.audio_in_mos, 2); }],
          ["quality", function (l) { return fmt(l.audio_in_quality_percentage, 1) + " %"; }]],
    no_rtp: [CODEC, REMOTE, ["billed", function (l) { return fmt(l.billing_seconds) + " s"; }]],
    pdd: [["PDD", function (l) { return fmt(l.pdd_ms) + " ms"; }],
          ["cause", function (l) { return fmt(l.hangup_cause); }]]
  };

  function drawWorst(id, legs, kind) {
    var table = $(id);
    table.replaceChildren();
    var head = el("tr");
    ["when", "call"].concat(WORST[kind].map(function (c) { return c[0]; })).forEach(function (h) {
      head.appendChild(el("th", h));
    });
    table.appendChild(head);
    legs.forEach(function (leg) {
      var row = el("tr");
      row.appendChild(el("td", when(leg.timestamp)));
      var cell = el("td");
      var link = el("a", (leg.caller_id_number || "?") + " → " + (leg.callee_id_number || "?"));
      link.href = "#cdr=" + encodeURIComponent(leg.id);
      link.title = leg.id;
      link.addEventListener("click", function (event) {
        event.preventDefault();
        showRecord(leg.id);
      });
      cell.appendChild(link);
      row.appendChild(cell);
      WORST[kind].forEach(function (c) { row.appendChild(el("td", c[1](leg))); });
      table.appendChild(row);
    });
    if (!legs.length) {
      var empty = el("tr");
      var td = el("td", "none in this range", "empty");
      td.colSpan = 2 + WORST[kind].length;
      empty.appendChild(td);
      table.appendChild(empty);
    }
  }

  function showRecord(id) {
    api(accountPath(state.account) + "/cdrs/" + encodeURIComponent(id)).then(function (body) {
      var record = body.data;
      $("record-title").textContent = "CDR " + id;
      var table = $("record-fields");
      table.replaceChildren();
      Object.keys(record).forEach(function (key) {
        var value = record[key];
        var row = el("tr");
        row.appendChild(el("th", key));
        row.appendChild(el("td", typeof value === "object" ? JSON.stringify(value) : value));
        table.appendChild(row);
      });
      var dialog = $("record");
      if (!dialog.open) dialog.showModal();
    }).catch(function (error) { fail(error, "record " + id); });
  }

  // -- live channels ----------------------------------------------------------

  function refreshChannels() {
    var path = state.account ? accountPath(state.account) + "/channels" : "/v2/channels";
    if (!state.account && !state.collector) return;
    api(path).then(function (body) {
      state.channels = body.data;
      state.unreachable = body.unreachable_nodes || null;
      state.fetchedAt = Date.now();
      drawChannels();
      if (state.collector && !state.account) offerAccounts(body.data);
      document.body.setAttribute("data-channels-loaded", "1");
    }).catch(function (error) {
      fail(error, "live channels");
    }).then(function () {
      if (state.token) later("channels", refreshChannels, CHANNELS_EVERY);
    });
  }

  function offerAccounts(channels) {
    var list = $("accounts");
    var seen = {};
    channels.forEach(function (c) { if (c.account_id) seen[c.account_id] = true; });
    list.replaceChildren();
    Object.keys(seen).sort().forEach(function (account) {
      var option = el("option");
      option.value = account;
      list.appendChild(option);
    });
  }

  function elapsed(seconds) {
    var m = Math.floor(seconds / 60);
    var s = seconds % 60;
    return (m >= 60 ? Math.floor(m / 60) + ":" + String(m % 60).padStart(2, "0") : String(m)) + ":" + String(s).padStart(2, "0");
  }

  function drawChannels() {
    var table = $("channels");
    table.replaceChildren();
    var head = el("tr");
    // Centrally (the collector asked every media server) each channel names its server: source.
    var central = state.unreachable !== null;
    var columns = ["state", "direction", "caller", "destination", "callee", "elapsed"]
      .concat(central ? ["source"] : [], ["node", "channel", "other leg"]);
    columns.forEach(function (h) {
      head.appendChild(el("th", h));
    });
    table.appendChild(head);
    var drift = Math.floor((Date.now() - state.fetchedAt) / 1000);
    state.channels.slice(0, CHANNEL_ROWS).forEach(function (c) {
      var row = el("tr", null, "state-" + String(c.state).toLowerCase());
      row.appendChild(el("td", c.state));
      row.appendChild(el("td", c.direction || "–"));
      row.appendChild(el("td", [c.caller_id_name, c.caller_id_number].filter(Boolean).join(" ") || "–"));
      row.appendChild(el("td", c.destination || "–"));
      row.appendChild(el("td", [c.callee_id_name, c.callee_id_number].filter(Boolean).join(" ") || "–"));
      row.appendChild(el("td", elapsed(c.elapsed_s + drift), "num"));
      if (central) row.appendChild(el("td", c.source || "–", "source"));
      row.appendChild(el("td", c.node || "–"));
      row.appendChild(el("td", c.channel_name || "–"));
      row.appendChild(el("td", c.other_leg ? c.other_leg.slice(0, 8) : "–"));
      row.title = c.uuid;
      table.appendChild(row);
    });
    var answered = state.channels.filter(function (c) { return c.answered; }).length;
    $("live-count").textContent = "(" + state.channels.length + ", " + answered + " answered)";
    var more = $("channels-more");
    more.textContent = state.channels.length > CHANNEL_ROWS ?
      "… and " + (state.channels.length - CHANNEL_ROWS) + " more (the longest-running are listed)" : "";
    var unreachable = $("channels-unreachable");
    var missing = state.unreachable || [];
    unreachable.hidden = missing.length === 0;
    unreachable.textContent = missing.length ? "Not answering, their calls are missing here: " +
      missing.map(function (u) { return u.node + " (" + u.reason + ")"; }).join(", ") : "";
  }

  // -- wiring -------------------------------------------------------------------

  $("login").addEventListener("submit", function (event) {
    event.preventDefault();
    var token = $("token").value.trim();
    if (token) sessionStorage.setItem("eslcdr.token", token); else sessionStorage.removeItem("eslcdr.token");
    var account = $("account").value.trim();
    if (account) sessionStorage.setItem("eslcdr.account", account); else sessionStorage.removeItem("eslcdr.account");
    stopTimers();
    Object.keys(state.charts).forEach(function (id) { state.charts[id].destroy(); });
    state.charts = {};
    start();
  });
  $("range").addEventListener("change", function () { if (state.token) refreshStats(); });
  $("record-close").addEventListener("click", function () { $("record").close(); });
  window.addEventListener("resize", function () {
    Object.keys(state.charts).forEach(function (id) {
      state.charts[id].setSize({ width: chartWidth($(id)), height: 200 });
    });
  });

  readFragment();
  start();
}());
