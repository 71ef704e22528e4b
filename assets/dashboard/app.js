// sluice's live dashboard: reads the snapshots of /dashboard/events (one per second) and draws
// them with uPlot. Plain browser JavaScript, no build step; every file comes from sluice itself.
"use strict";
(function () {
  const HISTORY = 300; // points kept per series: five minutes at one snapshot per second
  const COLORS = ["#3b7dd8", "#d8703b", "#2f9e62", "#a64bc9", "#c9a227", "#d84b6b", "#4bb4c9", "#6b7380"];
  const times = [];
  const series = new Map(); // key -> values aligned with `times`
  const charts = {};

  const fmt = (n) => (n === null || n === undefined ? "–" : Math.round(n).toLocaleString("en-US"));
  const fmtBytes = (n) => {
    const units = ["B", "KiB", "MiB", "GiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
  };
  const fmtMs = (s) => (s === null ? "–" : `${(s * 1000).toFixed(s < 0.01 ? 2 : 0)} ms`);
  const el = (id) => document.getElementById(id);
  const setText = (id, text) => { el(id).textContent = text; };

  function record(key, value) {
    let values = series.get(key);
    if (!values) {
      values = new Array(times.length - 1).fill(null);
      series.set(key, values);
    }
    values.push(value);
  }

  // What each chart plots: its series keys and labels, from the snapshot.
  function layout(s) {
    return {
      throughput: [...s.sources.map((x) => [`in:${x.name}`, `in ${x.name}`]), ...s.sinks.map((x) => [`out:${x.name}`, `out ${x.name}`])],
      buffer: [["buffer:records", "records"], ["buffer:bytes", "bytes"]],
      latency: s.sinks.flatMap((x) => [[`p50:${x.name}`, `p50 ${x.name}`], [`p99:${x.name}`, `p99 ${x.name}`]]),
      backpressure: s.sources.map((x) => [`bp:${x.name}`, x.name]),
      retries: s.sinks.map((x) => [`retry:${x.name}`, x.name]),
      concurrency: s.sinks.map((x) => [`conc:${x.name}`, x.name]),
    };
  }

  function ensureChart(name, keys) {
    const id = keys.map((k) => k[0]).join("|");
    const existing = charts[name];
    if (existing && existing.id === id) return existing;
    if (existing) existing.plot.destroy();
    const target = el(`chart-${name}`);
    const opts = {
      width: Math.max(300, target.clientWidth),
      height: 180,
      scales: { x: { time: true }, y: { range: (_u, min, max) => [0, Math.max(1, max * 1.1)] } },
      series: [{}, ...keys.map(([, label], i) => ({ label, stroke: COLORS[i % COLORS.length], width: 1.5, spanGaps: false }))],
      axes: [{}, { size: 60 }],
      legend: { live: false },
    };
    const plot = new uPlot(opts, [[]], target);
    charts[name] = { id, keys, plot };
    return charts[name];
  }

  function draw(s) {
    const rows = (id, cells) => {
      el(id).querySelector("tbody").innerHTML = cells.map((c) => `<tr>${c.map((v) => `<td>${v}</td>`).join("")}</tr>`).join("");
    };
    const esc = (t) => String(t).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
    setText("state", s.state);
    el("state").className = `badge ${s.state === "running" ? "ok" : ""}`;
    setText("ready", s.ready ? "ready" : "not ready");
    el("ready").className = `badge ${s.ready ? "ok" : "bad"}`;
    setText("updated", `updated ${new Date(s.t).toLocaleTimeString()}`);
    el("problems").innerHTML = s.problems.map((p) => `<li>${esc(p)}</li>`).join("");
    setText("received", fmt(s.totals.received));
    setText("delivered", fmt(s.totals.delivered));
    setText("dead-lettered", fmt(s.totals.dead_lettered));
    setText("dropped", fmt(s.totals.dropped));
    setText("in-flight", fmt(s.totals.in_flight));
    setText("buffer-records", `${fmt(s.buffer.records)} / ${fmt(s.buffer.max_records)}`);
    setText("buffer-bytes", `${fmtBytes(s.buffer.bytes)} / ${fmtBytes(s.buffer.max_bytes)}`);
    el("buffer-records-bar").style.width = `${Math.min(100, (100 * s.buffer.records) / s.buffer.max_records)}%`;
    el("buffer-bytes-bar").style.width = `${Math.min(100, (100 * s.buffer.bytes) / s.buffer.max_bytes)}%`;
    rows("sources", s.sources.map((x) => [esc(x.name), fmt(x.received), fmt(x.rate), `${(x.backpressure * 100).toFixed(0)}%`]));
    rows("sinks", s.sinks.map((x) => [esc(x.name), x.up ? "yes" : "no", fmt(x.delivered), fmt(x.rate), fmt(x.retried), fmt(x.dead_lettered), fmt(x.concurrency), fmtMs(x.p50), fmtMs(x.p99)]));
    rows("dead-letters", s.dead_letters.map((d) => [esc(d.sink), esc(d.code), fmt(d.count)]));

    times.push(s.t / 1000);
    for (const x of s.sources) {
      record(`in:${x.name}`, x.rate);
      record(`bp:${x.name}`, x.backpressure * 100);
    }
    for (const x of s.sinks) {
      record(`out:${x.name}`, x.rate);
      record(`retry:${x.name}`, x.retry_rate);
      record(`conc:${x.name}`, x.concurrency);
      record(`p50:${x.name}`, x.p50 === null ? null : x.p50 * 1000);
      record(`p99:${x.name}`, x.p99 === null ? null : x.p99 * 1000);
    }
    record("buffer:records", (100 * s.buffer.records) / s.buffer.max_records);
    record("buffer:bytes", (100 * s.buffer.bytes) / s.buffer.max_bytes);
    // A series not in this snapshot (none yet) gets a gap, so every series stays aligned with `times`.
    for (const values of series.values()) if (values.length < times.length) values.push(null);
    if (times.length > HISTORY) {
      times.shift();
      for (const values of series.values()) values.shift();
    }
    const charted = layout(s);
    for (const name of Object.keys(charted)) {
      const chart = ensureChart(name, charted[name]);
      chart.plot.setData([times, ...chart.keys.map(([k]) => series.get(k) || [])]);
    }
  }

  const events = new EventSource("/dashboard/events");
  events.onmessage = (e) => draw(JSON.parse(e.data));
  // The run ended: the last snapshot came with the `end` event; stop reconnecting.
  events.addEventListener("end", () => {
    events.close();
    setText("updated", `${el("updated").textContent} (run ended)`);
  });
  events.onerror = () => {
    if (events.readyState === EventSource.CONNECTING) setText("state", "reconnecting");
  };
  window.addEventListener("resize", () => {
    for (const name of Object.keys(charts)) {
      const target = el(`chart-${name}`);
      charts[name].plot.setSize({ width: Math.max(300, target.clientWidth), height: 180 });
    }
  });
})();
