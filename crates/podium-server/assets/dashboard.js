// Podium monitoring dashboard. Plain JS + vendored uPlot (window.uPlot), no build step.
// Polls the /v1/monitor/* JSON endpoints every 2 s and redraws. After every refresh it writes
// a JSON summary into <pre id="render-check"> (read by an automated browser test).
(function () {
  "use strict";

  const POLL_MS = 2000;
  const FETCH_TIMEOUT_MS = 10000;
  const CHART_H = 240;
  const PACING_LINES = 5;
  const CHART_NAMES = ["rate", "latency", "stage_p99", "model_p99", "prediction_hist", "reliability", "pacing"];
  const STAGES = ["admit", "retrieve", "hydrate", "rank", "score", "value", "pod"];
  const PALETTE = ["#2563eb", "#dc2626", "#d97706", "#059669", "#7c3aed", "#db2777", "#0891b2",
                   "#65a30d", "#92400e", "#475569", "#0f766e", "#9333ea"];
  const ENDPOINTS = {
    ready: "/readyz",
    live: "/v1/monitor/live?seconds=300",
    drift: "/v1/monitor/drift?minutes=60",
    calibration: "/v1/monitor/calibration?hours=24",
    canaries: "/v1/monitor/canaries",
    alerts: "/v1/monitor/alerts",
  };

  const state = {
    refreshes: 0,
    driftSel: null,   // "model|version"
    calibSel: null,   // "model|version|task"
    lastCalib: null,
    lastDrift: null,
    histEdges: [],
    relMax: 1,
  };
  const charts = {};  // name -> {u, key, el, nodata, data, height}

  // ---------- small helpers ----------
  const $ = (id) => document.getElementById(id);
  const arr = (v) => (Array.isArray(v) ? v : []);
  const num = (v) => (typeof v === "number" && isFinite(v) ? v : null);
  const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g, (c) =>
    ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const DASH = "–";

  function fmtNum(v, digits) {
    v = num(v);
    if (v == null) return DASH;
    const a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(2) + "G";
    if (a >= 1e6) return (v / 1e6).toFixed(2) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
    if (digits != null) return v.toFixed(digits);
    if (a >= 100) return v.toFixed(0);
    if (a >= 10) return v.toFixed(1);
    if (a === 0) return "0";
    if (a < 0.001) return v.toExponential(1);
    return v.toPrecision(3).replace(/\.?0+$/, "");
  }
  function fmtUs(v) {
    v = num(v);
    if (v == null) return DASH;
    const a = Math.abs(v);
    if (a >= 1e6) return (v / 1e6).toFixed(2) + " s";
    if (a >= 1e3) return (v / 1e3).toFixed(a >= 1e4 ? 1 : 2) + " ms";
    return Math.round(v) + " µs";
  }
  function fmtUsAxis(v) {
    if (v == null) return "";
    const a = Math.abs(v);
    if (a >= 1e6) return +(v / 1e6).toFixed(2) + " s";
    if (a >= 1e3) return +(v / 1e3).toFixed(2) + " ms";
    return +v.toFixed(a < 10 ? 1 : 0) + " µs";
  }
  function fmtPct(v, digits) {  // v is a fraction
    v = num(v);
    if (v == null) return DASH;
    return (v * 100).toFixed(digits == null ? 1 : digits) + "%";
  }
  function fmtPctAxis(v) { return v == null ? "" : +(v * 100).toFixed(2) + "%"; }
  function fmtMoney(micros) {
    const v = num(micros);
    return v == null ? DASH : fmtNum(v / 1e6, Math.abs(v / 1e6) < 100 ? 2 : 0);
  }
  function fmtP(v) {
    v = num(v);
    if (v == null) return DASH;
    if (v === 0) return "0";
    return v < 1e-3 ? v.toExponential(1) : v.toFixed(3);
  }
  function fmtTime(ms) {
    const v = num(ms);
    if (v == null) return DASH;
    const d = new Date(v);
    const p = (x) => String(x).padStart(2, "0");
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
  }
  function pill(text, cls) {
    return `<span class="pill ${esc(cls || "")}">${esc(text)}</span>`;
  }
  function psiBand(psi, serverBand) {
    if (serverBand === "stable" || serverBand === "moderate" || serverBand === "major") return serverBand;
    const v = num(psi);
    if (v == null) return null;
    return v < 0.1 ? "stable" : v <= 0.25 ? "moderate" : "major";
  }
  function mean(xs) {
    const f = xs.map(num).filter((x) => x != null);
    return f.length ? f.reduce((a, b) => a + b, 0) / f.length : null;
  }
  function lastFinite(xs) {
    for (let i = xs.length - 1; i >= 0; i--) if (num(xs[i]) != null) return xs[i];
    return null;
  }
  function get(obj, ...path) {
    for (const k of path) {
      if (obj == null || typeof obj !== "object") return null;
      obj = obj[k];
    }
    return obj;
  }
  // Union of timestamps (ms) of several series -> sorted seconds array and per-series aligned values.
  function alignSeries(list, valueFn) {
    const ts = new Set();
    list.forEach((s) => s.forEach((p) => { const t = num(get(p, "t_ms")); if (t != null) ts.add(t); }));
    const xs = Array.from(ts).sort((a, b) => a - b);
    const idx = new Map(xs.map((t, i) => [t, i]));
    const ys = list.map((s) => {
      const out = new Array(xs.length).fill(null);
      s.forEach((p) => {
        const t = num(get(p, "t_ms"));
        if (t != null) out[idx.get(t)] = num(valueFn(p));
      });
      return out;
    });
    return [xs.map((t) => t / 1000), ys];
  }

  // ---------- chart management ----------
  function axisStyle(extra) {
    return Object.assign({
      stroke: "#6b7280",
      grid: { stroke: "#eef0f3", width: 1 },
      ticks: { stroke: "#e3e6ea", width: 1 },
      font: "11px system-ui, sans-serif",
    }, extra || {});
  }
  function lineSeries(label, color, extra) {
    return Object.assign({ label, stroke: color, width: 1.5, spanGaps: false, points: { show: false } }, extra || {});
  }
  function chartWidth(el) {
    const w = el.clientWidth || (el.parentElement && el.parentElement.clientWidth) || 0;
    return Math.max(240, Math.floor(w || 480));
  }

  // (Re)creates the chart when its series layout (key) changes, then sets data.
  function drawChart(name, key, makeOpts, data, noDataText) {
    const el = $("chart-" + name);
    if (!el) throw new Error("missing container for chart " + name);
    let c = charts[name];
    if (!c || c.key !== key) {
      if (c) { if (c.ro) c.ro.disconnect(); c.u.destroy(); }
      el.innerHTML = "";
      const opts = makeOpts();
      opts.width = chartWidth(el);
      opts.height = opts.height || CHART_H;
      const u = new uPlot(opts, data, el);
      const nodata = document.createElement("div");
      nodata.className = "nodata";
      el.appendChild(nodata);
      c = charts[name] = { u, key, el, nodata, data, height: opts.height, ro: null };
      // Follow the container's width (window resizes, a scrollbar appearing, grid reflow).
      if (typeof ResizeObserver === "function") {
        const cc = c;
        cc.ro = new ResizeObserver(() => {
          const w = chartWidth(el);
          if (Math.abs(w - cc.u.width) >= 1) cc.u.setSize({ width: w, height: cc.height });
        });
        cc.ro.observe(el);
      }
    } else {
      c.u.setData(data);
      c.data = data;
    }
    const points = data[0] ? data[0].length : 0;
    const empty = points === 0 || data.length < 2 || !hasFinite(data);
    c.nodata.textContent = empty ? (noDataText || "no data yet") : "";
    c.nodata.style.display = empty ? "flex" : "none";
    return c;
  }
  function hasFinite(data) {
    for (let s = 1; s < data.length; s++) {
      const ys = data[s] || [];
      for (let i = 0; i < ys.length; i++) if (typeof ys[i] === "number" && isFinite(ys[i])) return true;
    }
    return false;
  }
  function countNonZero(data) {
    let n = 0;
    for (let s = 1; s < data.length; s++) {
      const ys = data[s] || [];
      for (let i = 0; i < ys.length; i++) {
        const v = ys[i];
        if (typeof v === "number" && isFinite(v) && v !== 0) n++;
      }
    }
    return n;
  }
  function paintedPixels(u) {
    try {
      const cv = (u.ctx && u.ctx.canvas) || u.root.querySelector("canvas");
      if (!cv || !cv.width || !cv.height) return 0;
      const d = cv.getContext("2d").getImageData(0, 0, cv.width, cv.height).data;
      let n = 0;
      for (let i = 3; i < d.length; i += 4) if (d[i] !== 0) n++;
      return n;
    } catch (e) {
      return -1;
    }
  }
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      Object.values(charts).forEach((c) => c.u.setSize({ width: chartWidth(c.el), height: c.height }));
    }, 150);
  });

  const timeAxes = (yFmt, extraAxes) => [axisStyle(), axisStyle({ size: 64, values: (u, s) => s.map(yFmt) })].concat(extraAxes || []);

  // ---------- sections ----------
  function renderHeader(ready, readyErr, live, alerts) {
    const r = $("kpi-ready");
    if (readyErr && !ready) r.innerHTML = pill("unreachable", "bad");
    else if (ready && ready.ready === true) r.innerHTML = pill("ready", "ready");
    else if (ready) r.innerHTML = pill("not ready", "notready");
    const pts = arr(live && live.points);
    if (live) {
      const recent = pts.slice(-5).map((p) => get(p, "decisions"));
      const rate = mean(recent);
      $("kpi-rate").textContent = rate == null ? "no data yet" : fmtNum(rate, rate < 100 ? 1 : 0);
      const p99 = lastFinite(pts.map((p) => get(p, "latency_us", "total", "p99")));
      $("kpi-p99").textContent = p99 == null ? "no data yet" : fmtUs(p99);
    }
    if (alerts) {
      const n = arr(alerts.alerts).length;
      $("kpi-alerts").innerHTML = n ? pill(String(n), "warn") : pill("0", "ok");
    }
  }

  function renderLive(live) {
    const pts = arr(live.points).filter((p) => num(get(p, "t_ms")) != null)
      .slice().sort((a, b) => a.t_ms - b.t_ms);
    const xs = pts.map((p) => p.t_ms / 1000);
    const col = (f) => pts.map((p) => num(f(p)));

    drawChart("rate", "rate", () => ({
      series: [{}, lineSeries("decisions/s", PALETTE[0], { scale: "rate", width: 2, value: (u, v) => fmtNum(v) }),
               lineSeries("shed/s", PALETTE[1], { scale: "aux", value: (u, v) => fmtNum(v) }),
               lineSeries("degraded/s", PALETTE[2], { scale: "aux", value: (u, v) => fmtNum(v) })],
      scales: { rate: { range: (u, mn, mx) => [0, Math.max(1, (mx || 0) * 1.1)] },
                aux: { range: (u, mn, mx) => [0, Math.max(1, (mx || 0) * 1.1)] } },
      axes: [axisStyle(),
             axisStyle({ scale: "rate", size: 56, label: "decisions/s", labelSize: 16, values: (u, s) => s.map((v) => fmtNum(v)) }),
             axisStyle({ scale: "aux", side: 1, size: 50, label: "shed / degraded /s", labelSize: 16,
                         grid: { show: false }, values: (u, s) => s.map((v) => fmtNum(v)) })],
    }), [xs, col((p) => p.decisions), col((p) => p.shed), col((p) => p.degraded)]);

    const usVal = { value: (u, v) => fmtUs(v) };
    drawChart("latency", "latency", () => ({
      series: [{}, lineSeries("p50", PALETTE[3], usVal), lineSeries("p90", PALETTE[2], usVal),
               lineSeries("p99", PALETTE[1], Object.assign({ width: 2 }, usVal))],
      scales: { y: { range: (u, mn, mx) => [0, Math.max(10, (mx || 0) * 1.1)] } },
      axes: timeAxes(fmtUsAxis),
    }), [xs, col((p) => get(p, "latency_us", "total", "p50")), col((p) => get(p, "latency_us", "total", "p90")),
         col((p) => get(p, "latency_us", "total", "p99"))]);

    drawChart("stage_p99", "stage_p99", () => ({
      series: [{}].concat(STAGES.map((s, i) => lineSeries(s, PALETTE[i], usVal))),
      scales: { y: { range: (u, mn, mx) => [0, Math.max(10, (mx || 0) * 1.1)] } },
      axes: timeAxes(fmtUsAxis),
    }), [xs].concat(STAGES.map((s) => col((p) => get(p, "latency_us", s, "p99")))));

    // per-model p99
    const models = arr(live.models);
    const withSeries = models.filter((m) => arr(m && m.series).length > 0);
    const labels = withSeries.map((m) => `${m.model} v${m.version} (${m.stage})`);
    const [mx, mys] = alignSeries(withSeries.map((m) => arr(m.series)), (p) => p.p99_us);
    drawChart("model_p99", "model_p99:" + labels.join("\u0001"), () => ({
      series: [{}].concat(labels.map((l, i) => lineSeries(l, PALETTE[i % PALETTE.length],
        Object.assign({ spanGaps: true, points: { show: true, size: 4 } }, usVal)))),
      scales: { y: { range: (u, mn, mx2) => [0, Math.max(10, (mx2 || 0) * 1.1)] } },
      axes: timeAxes(fmtUsAxis),
    }), [mx].concat(mys));

    // models table
    if (!models.length) {
      $("models-table").innerHTML = `<div class="empty">no data yet</div>`;
    } else {
      const rows = models.map((m) => {
        m = m || {};
        const stCls = m.stage === "production" ? "ok" : m.stage === "canary" ? "waiting" : "";
        const pct = num(m.percent);
        return `<tr><td>${esc(m.model)}</td><td>${esc(m.version)}</td><td>${pill(m.stage || "?", stCls)}</td>
          <td class="num">${pct == null ? DASH : fmtNum(pct) + "%"}</td>
          <td class="num">${fmtNum(m.batches_per_s)}</td><td class="num">${fmtNum(m.rows_per_s)}</td>
          <td class="num">${fmtUs(m.p50_us)}</td><td class="num">${fmtUs(m.p99_us)}</td>
          <td class="num">${fmtPct(m.error_rate, 2)}</td></tr>`;
      }).join("");
      $("models-table").innerHTML = `<table><thead><tr><th>Model</th><th>Version</th><th>Stage</th><th class="num">Percent</th>
        <th class="num">Batches/s</th><th class="num">Rows/s</th><th class="num">P50</th><th class="num">P99</th>
        <th class="num">Error rate</th></tr></thead><tbody>${rows}</tbody></table>`;
    }

    renderPacing(arr(live.pacing));
  }

  function renderPacing(items) {
    const chartItems = items.filter((p) => p && num(p.budget_micros) > 0 && arr(p.series).length > 0).slice(0, PACING_LINES);
    const seriesOpts = [{}];
    const lists = [];
    chartItems.forEach((p, i) => {
      const color = PALETTE[i % PALETTE.length];
      const b = p.budget_micros;
      const v = (u, x) => fmtPct(x, 1);
      seriesOpts.push(lineSeries(`${p.line_item} spent`, color, { width: 2, value: v }));
      seriesOpts.push(lineSeries(`${p.line_item} target`, color, { dash: [5, 4], width: 1.25, value: v }));
      lists.push({ s: arr(p.series), f: (q) => num(q.spent_micros) == null ? null : q.spent_micros / b });
      lists.push({ s: arr(p.series), f: (q) => num(q.target_micros) == null ? null : q.target_micros / b });
    });
    // alignSeries takes one value fn; align each list separately on the shared x.
    const ts = new Set();
    lists.forEach((l) => l.s.forEach((q) => { const t = num(get(q, "t_ms")); if (t != null) ts.add(t); }));
    const xs = Array.from(ts).sort((a, b) => a - b);
    const idx = new Map(xs.map((t, i) => [t, i]));
    const ys = lists.map((l) => {
      const out = new Array(xs.length).fill(null);
      l.s.forEach((q) => { const t = num(get(q, "t_ms")); if (t != null) out[idx.get(t)] = num(l.f(q)); });
      return out;
    });
    const key = "pacing:" + chartItems.map((p) => p.line_item).join("\u0001");
    drawChart("pacing", key, () => ({
      series: seriesOpts.map((s, i) => (i === 0 ? s : Object.assign({}, s, { spanGaps: true }))),
      scales: { y: { range: (u, mn, mx) => [0, Math.max(0.01, (mx || 0) * 1.1)] } },
      axes: [axisStyle(), axisStyle({ size: 56, label: "% of budget", labelSize: 16, values: (u, s) => s.map(fmtPctAxis) })],
    }), [xs.map((t) => t / 1000)].concat(ys));

    if (!items.length) {
      $("pacing-table").innerHTML = `<div class="empty">no data yet</div>`;
      return;
    }
    const rows = items.map((p) => {
      p = p || {};
      const budget = num(p.budget_micros), spent = num(p.spent_micros), target = num(p.target_micros);
      const ofBudget = budget > 0 && spent != null ? spent / budget : null;
      const pace = target > 0 && spent != null ? spent / target : null;
      const paceCls = pace == null ? "" : Math.abs(pace - 1) > 0.2 ? "bad" : Math.abs(pace - 1) > 0.1 ? "warn" : "ok";
      return `<tr><td>${esc(p.line_item)}${p.guaranteed ? ' <span class="pill">G</span>' : ""}</td><td>${esc(p.campaign)}</td>
        <td class="num">${fmtMoney(budget)}</td><td class="num">${fmtMoney(spent)}</td><td class="num">${fmtPct(ofBudget)}</td>
        <td class="num">${fmtMoney(target)}</td><td class="num">${pace == null ? DASH : pill(fmtPct(pace, 0), paceCls)}</td>
        <td class="num">${fmtNum(p.multiplier, num(p.multiplier) == null ? null : 2)}</td>
        <td class="num">${fmtPct(p.throttle, 0)}</td></tr>`;
    }).join("");
    $("pacing-table").innerHTML = `<table><thead><tr><th>Line item</th><th>Campaign</th><th class="num">Budget</th>
      <th class="num">Spent</th><th class="num">% budget</th><th class="num">Target</th><th class="num">Spent/target</th>
      <th class="num">Multiplier</th><th class="num">Throttle</th></tr></thead><tbody>${rows}</tbody></table>`;
  }

  function renderCanaries(data) {
    const list = arr(data.canaries);
    if (!list.length) {
      $("canaries").innerHTML = `<div class="empty">no canaries running</div>`;
      return;
    }
    const fmtVal = (metric, v) => (metric === "latency" ? fmtUs(v) : metric === "errors" ? fmtPct(v, 2) : fmtNum(v));
    $("canaries").innerHTML = `<div class="cards">` + list.map((c) => {
      c = c || {};
      const verdict = c.verdict || "waiting";
      const tests = arr(c.tests);
      const rows = tests.map((t) => {
        t = t || {};
        return `<tr class="${t.breach ? "breach" : ""}"><td>${esc(t.metric)}</td><td>${esc(t.test)}</td>
          <td class="num">${fmtVal(t.metric, t.canary)}</td><td class="num">${fmtVal(t.metric, t.production)}</td>
          <td class="num">${fmtP(t.p_value)}</td><td>${t.breach ? pill("breach", "breach") : pill("ok", "ok")}</td>
          <td class="muted wrap">${esc(t.detail)}</td></tr>`;
      }).join("");
      const pct = num(c.percent), win = num(c.window_s);
      return `<div class="canary ${verdict === "breach" ? "breach" : ""}">
        <div class="title"><strong>${esc(c.model)}: v${esc(c.canary_version)} vs v${esc(c.production_version)}</strong>
          ${pill(verdict, verdict)}</div>
        <div class="meta">${pct == null ? "" : fmtNum(pct) + "% of traffic · "}window ${win == null ? DASH : fmtNum(win, 0) + " s"}</div>
        ${tests.length ? `<div class="tablewrap"><table><thead><tr><th>Metric</th><th>Test</th><th class="num">Canary</th>
          <th class="num">Production</th><th class="num">p-value</th><th></th><th>Detail</th></tr></thead>
          <tbody>${rows}</tbody></table></div>` : `<div class="empty">no tests yet</div>`}
      </div>`;
    }).join("") + `</div>`;
  }

  function renderDrift(data) {
    state.lastDrift = data;
    $("drift-window").textContent = num(data.minutes) != null ? `last ${data.minutes} min` : "";
    const models = arr(data.models).filter((m) => m && typeof m === "object");
    const keyOf = (m) => `${m.model}|${m.version}`;
    const sel = $("drift-select");
    const opts = models.map((m) => `<option value="${esc(keyOf(m))}">${esc(`${m.model} v${m.version} (${m.stage || "?"})`)}</option>`).join("");
    if (sel.dataset.opts !== opts) { sel.innerHTML = opts; sel.dataset.opts = opts; }
    if (!models.some((m) => keyOf(m) === state.driftSel)) state.driftSel = models.length ? keyOf(models[0]) : null;
    sel.value = state.driftSel || "";
    sel.style.display = models.length ? "" : "none";
    const m = models.find((x) => keyOf(x) === state.driftSel) || null;

    // prediction histogram
    const pred = (m && m.prediction) || {};
    const ref = arr(pred.reference), live = arr(pred.live);
    const n = Math.max(ref.length, live.length);
    const edges = arr(pred.edges);
    state.histEdges = edges.length === n + 1 ? edges : [];
    const shares = (counts) => {
      const total = counts.reduce((a, b) => a + (num(b) || 0), 0);
      return Array.from({ length: n }, (_, i) => (total > 0 && i < counts.length ? (num(counts[i]) || 0) / total : null));
    };
    const xs = Array.from({ length: n }, (_, i) => i);
    const binLabel = (i) => {
      const e = state.histEdges;
      if (i == null || !e.length || i < 0 || i >= e.length - 1) return i == null ? DASH : "bin " + i;
      return `[${fmtNum(e[i])}, ${fmtNum(e[i + 1])})`;
    };
    drawChart("prediction_hist", "hist", () => ({
      series: [
        { label: "bin", value: (u, v) => binLabel(v) },
        { label: "reference", stroke: "#64748b", fill: "rgba(100,116,139,0.30)", width: 1,
          paths: uPlot.paths.bars({ size: [0.92, Infinity] }), points: { show: false }, value: (u, v) => fmtPct(v, 1) },
        { label: "live", stroke: "#c2410c", fill: "rgba(234,88,12,0.70)", width: 1,
          paths: uPlot.paths.bars({ size: [0.5, Infinity] }), points: { show: false }, value: (u, v) => fmtPct(v, 1) },
      ],
      scales: {
        x: { time: false, range: (u, mn, mx) => (mn == null ? [0, 1] : [mn - 0.5, mx + 0.5]) },
        y: { range: (u, mn, mx) => [0, Math.max(0.01, (mx || 0) * 1.1)] },
      },
      axes: [axisStyle({ space: 40, incrs: [1, 2, 4, 5, 10, 20, 50, 100], label: "prediction (bin centre)", labelSize: 16,
                         values: (u, s) => s.map((i) => {
                           const e = state.histEdges;
                           if (!Number.isInteger(i)) return "";
                           if (e.length && i >= 0 && i < e.length - 1 && num(e[i]) != null && num(e[i + 1]) != null)
                             return fmtNum((e[i] + e[i + 1]) / 2);
                           return String(i);
                         }) }),
             axisStyle({ size: 56, values: (u, s) => s.map(fmtPctAxis) })],
    }), [xs, shares(ref), shares(live)],
    !m ? "no data yet" : n === 0 ? "no data yet (" + (pred.band || "no rows") + ")" : null);

    const band = pred.band || (m ? "" : null);
    $("drift-summary").innerHTML = !m ? "no data yet" :
      `${pill(band || "?", psiBand(pred.psi_reference, band) || "")} PSI vs reference ${fmtNum(pred.psi_reference)},
       JS ${fmtNum(pred.js_reference)} · PSI vs production ${fmtNum(pred.psi_production)} ·
       ${fmtNum(m.sampled_rows, 0)} rows sampled${m.has_reference === false ? " · no reference" : ""}`;

    // features
    const feats = arr(m && m.features);
    if (!feats.length) {
      $("feature-table").innerHTML = `<div class="empty">${m ? "no feature data yet" : "no data yet"}</div>`;
      return;
    }
    const maxPsi = Math.max(0.3, ...feats.map((f) => num(f && f.psi) || 0));
    $("feature-table").innerHTML = `<table><thead><tr><th>Feature</th><th>PSI</th><th></th><th class="num">JS</th>
      <th class="num">Missing</th><th class="num">Ref. missing</th><th class="num">Sampled</th></tr></thead><tbody>` +
      feats.map((f) => {
        f = f || {};
        const psi = num(f.psi);
        const b = psiBand(psi, f.band);
        const w = psi == null ? 0 : Math.max(1, Math.round((Math.min(psi, maxPsi) / maxPsi) * 80));
        const miss = num(f.missing_share), rmiss = num(f.reference_missing_share);
        const missCls = miss != null && rmiss != null && miss - rmiss > 0.05 ? ' style="color:var(--red);font-weight:600"' : "";
        return `<tr><td>${esc(f.name)}</td>
          <td><span class="psibar ${b || "none"}" style="width:${w}px"></span> ${fmtNum(psi, psi == null ? null : 3)}</td>
          <td>${pill(f.band || b || "?", b || "")}</td><td class="num">${fmtNum(f.js)}</td>
          <td class="num"${missCls}>${fmtPct(miss)}</td><td class="num">${fmtPct(rmiss)}</td>
          <td class="num">${fmtNum(f.sampled, 0)}</td></tr>`;
      }).join("") + `</tbody></table>`;
  }

  function renderCalibration(data) {
    state.lastCalib = data;
    const h = num(data.hours), pend = num(data.pending_ads);
    $("calib-window").textContent = (h != null ? `last ${h} h` : "") + (pend != null ? ` · ${fmtNum(pend, 0)} ads pending labels` : "");
    const rows = arr(data.models).filter((r) => r && r.segment === "all");
    const keyOf = (r) => `${r.model}|${r.version}|${r.task}`;
    if (!rows.some((r) => keyOf(r) === state.calibSel)) state.calibSel = rows.length ? keyOf(rows[0]) : null;
    const sel = $("calib-select");
    const opts = rows.map((r) => `<option value="${esc(keyOf(r))}">${esc(`${r.model} v${r.version} · ${r.task}`)}</option>`).join("");
    if (sel.dataset.opts !== opts) { sel.innerHTML = opts; sel.dataset.opts = opts; }
    sel.value = state.calibSel || "";
    sel.style.display = rows.length ? "" : "none";

    if (!rows.length) {
      $("calib-table").innerHTML = `<div class="empty">no data yet</div>`;
    } else {
      $("calib-table").innerHTML = `<table><thead><tr><th>Model</th><th>Version</th><th>Task</th><th class="num">Impressions</th>
        <th class="num">Ratio</th><th class="num">NE</th><th class="num">ECE</th></tr></thead><tbody>` +
        rows.map((r) => {
          const ratio = num(r.calibration_ratio);
          const rc = ratio == null ? "" : Math.abs(ratio - 1) > 0.2 ? "bad" : Math.abs(ratio - 1) > 0.1 ? "warn" : "ok";
          return `<tr class="clickable ${keyOf(r) === state.calibSel ? "sel" : ""}" data-key="${esc(keyOf(r))}">
            <td>${esc(r.model)}</td><td>${esc(r.version)}</td><td>${esc(r.task)}</td>
            <td class="num">${fmtNum(r.impressions, 0)}</td>
            <td class="num">${ratio == null ? DASH : pill(ratio.toFixed(3), rc)}</td>
            <td class="num">${fmtNum(r.normalized_entropy, num(r.normalized_entropy) == null ? null : 3)}</td>
            <td class="num">${fmtNum(r.ece, num(r.ece) == null ? null : 4)}</td></tr>`;
        }).join("") + `</tbody></table>`;
    }

    const row = rows.find((r) => keyOf(r) === state.calibSel) || null;
    const bins = arr(row && row.reliability)
      .filter((b) => b && num(b.mean_predicted) != null)
      .slice().sort((a, b) => a.mean_predicted - b.mean_predicted);
    const xs = bins.map((b) => b.mean_predicted);
    const obs = bins.map((b) => num(b.observed_rate));
    state.relMax = xs.length ? Math.max(1e-6, ...xs, ...obs.filter((v) => v != null)) * 1.05 : 0.1;
    drawChart("reliability", "rel", () => ({
      series: [
        { label: "mean predicted", value: (u, v) => fmtPct(v, 2) },
        lineSeries("observed rate", PALETTE[0], { width: 2, points: { show: true, size: 6, fill: PALETTE[0] },
                                                  value: (u, v) => fmtPct(v, 2) }),
        lineSeries("perfect calibration", "#9ca3af", { dash: [4, 4], width: 1, value: (u, v) => fmtPct(v, 2) }),
      ],
      scales: { x: { time: false, range: () => [0, state.relMax] }, y: { range: () => [0, state.relMax] } },
      axes: [axisStyle({ label: "mean predicted", labelSize: 16, values: (u, s) => s.map(fmtPctAxis) }),
             axisStyle({ size: 56, label: "observed rate", labelSize: 16, values: (u, s) => s.map(fmtPctAxis) })],
    }), [xs, obs, xs.slice()]);
  }

  function renderAlerts(data) {
    const list = arr(data.alerts).map((a, i) => [a || {}, i])
      .sort((x, y) => (num(y[0].at_ms) ?? -Infinity) - (num(x[0].at_ms) ?? -Infinity) || y[1] - x[1])
      .map((x) => x[0]);
    if (!list.length) {
      $("alerts").innerHTML = `<li class="empty" style="display:block">no alerts</li>`;
      return;
    }
    const srcCls = { guardrail: "bad", regression: "bad", drift: "warn", calibration: "warn" };
    $("alerts").innerHTML = list.map((a) => `<li>
      <span class="when">${esc(fmtTime(a.at_ms))}</span>
      <span>${pill(a.source || "?", srcCls[a.source] || "")}</span>
      <span><strong>${esc(a.model || "")}${a.version != null ? " v" + esc(a.version) : ""}</strong> ${esc(a.rule || "")}
        ${a.detail ? "· " + esc(a.detail) : ""}</span>
      ${a.action ? `<span class="action">→ ${esc(a.action)}</span>` : ""}
    </li>`).join("");
  }

  // ---------- fetching / refresh loop ----------
  async function fetchJSON(path, allowNotOk) {
    const ctl = typeof AbortController !== "undefined" ? new AbortController() : null;
    const timer = ctl ? setTimeout(() => ctl.abort(), FETCH_TIMEOUT_MS) : null;
    try {
      const resp = await fetch(path, { cache: "no-store", headers: { Accept: "application/json" }, signal: ctl ? ctl.signal : undefined });
      const text = await resp.text();
      if (!resp.ok && !allowNotOk) throw new Error(`HTTP ${resp.status}${text ? ": " + text.slice(0, 120) : ""}`);
      let body;
      try { body = JSON.parse(text); } catch (e) {
        // /readyz may answer 503 with a non-JSON body while starting: that is "not ready", not an error.
        if (allowNotOk && !resp.ok) return { ready: false, status: resp.status };
        throw new Error(`HTTP ${resp.status}, invalid JSON: ${e.message}`);
      }
      if (body == null || typeof body !== "object") throw new Error(`HTTP ${resp.status}, unexpected JSON (${typeof body})`);
      return body;
    } catch (e) {
      if (e && e.name === "AbortError") throw new Error(`timed out after ${FETCH_TIMEOUT_MS} ms`);
      throw e;
    } finally {
      if (timer) clearTimeout(timer);
    }
  }

  function renderCheck(errors) {
    const out = { refreshes: state.refreshes, errors: errors, charts: {} };
    CHART_NAMES.forEach((name) => {
      const c = charts[name];
      if (!c) { out.charts[name] = { series: 0, points: 0, nonzero: 0, painted: 0 }; return; }
      const d = c.data || [[]];
      out.charts[name] = {
        series: Math.max(0, d.length - 1),
        points: d[0] ? d[0].length : 0,
        nonzero: countNonZero(d),
        painted: paintedPixels(c.u),
      };
    });
    $("render-check").textContent = JSON.stringify(out);
    document.body.dataset.refreshes = String(state.refreshes);
  }

  async function refresh() {
    const errors = [];
    const names = Object.keys(ENDPOINTS);
    const results = await Promise.all(names.map((k) =>
      fetchJSON(ENDPOINTS[k], k === "ready").then((v) => [v, null], (e) => [null, (e && e.message) || String(e)])));
    const got = {}, ferr = {};
    names.forEach((k, i) => {
      got[k] = results[i][0];
      ferr[k] = results[i][1];
      if (ferr[k]) errors.push(`fetch ${ENDPOINTS[k]}: ${ferr[k]}`);
    });
    state.refreshes++;

    const step = (label, fn) => {
      try { fn(); } catch (e) {
        errors.push(`render ${label}: ${(e && e.message) || e}`);
        if (window.console) console.error(e);
      }
    };
    step("header", () => renderHeader(got.ready, ferr.ready, got.live, got.alerts));
    if (got.live) step("live", () => renderLive(got.live));
    if (got.canaries) step("canaries", () => renderCanaries(got.canaries));
    if (got.drift) step("drift", () => renderDrift(got.drift));
    if (got.calibration) step("calibration", () => renderCalibration(got.calibration));
    if (got.alerts) step("alerts", () => renderAlerts(got.alerts));

    const eb = $("errors");
    eb.textContent = errors.join("\n");
    eb.className = errors.length ? "show" : "";
    $("updated").textContent = `updated ${fmtTime(Date.now()).slice(11)} · refresh #${state.refreshes}`;

    // uPlot redraws in a microtask after setData; let it run before counting pixels.
    await new Promise((r) => setTimeout(r, 0));
    try { renderCheck(errors); } catch (e) {
      $("render-check").textContent = JSON.stringify({ refreshes: state.refreshes, errors: errors.concat(["render-check: " + e.message]), charts: {} });
      document.body.dataset.refreshes = String(state.refreshes);
    }
  }

  async function loop() {
    try { await refresh(); } catch (e) { if (window.console) console.error(e); }
    setTimeout(loop, POLL_MS);
  }

  // ---------- user interaction ----------
  $("drift-select").addEventListener("change", (e) => {
    state.driftSel = e.target.value;
    if (state.lastDrift) try { renderDrift(state.lastDrift); } catch (err) { console.error(err); }
  });
  $("calib-select").addEventListener("change", (e) => {
    state.calibSel = e.target.value;
    if (state.lastCalib) try { renderCalibration(state.lastCalib); } catch (err) { console.error(err); }
  });
  $("calib-table").addEventListener("click", (e) => {
    const tr = e.target.closest && e.target.closest("tr[data-key]");
    if (!tr) return;
    state.calibSel = tr.dataset.key;
    if (state.lastCalib) try { renderCalibration(state.lastCalib); } catch (err) { console.error(err); }
  });

  if (typeof window.uPlot !== "function") {
    $("render-check").textContent = JSON.stringify({ refreshes: 0, errors: ["uPlot failed to load (/dashboard/uPlot.iife.min.js)"], charts: {} });
    $("errors").textContent = "uPlot failed to load (/dashboard/uPlot.iife.min.js)";
    $("errors").className = "show";
    return;
  }
  loop();
})();
