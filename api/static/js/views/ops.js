// Operator views: nodes and their load, every server with filters, a customer's page, events.

import { h, render } from '../dom.js';
import * as api from '../api.js';
import { customerLoad } from './graphs.js';
import { alertBox, ago, badge, bar, busy, dialog, field, pageHeader, subState, table, toast, when } from '../ui.js';
import { imageLabel, ipsOf, pendingLabel, phaseBadge, phaseOf, planName, serverCard, subscriptionOf } from './customer.js';
import { ledgerPanel } from './billing.js';

// A fleet has thousands of servers; redrawing them all on every status change would stall
// the page, and nobody reads past a few hundred rows without filtering.
const MAX_ROWS = 500;
const PHASES = ['Pending', 'Scheduled', 'Provisioning', 'Running', 'Stopped', 'Paused', 'Suspended', 'Resizing',
  'Terminating', 'Failed', 'Unknown'];

function customerOf(live, vps) {
  const sub = subscriptionOf(live, vps);
  return sub ? sub.spec.customer : '';
}

// ------------------------------------------------------------------ nodes

// MiB as GiB with one decimal where it matters (512 MiB is 0.5 GiB, not 1).
function gib(mebibytes) {
  const g = mebibytes / 1024;
  return `${Number.isInteger(g) || g >= 100 ? Math.round(g) : g.toFixed(1)} GiB`;
}

export function nodesView(container, ctx) {
  const { live } = ctx;
  const list = h('div');
  container.append(pageHeader('Nodes'), list);
  const paint = () => {
    const nodes = live.list('Node');
    if (!nodes.length) { render(list, h('p', { class: 'empty' }, 'No nodes registered.')); return; }
    render(list, h('ul', { class: 'nodes' }, nodes.map((n) => {
      const cap = n.spec.capacity;
      const over = n.spec.overcommit || { cpu: 4, memory: 1 };
      const st = n.status || {};
      const alloc = st.allocated || {};
      const cordoned = n.spec.schedulable === false || (n.metadata.annotations || {})['hostplane.io/drain'] === 'true';
      const region = (n.metadata.labels || {})['hostplane.io/region'];
      return h('li', { class: 'card node', 'data-name': n.metadata.name },
        h('div', { class: 'server-head' }, h('h2', null, n.metadata.name), badge(st.state || 'Unknown'),
          cordoned ? badge('Cordoned', 'warn') : null),
        h('p', { class: 'muted' }, [region ? `Region ${region}` : null, `${alloc.vps || 0} server${alloc.vps === 1 ? '' : 's'}`,
          st.lastHeartbeat ? `heartbeat ${ago(st.lastHeartbeat)}` : 'no heartbeat yet'].filter(Boolean).join(' · ')),
        bar('vCPU', alloc.vcpus || 0, Math.floor(cap.vcpus * over.cpu)),
        bar('Memory', alloc.memoryMiB || 0, Math.floor(cap.memoryMiB * over.memory), '', gib),
        bar('Disk', alloc.diskGiB || 0, cap.diskGiB, ' GiB'),
        h('div', { class: 'button-row' },
          h('a', { href: `/ops/servers?node=${encodeURIComponent(n.metadata.name)}`, class: 'btn small' }, 'Servers'),
          h('a', { href: `/ops/events?kind=Node&name=${encodeURIComponent(n.metadata.name)}`, class: 'btn small' }, 'Events')));
    })));
  };
  paint();
  const off = live.on(paint);
  const tick = setInterval(paint, 30000); // "heartbeat n min ago" ages without events
  return { destroy: () => { off(); clearInterval(tick); } };
}

// ------------------------------------------------------------------ all servers

export function serversView(container, ctx) {
  const { live, query } = ctx;
  const filters = { node: query.get('node') || '', customer: query.get('customer') || '', phase: query.get('phase') || '' };
  const list = h('div');
  const count = h('p', { class: 'muted', role: 'status' });
  const select = (key, label, values) => {
    const el = h('select', { name: key }, h('option', { value: '' }, `Any ${label.toLowerCase()}`),
      values.map((v) => h('option', { value: v, selected: v === filters[key] }, v)));
    el.addEventListener('change', () => {
      filters[key] = el.value;
      const q = new URLSearchParams(Object.entries(filters).filter(([, v]) => v));
      history.replaceState(null, '', `/ops/servers${q.toString() ? `?${q}` : ''}`);
      paint();
    });
    return field(label, el);
  };
  const nodeNames = [...new Set([...live.list('Node').map((n) => n.metadata.name),
    ...live.list('VPS').map((v) => v.status && v.status.node).filter(Boolean)])].sort();
  const customers = live.list('Customer').map((c) => c.metadata.name);
  container.append(pageHeader('Servers'),
    h('form', { class: 'filters', role: 'search', onsubmit: (ev) => ev.preventDefault() },
      select('node', 'Node', nodeNames), select('customer', 'Customer', customers), select('phase', 'Phase', PHASES)),
    count, list);
  const paint = () => {
    const all = live.list('VPS');
    const shown = all.filter((v) => (!filters.node || (v.status && v.status.node) === filters.node)
      && (!filters.customer || customerOf(live, v) === filters.customer)
      && (!filters.phase || phaseOf(v) === filters.phase));
    count.textContent = shown.length > MAX_ROWS
      ? `${shown.length} of ${all.length} servers; the first ${MAX_ROWS} are listed, narrow them with the filters`
      : `${shown.length} of ${all.length} servers`;
    shown.length = Math.min(shown.length, MAX_ROWS);
    const wide = window.matchMedia('(min-width: 900px)').matches;
    if (!wide) {
      render(list, shown.length ? h('ul', { class: 'servers' }, shown.map((v) => serverCard(live, v, {
        href: `/ops/servers/${encodeURIComponent(v.metadata.name)}`,
        extra: h('div', null, h('dt', null, 'Customer'), h('dd', null, customerOf(live, v) || '—')),
      }))) : h('p', { class: 'empty' }, 'No servers match.'));
      return;
    }
    render(list, table(['Name', 'Phase', 'Customer', 'Node', 'IP', 'Plan', 'OS'], shown.map(row),
      { empty: 'No servers match.', caption: 'Servers' }));
  };
  // A change rewrites one VPS object and leaves the others as they were, so a row built for an
  // object is still right while only VPS change: reuse it instead of rebuilding 500 rows a frame.
  let rows = new WeakMap();
  const row = (v) => {
    const cached = rows.get(v);
    if (cached) return cached;
    const customer = customerOf(live, v);
    const tr = h('tr', { 'data-name': v.metadata.name },
      h('td', null, h('a', { href: `/ops/servers/${encodeURIComponent(v.metadata.name)}`, 'data-key': `open-${v.metadata.name}` }, v.metadata.name)),
      h('td', null, phaseBadge(v)),
      h('td', null, customer ? h('a', { href: `/ops/customers/${encodeURIComponent(customer)}` }, customer) : '—'),
      h('td', null, (v.status && v.status.node) || '—'),
      h('td', { class: 'mono' }, ipsOf(v).join(', ') || '—'),
      h('td', null, planName(live, v)), h('td', null, imageLabel(live, v.spec.image)));
    if (!pendingLabel(v)) rows.set(v, tr); // a row with a pending action changes as time passes
    return tr;
  };
  paint();
  const off = live.on((kinds) => {
    if ([...kinds].some((k) => k !== 'VPS' && k !== '_state')) rows = new WeakMap();
    paint();
  });
  const media = window.matchMedia('(min-width: 900px)');
  media.addEventListener('change', paint);
  return { destroy: () => { off(); media.removeEventListener('change', paint); } };
}

// ------------------------------------------------------------------ customers

export function customersView(container, ctx) {
  const { live } = ctx;
  const list = h('div');
  const count = h('p', { class: 'muted', role: 'status' });
  container.append(pageHeader('Customers'), count, list);
  const paint = () => {
    const owner = new Map(live.list('Subscription').map((s) => [s.metadata.name, s.spec.customer]));
    const servers = new Map();
    for (const v of live.list('VPS')) {
      const who = owner.get(v.spec.subscription);
      servers.set(who, (servers.get(who) || 0) + 1);
    }
    const customers = live.list('Customer');
    count.textContent = customers.length > MAX_ROWS ? `${customers.length} customers; the first ${MAX_ROWS} are listed` : '';
    render(list, table(['Customer', 'E-mail', 'State', 'Balance', 'Servers'], customers.slice(0, MAX_ROWS).map((c) => {
      const st = c.status || {};
      return h('tr', null,
        h('td', null, h('a', { href: `/ops/customers/${encodeURIComponent(c.metadata.name)}`, 'data-key': c.metadata.name }, c.spec.displayName || c.metadata.name)),
        h('td', null, c.spec.email), h('td', null, badge(st.state || 'Active')),
        h('td', { class: 'num' }, `${st.balance || '0.00'} ${c.spec.currency}`),
        h('td', { class: 'num' }, String(servers.get(c.metadata.name) || 0)));
    }), { empty: 'No customers.', caption: 'Customers' }));
  };
  paint();
  const off = live.on(paint);
  return { destroy: off };
}

function suspendDialog(sub) {
  let reason;
  let note;
  return dialog({
    title: `Suspend ${sub.metadata.name}?`,
    confirmLabel: 'Suspend',
    progressLabel: 'Suspending…',
    tone: 'danger',
    body: () => {
      reason = h('select', { name: 'reason' }, h('option', { value: 'abuse' }, 'abuse'),
        h('option', { value: 'admin' }, 'admin'), h('option', { value: 'customer' }, "customer's request"));
      note = h('textarea', { name: 'note', rows: 2, maxlength: 500, placeholder: 'Ticket 4711: outgoing spam' });
      return h('div', null,
        h('p', null, `Its servers are paused at once (memory kept) and shut off later; disks and IPs are kept. `
          + 'It stays suspended until an operator lifts it.'),
        field('Reason', reason), field('Note (kept on the subscription)', note));
    },
    action: async () => {
      const annotations = { 'hostplane.io/suspend-note': note.value.trim() || null };
      await api.patch(`/v1/subscriptions/${api.enc(sub.metadata.name)}`, { spec: { suspend: reason.value }, metadata: { annotations } });
      toast(`${sub.metadata.name} suspended (${reason.value}).`);
    },
  });
}

async function unsuspend(sub, button, errorTarget) {
  await busy(button, 'Lifting…', async () => {
    await api.patch(`/v1/subscriptions/${api.enc(sub.metadata.name)}`,
      { spec: { suspend: null }, metadata: { annotations: { 'hostplane.io/suspend-note': null } } });
    toast(`Suspension of ${sub.metadata.name} lifted.`);
  }, { errorTarget });
}

export function customerView(container, ctx) {
  const { live, params: [name] } = ctx;
  const head = h('div');
  const servers = h('section', { class: 'card', 'aria-labelledby': 'cs-h' });
  const subsBox = h('section', { class: 'card', 'aria-labelledby': 'cb-h' });
  const error = h('div');
  const ledger = ledgerPanel(name, live, { compact: true });
  const loadBox = h('div');
  container.append(h('a', { href: '/ops/customers', class: 'back' }, '← Customers'), head, error,
    h('div', { class: 'grid3' }, servers, subsBox,
      h('section', { class: 'card', 'aria-labelledby': 'cl-h' }, h('h2', { id: 'cl-h' }, 'Ledger'), ledger.el)), loadBox);
  let load = null;
  let loadedFor = '';
  const paint = () => {
    const c = live.find('Customer', name);
    render(head, pageHeader(c ? (c.spec.displayName || name) : name,
      h('a', { href: `/ops/events?kind=Customer&name=${encodeURIComponent(name)}`, class: 'btn small' }, 'Events')),
    c ? h('p', { class: 'muted' }, `${c.spec.email} · ${c.spec.currency} · credit limit ${c.spec.creditLimit} · `, badge((c.status && c.status.state) || 'Active'))
      : alertBox('No such customer.'));
    const subs = live.list('Subscription').filter((s) => s.spec.customer === name);
    const mine = new Set(subs.map((s) => s.metadata.name));
    const vps = live.list('VPS').filter((v) => mine.has(v.spec.subscription));
    render(servers, h('h2', { id: 'cs-h' }, 'Servers'), vps.length ? h('ul', { class: 'servers compact' },
      vps.map((v) => serverCard(live, v, { href: `/ops/servers/${encodeURIComponent(v.metadata.name)}` })))
      : h('p', { class: 'empty' }, 'No servers.'));
    // The support flow: this customer's servers' load beside their nodes' (redrawn when the set changes).
    const key = vps.map((v) => `${v.metadata.name}@${(v.status && v.status.node) || ''}`).join(',');
    if (key !== loadedFor) {
      loadedFor = key;
      if (load) load.destroy();
      load = vps.length ? customerLoad(vps) : null;
      render(loadBox, load ? load.el : null);
    }
    render(subsBox, h('h2', { id: 'cb-h' }, 'Subscriptions'), subs.length ? h('ul', { class: 'subs' }, subs.map((s) => {
      const st = s.status || {};
      const held = s.spec.suspend;
      const note = (s.metadata.annotations || {})['hostplane.io/suspend-note'];
      return h('li', { class: 'sub', 'data-name': s.metadata.name },
        h('div', { class: 'server-head' }, h('strong', null, s.metadata.name), subState(s)),
        h('div', { class: 'muted' }, `plan ${s.spec.plan}`, st.suspendReason ? ` · reason ${st.suspendReason}` : '',
          st.paidUntil ? ` · paid until ${when(st.paidUntil)}` : ''),
        held ? h('div', { class: 'hint' }, `Operator suspension: ${held}${note ? ` — ${note}` : ''}`) : null,
        h('div', { class: 'button-row' }, held
          ? h('button', { type: 'button', class: 'btn', 'data-key': `unsuspend-${s.metadata.name}`, onclick: (ev) => unsuspend(s, ev.currentTarget, error) }, 'Lift suspension')
          : h('button', { type: 'button', class: 'btn danger-outline', 'data-key': `suspend-${s.metadata.name}`, onclick: () => suspendDialog(s) }, 'Suspend…'),
        h('a', { href: `/ops/events?kind=Subscription&name=${encodeURIComponent(s.metadata.name)}`, class: 'btn small' }, 'Events')));
    })) : h('p', { class: 'empty' }, 'No subscriptions.'));
  };
  paint();
  const off = live.on(paint);
  return { destroy: () => { off(); ledger.destroy(); if (load) load.destroy(); } };
}

// ------------------------------------------------------------------ events

const KINDS = ['VPS', 'Node', 'Subscription', 'Customer', 'Plan', 'Image', 'IPPool'];

export function eventsView(container, ctx) {
  const { query } = ctx;
  const kind = h('select', { name: 'kind' }, h('option', { value: '' }, 'Any kind'),
    KINDS.map((k) => h('option', { value: k, selected: k === query.get('kind') }, k)));
  const name = h('input', { type: 'text', name: 'name', value: query.get('name') || '', autocomplete: 'off', spellcheck: 'false' });
  const show = h('button', { type: 'submit', class: 'btn primary' }, 'Show');
  const out = h('div');
  const load = () => busy(show, 'Loading…', async () => {
    const q = new URLSearchParams();
    if (kind.value) q.set('kind', kind.value);
    if (kind.value && name.value.trim()) q.set('name', name.value.trim());
    history.replaceState(null, '', `/ops/events${q.toString() ? `?${q}` : ''}`);
    const data = await api.get(`/v1/events?${q}`);
    const items = (data.items || []).slice().sort((a, b) => String(b.time).localeCompare(String(a.time))).slice(0, 500);
    render(out, table(['When', 'Object', 'Type', 'Reason', 'Message'], items.map((e) => h('tr', null,
      h('td', null, when(e.time)), h('td', null, `${e.kind}/${e.name}`),
      h('td', null, badge(e.type, e.type === 'Warning' ? 'warn' : 'idle')),
      h('td', null, e.reason, e.count > 1 ? ` ×${e.count}` : ''), h('td', null, e.message))),
    { empty: 'No events recorded for that.', caption: 'Events' }));
  }, { errorTarget: out });
  const form = h('form', { class: 'filters', role: 'search' }, field('Kind', kind), field('Name (with a kind)', name),
    h('div', { class: 'field end' }, show));
  form.addEventListener('submit', (ev) => { ev.preventDefault(); load(); });
  container.append(pageHeader('Events'), form, out);
  load();
  return null;
}
