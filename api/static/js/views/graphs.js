// Load graphs with uPlot: a server's CPU, memory, disk and network (range switch, live tail for
// the last hour), its traffic this month, and the side-by-side load the operator's customer page
// shows. Series come from GET /v1/vps/<name>/metrics and /v1/nodes/<name>/metrics; uPlot is
// imported only when a graph is drawn.

import { h, render } from '../dom.js';
import * as api from '../api.js';
import { alertBox } from '../ui.js';

const VENDOR = new URL('../../vendor/uplot/', import.meta.url);
const RANGES = ['1h', '24h', '7d', '30d'];
let uPlotModule = null;

async function uPlot() {
  if (!uPlotModule) {
    if (![...document.styleSheets].some((s) => s.href && s.href.endsWith('uPlot.min.css'))) {
      document.head.append(h('link', { rel: 'stylesheet', href: new URL('uPlot.min.css', VENDOR).href }));
    }
    uPlotModule = (await import(new URL('uPlot.js', VENDOR).href)).default;
  }
  return uPlotModule;
}

export function bytes(n) {
  if (n == null) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = Math.abs(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${(n < 0 ? -v : v).toFixed(v >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
}

const pct = (v) => (v == null ? '—' : `${v.toFixed(0)} %`);

// Several series (same timestamps or not) as uPlot's aligned data: [xs, ys1, ys2, ...].
function align(seriesList) {
  const xs = [...new Set(seriesList.flatMap((s) => s.map((p) => p[0])))].sort((a, b) => a - b);
  return [xs, ...seriesList.map((s) => {
    const m = new Map(s.map((p) => [p[0], p[1]]));
    return xs.map((x) => (m.has(x) ? m.get(x) : null));
  })];
}

async function chart(el, title, lines, seriesList, fmt, width) {
  const U = await uPlot();
  const data = align(seriesList);
  const colors = ['#1d4ed8', '#c2410c', '#15803d', '#7c3aed'];
  render(el);
  el.setAttribute('data-points', String(data[0].length));
  if (!data[0].length) { render(el, h('div', { class: 'chart-title' }, title), h('p', { class: 'muted' }, 'No data yet.')); return null; }
  el.append(h('div', { class: 'chart-title' }, title));
  return new U({
    width, height: 140,
    series: [{}, ...lines.map((label, i) => ({ label, stroke: colors[i % colors.length], width: 1.5, value: (u, v) => fmt(v) }))],
    axes: [{}, { values: (u, vals) => vals.map(fmt), size: 70 }],
    legend: { show: true },
    cursor: { drag: { x: false, y: false } },
  }, data, el);
}

// The server page's "Load" card: four charts and this month's traffic.
export function loadCard(name) {
  const card = h('section', { class: 'card load', 'aria-labelledby': 'ld-h' });
  const charts = h('div', { class: 'charts' });
  const note = h('div');
  const trafficLine = h('p', { class: 'muted', 'data-key': 'traffic' });
  let range = '1h';
  let plots = [];
  let timer = null;
  const buttons = h('div', { class: 'button-row', role: 'group', 'aria-label': 'Range' });
  const paintButtons = () => render(buttons, RANGES.map((r) => h('button', {
    type: 'button', class: `btn small ${r === range ? 'primary' : ''}`, 'aria-pressed': String(r === range),
    onclick: () => { range = r; paintButtons(); load(); },
  }, r)));
  card.append(h('h2', { id: 'ld-h' }, 'Load'), buttons, note, charts, trafficLine);
  paintButtons();

  const load = async () => {
    try {
      const m = await api.get(`/v1/vps/${api.enc(name)}/metrics?range=${range}`);
      const s = m.series;
      const width = Math.max(260, Math.min(charts.clientWidth || 600, 720) - 8);
      plots.forEach((p) => p && p.destroy());
      render(charts);
      const boxes = [0, 1, 2, 3].map((i) => h('div', { class: 'chart', 'data-chart': ['cpu', 'memory', 'disk', 'network'][i] }));
      charts.append(...boxes);
      plots = await Promise.all([
        chart(boxes[0], 'CPU', ['CPU'], [s.cpuPercent], pct, width),
        chart(boxes[1], 'Memory', ['Memory'], [s.memoryBytes], bytes, width),
        chart(boxes[2], 'Disk I/O', ['Read/s', 'Write/s'], [s.diskReadBytesPerSecond, s.diskWriteBytesPerSecond], bytes, width),
        chart(boxes[3], 'Network', ['In/s', 'Out/s'], [s.networkReceiveBytesPerSecond, s.networkTransmitBytesPerSecond], bytes, width),
      ]);
      render(note);
    } catch (e) {
      render(note, alertBox(e.status === 503 ? 'Load graphs are not available right now.' : `Load could not be read: ${e.message}`, 'info'));
    }
    try {
      const t = await api.get(`/v1/vps/${api.enc(name)}/traffic`);
      const inc = t.includedBytes != null ? ` of ${bytes(t.includedBytes)} included` : '';
      render(trafficLine, `Traffic in ${t.month}: ${bytes(t.rxBytes)} in, ${bytes(t.txBytes)} out — ${bytes(t.totalBytes)}${inc}`);
    } catch { render(trafficLine); }
  };
  load();
  // Live tail: the last hour is re-read every 15 s; longer ranges change too slowly to matter.
  timer = setInterval(() => { if (range === '1h' && document.visibilityState === 'visible') load(); }, 15000);
  return { el: card, destroy: () => { clearInterval(timer); plots.forEach((p) => p && p.destroy()); } };
}

// The operator's customer page: each server's CPU beside its node's, last hour.
export function customerLoad(servers) {
  const card = h('section', { class: 'card load', 'aria-labelledby': 'cload-h' });
  const rows = h('div', { class: 'charts' });
  card.append(h('h2', { id: 'cload-h' }, 'Load (last hour)'), rows);
  const plots = [];
  (async () => {
    for (const v of servers) {
      const name = v.metadata.name;
      const node = v.status && v.status.node;
      const row = h('div', { class: 'load-row', 'data-vps': name });
      const left = h('div', { class: 'chart', 'data-chart': `vps-${name}` });
      const right = h('div', { class: 'chart', 'data-chart': `node-${node || 'none'}` });
      row.append(left, right);
      rows.append(row);
      const width = Math.max(240, Math.min((rows.clientWidth || 600) / (window.innerWidth < 700 ? 1 : 2) - 16, 520));
      try {
        const m = await api.get(`/v1/vps/${api.enc(name)}/metrics?range=1h`);
        plots.push(await chart(left, `${name} CPU`, ['CPU'], [m.series.cpuPercent], pct, width));
      } catch (e) { render(left, alertBox(`${name}: ${e.message}`, 'info')); }
      if (!node) { render(right, h('p', { class: 'muted' }, 'Not placed on a node.')); continue; }
      try {
        const n = await api.get(`/v1/nodes/${api.enc(node)}/metrics?range=1h`);
        plots.push(await chart(right, `node ${node} CPU`, ['Node CPU', 'Its servers'], [n.series.cpuPercent, n.series.domainsCpuPercent], pct, width));
      } catch (e) { render(right, alertBox(`node ${node}: ${e.message}`, 'info')); }
    }
  })();
  return { el: card, destroy: () => plots.forEach((p) => p && p.destroy()) };
}
