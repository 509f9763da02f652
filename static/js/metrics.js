// Monitoring charts (uPlot, served locally): a desktop's CPU and memory on its card, and a
// host's CPU, memory and desktops on the admin's host page. Each chart loads its history
// from the metrics API once, then adds the values the live feed pushes (live.js sends them
// as "live:metrics" / "live:host_metrics" events). Pages never ask a hypervisor anything.
import uPlot from "../vendor/uplot/uPlot.esm.js";
import { apiUrl, request } from "./http.js";
import { connectLive } from "./live.js";

const KEEP_S = { "1h": 3600, "24h": 86400, "7d": 604800 };
const charts = new Map(); // desktop id or "host:<name>" -> [{ plot, data, fields, label }]

function chartOptions(width, height, { max, color, fill, axes }) {
  return {
    width, height,
    legend: { show: false },
    cursor: { show: axes },
    scales: { x: { time: true }, y: { range: (u, lo, hi) => [0, Math.max(max ?? 0, hi || 1)] } },
    axes: axes ? [{ size: 28 }, { size: 56 }] : [{ show: false }, { show: false }],
    series: [{}, { stroke: color, fill, width: 1.5, spanGaps: true, points: { show: false } }],
  };
}

function draw(el, t, values, style) {
  el.replaceChildren();
  const width = el.clientWidth || Number(el.dataset.width) || 140;
  const height = Number(el.dataset.height) || 36;
  const data = [t.slice(), values.slice()];
  const plot = new uPlot(chartOptions(width, height, style), data, el);
  el.dataset.points = String(t.length);
  return { plot, data };
}

function label(el, text) {
  const out = el.parentElement.querySelector("[data-field=value]");
  if (out) out.textContent = text;
}

const formats = {
  cpu_percent: (v) => `CPU ${v == null ? "–" : Math.round(v)} %`,
  memory_mib: (v) => `${v == null ? "–" : Math.round(v)} MiB`,
  memory_used_mib: (v) => `${v == null ? "–" : (v / 1024).toFixed(1)} GiB used`,
  running_desktops: (v) => `${v ?? 0} running`,
};
const STYLES = {
  cpu_percent: { max: 100, color: "#1a6fb5", fill: "rgba(26,111,181,.15)" },
  memory_mib: { color: "#6a3fb5", fill: "rgba(106,63,181,.15)" },
  memory_used_mib: { color: "#6a3fb5", fill: "rgba(106,63,181,.15)" },
  running_desktops: { color: "#2e7d32", fill: "rgba(46,125,50,.15)" },
};

async function load(key, url, els, axes) {
  let body;
  try {
    const answer = await request("GET", url);
    if (!answer.ok) return;
    body = answer.data;
  } catch { return; }
  const drawn = [];
  for (const el of els) {
    const field = el.dataset.chart;
    const values = body.series[field] || [];
    const style = { ...STYLES[field], axes };
    if (field === "memory_used_mib" && body.series.memory_total_mib) {
      style.max = Math.max(0, ...body.series.memory_total_mib.filter((v) => v != null));
    }
    const { plot, data } = draw(el, body.series.t, values, style);
    drawn.push({ el, plot, data, field, keep: KEEP_S[body.period] });
    const last = values.filter((v) => v != null).at(-1);
    label(el, formats[field](last));
  }
  charts.set(key, drawn);
}

function addPoint(key, metrics) {
  for (const chart of charts.get(key) || []) {
    const [t, values] = chart.data;
    if (t.length && t.at(-1) >= metrics.t) continue;
    t.push(metrics.t);
    values.push(metrics[chart.field]);
    while (t.length && t[0] < metrics.t - chart.keep) { t.shift(); values.shift(); }
    chart.plot.setData(chart.data);
    chart.el.dataset.points = String(t.length);
    label(chart.el, formats[chart.field](metrics[chart.field]));
  }
}

// Desktop cards: <div data-metrics-desktop="<id>"> holding [data-chart=<field>] elements.
for (const box of document.querySelectorAll("[data-metrics-desktop]")) {
  const id = box.dataset.metricsDesktop;
  load(id, `${apiUrl("desktop_metrics", { pk: id })}?period=1h`, box.querySelectorAll("[data-chart]"), false);
}
document.addEventListener("live:metrics", (event) => {
  for (const box of document.querySelectorAll(`[data-metrics-desktop="${event.detail.desktop_id}"]`)) {
    box.hidden = false; // it runs: it was sampled
  }
  addPoint(event.detail.desktop_id, event.detail);
});

// The admin's host page: <section data-metrics-host="<name>" data-period="1h|24h|7d">; the
// charts of its desktops' cards inside it are theirs.
const ownCharts = (box) => [...box.querySelectorAll("[data-chart]")].filter((el) => !el.closest("[data-metrics-desktop]"));
for (const box of document.querySelectorAll("[data-metrics-host]")) {
  const name = box.dataset.metricsHost;
  const show = (period) => load(`host:${name}`, `${apiUrl("host_metrics", { name })}?period=${period}`,
                                ownCharts(box), true);
  show(box.dataset.period || "1h");
  for (const button of box.querySelectorAll("button[data-period]")) {
    button.addEventListener("click", () => {
      for (const other of box.querySelectorAll("button[data-period]")) other.setAttribute("aria-pressed", String(other === button));
      show(button.dataset.period);
    });
  }
}
document.addEventListener("live:host_metrics", (event) => addPoint(`host:${event.detail.host}`, event.detail));

// The host page has no live feed of its own: open one, watching the desktops it shows.
if (document.querySelector("[data-metrics-host]")) {
  const watch = [...document.querySelectorAll("[data-metrics-desktop]")].map((box) => box.dataset.metricsDesktop);
  connectLive({ watch });
}
