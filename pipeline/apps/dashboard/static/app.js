// The dashboard page. Everything it shows comes from this server's JSON (/api/...) and
// its Server-Sent Events (/events). Level slugs come from player events: they are put
// into the page as text only (textContent, createElement), and escaped before plotly.js
// gets them, because plotly reads a subset of HTML in labels and hover text.
"use strict";

(function () {
  const OUTSIDE = "(outside)";
  const CHART_LABEL_MAX = 32;
  const COLORS = { bar: "#2f6fde", total: "#1d2330", level: "#e0772f", outside: "#9aa3b2", node: "#2f6fde" };
  const PLOT_CONFIG = { displayModeBar: false, responsive: true };

  const state = {
    current: null, // /api/current or the last SSE "current"
    staleness: null,
    connected: false,
    span: "1h",
    history: null, // /api/history?span=...
    replay: null, // a past window's view while replaying, else null (live)
    replayEnd: null,
    level: null, // the level chosen for the series
  };

  // --- small helpers (text only, never HTML) ---

  function $(id) {
    return document.getElementById(id);
  }

  function cell(tag, text, className) {
    const node = document.createElement(tag);
    node.textContent = text === null || text === undefined ? "—" : String(text);
    if (className) node.className = className;
    return node;
  }

  function fillBody(tbody, rows) {
    // rows: [[{text, num, outside}...]...]
    const fragment = document.createDocumentFragment();
    for (const row of rows) {
      const tr = document.createElement("tr");
      for (const c of row) {
        const classes = [c.num ? "num" : "", c.outside ? "outside" : ""].filter(Boolean).join(" ");
        tr.appendChild(cell("td", c.text, classes));
      }
      fragment.appendChild(tr);
    }
    tbody.replaceChildren(fragment);
  }

  // plotly.js turns a few tags (<b>, <br>, <a>...) and entities (&lt; ...) in labels into
  // markup; escaping & < > makes it show the slug as it is, character for character.
  function plotText(text) {
    return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  function shortLabel(text) {
    const s = String(text);
    return s.length <= CHART_LABEL_MAX ? s : s.slice(0, CHART_LABEL_MAX - 1) + "…";
  }

  function levelName(level) {
    return level === null || level === undefined ? OUTSIDE : level;
  }

  function percent(share) {
    return (100 * share).toFixed(share > 0 && share < 0.1 ? 1 : 0) + "%";
  }

  function duration(secs) {
    if (secs === null || secs === undefined) return "—";
    if (secs < 60) return secs + " s";
    if (secs < 3600) return Math.floor(secs / 60) + " min " + (secs % 60) + " s";
    return Math.floor(secs / 3600) + " h " + Math.floor((secs % 3600) / 60) + " min";
  }

  function timeOf(windowEnd) {
    // "2026-12-02T10:01:00Z" -> "2026-12-02 10:01:00" (UTC)
    return String(windowEnd).replace("T", " ").replace("Z", "");
  }

  function plot(id, data, layout) {
    if (typeof Plotly === "undefined") return; // the table beside it still shows the numbers
    // plotly's responsive mode sizes the chart to its container: give the container the height.
    $(id).style.height = layout.height + "px";
    Plotly.react($(id), data, layout, PLOT_CONFIG);
  }

  function clearPlot(id) {
    if (typeof Plotly !== "undefined") Plotly.purge($(id));
    $(id).replaceChildren();
    $(id).style.height = "";
  }

  const baseLayout = {
    margin: { l: 8, r: 8, t: 8, b: 8 },
    paper_bgcolor: "rgba(0,0,0,0)",
    plot_bgcolor: "rgba(0,0,0,0)",
    font: { family: "system-ui, sans-serif", size: 12, color: "#1d2330" },
    hoverlabel: { namelength: -1 },
  };

  // --- level map ---

  function renderLevels(rows, caption) {
    $("levels-caption").textContent = caption;
    const tbody = $("level-table").tBodies[0];
    fillBody(
      tbody,
      rows.map((r) => [{ text: r.level }, { text: r.players, num: true }])
    );
    $("level-total").textContent = String(rows.reduce((sum, r) => sum + r.players, 0));
    if (!rows.length) {
      clearPlot("level-chart");
      return;
    }
    const index = rows.map((_, i) => i);
    plot(
      "level-chart",
      [
        {
          type: "bar",
          orientation: "h",
          y: index,
          x: rows.map((r) => r.players),
          text: rows.map((r) => String(r.players)),
          textposition: "outside",
          cliponaxis: false,
          customdata: rows.map((r) => plotText(r.level)),
          hovertemplate: "%{customdata}<br>players: %{x}<extra></extra>",
          marker: { color: COLORS.bar },
        },
      ],
      Object.assign({}, baseLayout, {
        height: 40 + 22 * Math.max(rows.length, 3),
        margin: { l: 8, r: 36, t: 8, b: 24 },
        yaxis: {
          tickmode: "array",
          tickvals: index,
          ticktext: rows.map((r) => plotText(shortLabel(r.level))),
          autorange: "reversed",
          automargin: true,
          fixedrange: true,
        },
        xaxis: {
          rangemode: "tozero",
          fixedrange: true,
          automargin: true,
          title: { text: "players" },
          // whole players: with few, one tick per player (and 0 to 1 when the map is empty)
          dtick: Math.max(0, ...rows.map((r) => r.players)) < 5 ? 1 : undefined,
          range: rows.some((r) => r.players > 0) ? undefined : [0, 1],
        },
        bargap: 0.25,
      })
    );
  }

  // --- flows ---

  function renderFlows(view, caption) {
    $("flows-caption").textContent = caption;
    const flows = view ? view.transitions : null;
    const tbody = $("flow-table").tBodies[0];
    if (!flows) {
      fillBody(tbody, []);
      clearPlot("flow-chart");
      $("flow-empty").hidden = false;
      $("flow-empty").textContent = view ? "This window's transitions are not published." : "Nothing published yet.";
      $("flow-summary").textContent = "";
      return;
    }
    fillBody(
      tbody,
      flows.top.map((t) => [
        { text: levelName(t.from), outside: t.from === null },
        { text: levelName(t.to), outside: t.to === null },
        { text: t.count, num: true },
      ])
    );
    $("flow-summary").textContent =
      flows.total + " transitions in the window: " + flows.entries + " entries into the game, " + flows.exits + " exits.";
    const nodes = flows.sankey.nodes;
    const links = flows.sankey.links;
    if (!links.length) {
      clearPlot("flow-chart");
      $("flow-empty").hidden = false;
      $("flow-empty").textContent = "No transitions in this window.";
      return;
    }
    $("flow-empty").hidden = true;
    const width = $("flow-chart").clientWidth || 600;
    const sides = nodes.filter((n) => n.side === "from").length;
    const height = Math.max(260, Math.min(900, 26 * Math.max(sides, nodes.length - sides) + 40));
    plot(
      "flow-chart",
      [
        {
          type: "sankey",
          orientation: "h",
          arrangement: "snap",
          valueformat: "d",
          node: {
            label: nodes.map((n) => plotText(shortLabel(n.label))),
            customdata: nodes.map((n) => plotText(n.label) + (n.side === "from" ? " (from)" : " (to)")),
            hovertemplate: "%{customdata}<br>players: %{value}<extra></extra>",
            color: nodes.map((n) => (n.outside ? COLORS.outside : COLORS.node)),
            pad: 6,
            thickness: 12,
            line: { width: 0 },
          },
          link: {
            source: links.map((l) => l.source),
            target: links.map((l) => l.target),
            value: links.map((l) => l.count),
            customdata: links.map((l) => plotText(nodes[l.source].label) + " → " + plotText(nodes[l.target].label)),
            hovertemplate: "%{customdata}<br>players: %{value}<extra></extra>",
            color: "rgba(47,111,222,0.25)",
          },
        },
      ],
      Object.assign({}, baseLayout, { height: height, font: { size: width < 500 ? 10 : 12 } })
    );
  }

  // --- the live state ---

  function renderWindowArea() {
    if (state.replay) {
      const v = state.replay;
      renderLevels(v.levels, "at the end of window " + timeOf(v.update_time || state.replayEnd) + " UTC (replay)");
      renderFlows(v, "in the window ending " + timeOf(v.update_time || state.replayEnd) + " UTC (replay)");
      return;
    }
    const c = state.current;
    const live = c ? c.live : null;
    if (!live) {
      renderLevels([], "nothing published yet");
    } else if (live.source === "table") {
      renderLevels(live.levels, "now (level table, as of " + timeOf(live.as_of) + " UTC)");
    } else {
      renderLevels(live.levels, "at the end of the latest window, " + timeOf(live.as_of) + " UTC");
    }
    if (c && c.window) {
      renderFlows(c.window, "in the window ending " + timeOf(c.window.update_time) + " UTC");
    } else {
      renderFlows(null, "");
    }
  }

  function renderHeader() {
    const c = state.current;
    const s = state.staleness;
    $("as-of").textContent = c && c.window ? "as of " + c.window.update_time : "as of —";
    $("age").textContent =
      s && s.age_secs !== null && s.age_secs !== undefined ? "(published " + duration(s.age_secs) + " ago)" : "";
    const pill = $("connection");
    let banner = "";
    if (!state.connected) {
      pill.textContent = "disconnected";
      pill.className = "pill down";
      banner = "Lost the connection to the dashboard server; retrying… The numbers shown may be old.";
    } else if (!s || s.state === "waiting") {
      pill.textContent = "waiting";
      pill.className = "pill";
      banner = "Waiting for the pipeline: nothing published yet.";
    } else if (s.state === "stale") {
      pill.textContent = "stalled";
      pill.className = "pill stale";
      banner =
        "Stalled: no new window for " + duration(s.age_secs) + " (a window is expected every " +
        duration(s.limit_secs / 2) + "). The numbers are as of " + (c && c.window ? c.window.update_time : "—") + ".";
    } else {
      pill.textContent = "live";
      pill.className = "pill live";
    }
    $("banner").textContent = banner;
    $("banner").hidden = !banner;
    const errors = c && c.errors ? c.errors : [];
    $("errors").textContent = errors.length ? "Read errors: " + errors.join("; ") : "";
    $("errors").hidden = !errors.length;
    document.body.dataset.window = c && c.window ? c.window.update_time : "";
  }

  function renderStatus() {
    const rows = state.current ? state.current.status : null;
    fillBody(
      $("status-table").tBodies[0],
      (rows || []).map((r) => [{ text: r[0] }, { text: r[1] }])
    );
    $("status-empty").hidden = !!(rows && rows.length);
  }

  function onCurrent(current) {
    const previous = state.current && state.current.window ? state.current.window.update_time : null;
    state.current = current;
    state.staleness = current.staleness;
    renderHeader();
    renderStatus();
    if (!state.replay) renderWindowArea();
    const now = current.window ? current.window.update_time : null;
    if (now !== previous || !state.history) loadHistory();
  }

  // --- history: stuck table, series, scrubber ---

  let historyRequest = 0;

  async function loadHistory() {
    const ticket = ++historyRequest;
    try {
      const response = await fetch("/api/history?span=" + encodeURIComponent(state.span), { cache: "no-store" });
      if (!response.ok) throw new Error("history: HTTP " + response.status);
      const history = await response.json();
      if (ticket !== historyRequest) return; // a newer request is on its way
      state.history = history;
      renderStuck();
      renderSeriesSelect();
      renderSeries();
      renderScrubber();
    } catch (error) {
      $("stuck-caption").textContent = "(could not load the history)";
    }
  }

  function renderStuck() {
    const h = state.history;
    const labels = { "15m": "last 15 min", "1h": "last hour", "1d": "last day" };
    $("stuck-caption").textContent =
      "— " + labels[h.span] + " before " + timeOf(h.reference) + " UTC, " + h.stuck_windows + " windows";
    fillBody(
      $("stuck-table").tBodies[0],
      h.stuck.map((r) => [
        { text: r.level },
        { text: r.out, num: true },
        { text: r.exits, num: true },
        { text: r.back, num: true },
        { text: r.forward, num: true },
        { text: percent(r.exit_share), num: true },
        { text: percent(r.back_share), num: true },
      ])
    );
  }

  function renderSeriesSelect() {
    const select = $("series-level");
    const order = state.history.series.order;
    if (state.level === null || !order.includes(state.level)) {
      // the busiest level of the latest window, to start with
      const s = state.history.series;
      let best = null;
      for (const level of order) {
        const values = s.levels[level];
        if (best === null || values[values.length - 1] > s.levels[best][s.levels[best].length - 1]) best = level;
      }
      state.level = best;
    }
    const options = order.map((level, i) => {
      const option = document.createElement("option");
      option.value = String(i);
      option.textContent = level;
      option.selected = level === state.level;
      return option;
    });
    select.replaceChildren(...options);
    select.disabled = !order.length;
  }

  function renderSeries() {
    const s = state.history.series;
    const level = state.level;
    const values = level !== null && s.levels[level] ? s.levels[level] : s.windows.map(() => 0);
    $("series-level-head").textContent = level === null ? "Level" : level;
    const rows = [];
    for (let i = s.windows.length - 1; i >= 0; i--) {
      rows.push([{ text: timeOf(s.windows[i]) }, { text: s.total[i], num: true }, { text: values[i], num: true }]);
    }
    fillBody($("series-table").tBodies[0], rows);
    if (!s.windows.length) {
      clearPlot("series-chart");
      return;
    }
    const x = s.windows.map(timeOf);
    const traces = [
      {
        type: "scatter",
        mode: "lines+markers",
        name: "all players",
        x: x,
        y: s.total,
        line: { color: COLORS.total },
        marker: { size: 4 },
        hovertemplate: "players: %{y}<extra>all players</extra>",
      },
    ];
    if (level !== null) {
      traces.push({
        type: "scatter",
        mode: "lines+markers",
        name: plotText(shortLabel(level)),
        x: x,
        y: values,
        yaxis: "y2",
        line: { color: COLORS.level },
        marker: { size: 4 },
        customdata: values.map(() => plotText(level)),
        hovertemplate: "players: %{y}<extra>%{customdata}</extra>",
      });
    }
    plot(
      "series-chart",
      traces,
      Object.assign({}, baseLayout, {
        height: 300,
        margin: { l: 8, r: 8, t: 28, b: 8 },
        hovermode: "x unified",
        showlegend: true,
        legend: { orientation: "h", x: 0, y: 1.15 },
        xaxis: { type: "date", automargin: true, title: { text: "window end (UTC)" } },
        yaxis: {
          rangemode: "tozero",
          automargin: true,
          title: { text: "all players" },
          fixedrange: true,
          tickformat: "d",
        },
        yaxis2: {
          rangemode: "tozero",
          overlaying: "y",
          side: "right",
          automargin: true,
          fixedrange: true,
          showgrid: false,
          title: { text: "level" },
          tickmode: "auto",
          tickformat: "d",
          tickfont: { color: COLORS.level },
        },
      })
    );
  }

  function renderScrubber() {
    const windows = state.history.windows;
    const scrubber = $("scrubber");
    scrubber.disabled = windows.length === 0;
    scrubber.max = String(Math.max(0, windows.length - 1));
    if (state.replay && windows.includes(state.replayEnd)) {
      scrubber.value = String(windows.indexOf(state.replayEnd));
    } else if (!state.replay) {
      scrubber.value = scrubber.max;
    }
    $("scrub-label").textContent = state.replay ? timeOf(state.replayEnd) + " UTC" : "live";
  }

  // --- replay ---

  let replayRequest = 0;
  let scrubTimer = null;

  async function replay(windowEnd) {
    const ticket = ++replayRequest;
    $("scrub-label").textContent = timeOf(windowEnd) + " UTC";
    try {
      const response = await fetch("/api/window/" + encodeURIComponent(windowEnd), { cache: "no-store" });
      if (!response.ok) throw new Error("window: HTTP " + response.status);
      const view = await response.json();
      if (ticket !== replayRequest) return;
      state.replay = view;
      state.replayEnd = windowEnd;
      $("live-button").disabled = false;
      $("replay-banner").textContent =
        "Replaying the window ending " + timeOf(windowEnd) + " UTC. Press Live to follow the pipeline again.";
      $("replay-banner").hidden = false;
      renderWindowArea();
    } catch (error) {
      $("scrub-label").textContent = "could not load " + timeOf(windowEnd);
    }
  }

  function goLive() {
    replayRequest++;
    state.replay = null;
    state.replayEnd = null;
    $("live-button").disabled = true;
    $("replay-banner").hidden = true;
    if (state.history) renderScrubber();
    renderWindowArea();
  }

  // --- wiring ---

  function connect() {
    const source = new EventSource("/events");
    source.addEventListener("open", () => {
      state.connected = true;
      renderHeader();
    });
    source.addEventListener("error", () => {
      state.connected = source.readyState === EventSource.OPEN;
      renderHeader();
    });
    source.addEventListener("current", (event) => {
      state.connected = true;
      onCurrent(JSON.parse(event.data));
    });
    source.addEventListener("status", (event) => {
      state.connected = true;
      state.staleness = JSON.parse(event.data);
      renderHeader();
    });
  }

  function start() {
    $("span").addEventListener("change", () => {
      state.span = $("span").value;
      $("stuck-caption").textContent = "— loading…";
      loadHistory();
    });
    $("series-level").addEventListener("change", () => {
      state.level = state.history.series.order[Number($("series-level").value)];
      renderSeries();
    });
    $("scrubber").addEventListener("input", () => {
      const windows = state.history ? state.history.windows : [];
      const windowEnd = windows[Number($("scrubber").value)];
      if (!windowEnd) return;
      clearTimeout(scrubTimer);
      scrubTimer = setTimeout(() => replay(windowEnd), 120);
    });
    $("live-button").addEventListener("click", goLive);
    fetch("/api/current", { cache: "no-store" })
      .then((response) => (response.ok ? response.json() : null))
      .then((current) => {
        if (current && !state.current) onCurrent(current);
      })
      .catch(() => {});
    connect();
  }

  start();
})();
