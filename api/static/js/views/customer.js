// A customer's servers: the live list, one server with its actions and events, ordering, and
// the billing banner. Operators use the same server page for any customer's server.

import { h, render } from '../dom.js';
import * as api from '../api.js';
import { loadCard } from './graphs.js';
import {
  alertBox, badge, busy, dialog, field, fromMinor, mib, money, moneyMinor, pageHeader, planSummary, price,
  subState, table, toMinor, toast, when,
} from '../ui.js';

// ------------------------------------------------------------------ lookups

export function subscriptionOf(live, vps) { return live.find('Subscription', vps.spec.subscription); }
export function planOf(live, vps) {
  const sub = subscriptionOf(live, vps);
  return sub ? live.find('Plan', sub.spec.plan) : null;
}
export function planName(live, vps) {
  const sub = subscriptionOf(live, vps);
  return sub ? sub.spec.plan : '—';
}
export function imageLabel(live, name) {
  const img = live.find('Image', name);
  return img ? `${img.spec.os} ${img.spec.version}` : name;
}
export function regionOf(live, vps) {
  const nodeName = vps.status && vps.status.node;
  if (!nodeName) return '—';
  const node = live.find('Node', nodeName);
  const region = node && node.metadata.labels && node.metadata.labels['hostplane.io/region'];
  if (live.hidden.has('Node') || !node) return nodeName;
  return region ? `${region} · ${nodeName}` : nodeName;
}
export function phaseOf(vps) {
  if (vps.metadata.deletionTimestamp) return 'Terminating';
  return (vps.status && vps.status.phase) || 'Pending';
}
export function ipsOf(vps) {
  const ips = (vps.status && vps.status.ips) || {};
  return [ips.ipv4, ips.ipv6].filter(Boolean);
}

// ------------------------------------------------------------------ pending actions

// An action is accepted (202) long before the server reaches the new state; until the live
// status shows it, the server's badge says what is under way.
const pending = new Map();
const PENDING_MS = 180000;

function expect(name, label, done) { pending.set(name, { label, done, since: Date.now() }); }

export function pendingLabel(vps) {
  const p = pending.get(vps.metadata.name);
  if (!p) return null;
  if (Date.now() - p.since > PENDING_MS || p.done(vps)) { pending.delete(vps.metadata.name); return null; }
  return p.label;
}

export function phaseBadge(vps) {
  const label = pendingLabel(vps);
  const phase = phaseOf(vps);
  const el = h('span', { class: 'phase', 'data-phase': phase }, badge(phase));
  if (label) el.append(h('span', { class: 'pending', role: 'status' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), label));
  return el;
}

// ------------------------------------------------------------------ list

export function serverCard(live, vps, { href, extra } = {}) {
  const name = vps.metadata.name;
  const ips = ipsOf(vps);
  return h('li', { class: 'server', 'data-name': name },
    h('div', { class: 'server-head' },
      h('a', { href, class: 'server-name', 'data-key': `open-${name}` }, name), phaseBadge(vps)),
    h('dl', { class: 'facts' },
      h('div', null, h('dt', null, 'Hostname'), h('dd', null, vps.spec.hostname)),
      h('div', null, h('dt', null, 'IP'), h('dd', { class: 'mono' }, ips.length ? ips.join(', ') : '—')),
      h('div', null, h('dt', null, 'Plan'), h('dd', null, planName(live, vps))),
      h('div', null, h('dt', null, 'OS'), h('dd', null, imageLabel(live, vps.spec.image))),
      h('div', null, h('dt', null, 'Location'), h('dd', null, regionOf(live, vps))),
      extra || null));
}

export function serversView(container, ctx) {
  const { live } = ctx;
  const list = h('div', { class: 'region', 'aria-live': 'off' });
  container.append(pageHeader('My servers', h('a', { href: '/order', class: 'btn primary' }, 'Order a server')), list);
  const paint = () => {
    const servers = live.list('VPS');
    if (!servers.length) {
      render(list, h('div', { class: 'card empty-state' }, h('p', null, 'You have no servers yet.'),
        h('a', { href: '/order', class: 'btn primary' }, 'Order your first server')));
      return;
    }
    render(list, h('ul', { class: 'servers', 'aria-label': 'Servers' },
      servers.map((vps) => serverCard(live, vps, { href: `/servers/${encodeURIComponent(vps.metadata.name)}` }))));
  };
  paint();
  const off = live.on(paint);
  const tick = setInterval(paint, 5000); // pending labels time out even when nothing changes
  return { destroy: () => { off(); clearInterval(tick); } };
}

// ------------------------------------------------------------------ one server

async function act(vps, action, body) {
  return api.post(`/v1/vps/${api.enc(vps.metadata.name)}/actions/${action}`, body);
}

function conditionNotes(vps) {
  const notes = [];
  for (const c of (vps.status && vps.status.conditions) || []) {
    const bad = (c.status === 'False' && ['Scheduled', 'Resolved', 'NodeReady'].includes(c.type))
      || (c.status === 'True' && ['Suspended', 'ResizePending'].includes(c.type));
    if (bad) notes.push(`${c.type}: ${c.reason}${c.message ? ` — ${c.message}` : ''}`);
  }
  if (vps.status && vps.status.message) notes.push(vps.status.message);
  return notes;
}

// Rest of the calendar month from the next hour on, as billing charges it: hour n of a month
// costs floor(P·(n+1)/672) − floor(P·n/672), so hours k.. cost P − floor(P·k/672).
export function restOfMonth(priceMinor, now = new Date()) {
  const start = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), 1);
  const k = BigInt(Math.min(672, Math.floor((now.getTime() - start) / 3600000) + 1));
  return priceMinor - (priceMinor * k) / 672n;
}

function resizeDialog(live, vps, current) {
  const plans = live.list('Plan').filter((p) => p.spec.public !== false && p.metadata.name !== current.metadata.name
    && p.spec.diskGiB >= current.spec.diskGiB && p.spec.price.currency === current.spec.price.currency);
  let chosen = null;
  const cur = toMinor(current.spec.price.amount, current.spec.price.currency);
  const summary = h('div', { class: 'summary', 'aria-live': 'polite' }, 'Choose a plan to see the price.');
  return dialog({
    title: `Resize ${vps.metadata.name}`,
    confirmLabel: 'Resize',
    progressLabel: 'Resizing…',
    body: (confirm) => {
      confirm.disabled = true;
      if (!plans.length) return h('p', null, 'No larger plan is available. (A disk can grow but never shrink, so smaller disks are not offered.)');
      const options = plans.map((p) => {
        const input = h('input', { type: 'radio', name: 'plan', value: p.metadata.name });
        input.addEventListener('change', () => {
          chosen = p;
          confirm.disabled = false;
          const next = toMinor(p.spec.price.amount, p.spec.price.currency);
          const diff = restOfMonth(next) - restOfMonth(cur);
          const currency = p.spec.price.currency;
          summary.replaceChildren(
            h('div', null, `New price: ${price(p)} (now ${price(current)})`),
            h('div', { class: 'strong' }, `${diff >= 0n ? 'Extra' : 'Credit'} for the rest of this month: `
              + `${moneyMinor(diff >= 0n ? diff : -diff, currency)}, prorated to the hour`),
            h('div', { class: 'hint' }, 'vCPU and memory change live where the server allows, otherwise at its next restart; the disk grows online.'));
        });
        return h('label', { class: 'choice' }, input,
          h('span', null, h('strong', null, p.metadata.name), h('span', { class: 'muted' }, ` ${planSummary(p)}`)),
          h('span', { class: 'price' }, price(p)));
      });
      return h('div', null,
        h('p', null, `Now on ${current.metadata.name}: ${planSummary(current)}. Only plans with at least `
          + `${current.spec.diskGiB} GiB of disk are offered: a disk is never shrunk.`),
        h('fieldset', { class: 'choices' }, h('legend', { class: 'sr-only' }, 'New plan'), options), summary);
    },
    action: async () => {
      await act(vps, 'resize', { plan: chosen.metadata.name });
      const target = chosen.spec;
      expect(vps.metadata.name, `Resizing to ${chosen.metadata.name}…`, (v) => {
        const a = (v.status && v.status.actual) || {};
        return (a.vcpus === target.vcpus && a.memoryMiB === target.memoryMiB)
          || ((v.status && v.status.conditions) || []).some((c) => c.type === 'ResizePending' && c.status === 'True');
      });
      toast(`Resize of ${vps.metadata.name} to ${chosen.metadata.name} accepted.`);
    },
  });
}

function rebuildDialog(live, vps) {
  const plan = planOf(live, vps);
  const disk = plan ? `${plan.spec.diskGiB} GiB ` : '';
  return dialog({
    title: `Rebuild ${vps.metadata.name}?`,
    confirmLabel: 'Erase and rebuild',
    progressLabel: 'Rebuilding…',
    tone: 'danger',
    body: () => h('div', null,
      h('p', null, `Rebuilding reinstalls ${imageLabel(live, vps.spec.image)} on ${vps.metadata.name}.`),
      h('p', { class: 'strong' }, `Everything on its ${disk}disk is erased: files, databases, installed software `
        + 'and settings. This cannot be undone.'),
      h('p', null, `Kept: the name, hostname ${vps.spec.hostname}, the IP addresses and the plan.`)),
    action: async () => {
      const gen = vps.metadata.generation || 0;
      await act(vps, 'rebuild');
      expect(vps.metadata.name, 'Rebuilding…', (v) => (v.status && v.status.observedGeneration > gen) && phaseOf(v) === 'Running');
      toast(`Rebuild of ${vps.metadata.name} started.`);
    },
  });
}

// An operator deletes the VPS object; a customer may not, so for a customer "delete" cancels
// the subscription: billing terminates it at once and deletes the server after retention.
function deleteDialog(live, vps, operator, after) {
  const name = vps.metadata.name;
  const sub = subscriptionOf(live, vps);
  let input;
  const what = operator
    ? `The server ${name}, its disk and everything on it are deleted now, and its IP addresses are released.`
    : `Deleting cancels its subscription${sub ? ` ${sub.metadata.name}` : ''}: ${name} is shut off at once and billing `
      + 'stops; the server, its disk with everything on it and its IP addresses are deleted after the retention period.';
  return dialog({
    title: `Delete ${name}?`,
    confirmLabel: 'Delete for good',
    progressLabel: 'Deleting…',
    tone: 'danger',
    body: (confirm) => {
      confirm.disabled = true;
      input = h('input', { type: 'text', name: 'confirm-name', autocomplete: 'off', spellcheck: 'false' });
      input.addEventListener('input', () => { confirm.disabled = input.value !== name; });
      return h('div', null, h('p', null, what), h('p', { class: 'strong' }, 'This cannot be undone.'),
        field(`Type ${name} to confirm`, input));
    },
    action: async () => {
      if (input.value !== name) throw new Error(`Type ${name} exactly to confirm.`);
      if (operator) {
        await api.del(`/v1/vps/${api.enc(name)}`);
      } else {
        if (!sub) throw new Error('The subscription of this server is not known yet; try again in a moment.');
        await api.patch(`/v1/subscriptions/${api.enc(sub.metadata.name)}`, { spec: { cancelled: true } });
      }
      expect(name, 'Deleting…', (v) => phaseOf(v) === 'Terminating' || phaseOf(v) === 'Stopped');
      toast(operator ? `${name} is being deleted.` : `${name} is cancelled: it is shut off now and deleted after retention.`);
      after();
    },
  });
}

export function serverView(container, ctx) {
  const { live, params: [name], operator } = ctx;
  const back = operator ? '/ops/servers' : '/servers';
  const status = h('section', { class: 'card', 'aria-labelledby': 'st-h' });
  const actions = h('section', { class: 'card', 'aria-labelledby': 'ac-h' });
  const events = h('section', { class: 'card', 'aria-labelledby': 'ev-h' });
  const error = h('div');
  const load = loadCard(name);
  container.append(h('a', { href: back, class: 'back' }, operator ? '← All servers' : '← My servers'),
    pageHeader(name), error, h('div', { class: 'grid2' }, status, actions), load.el, events);
  let seen = false;

  const paint = () => {
    const vps = live.find('VPS', name);
    if (!vps) {
      render(status, h('h2', { id: 'st-h' }, 'Status'),
        seen ? alertBox('This server has been deleted.', 'info') : alertBox('No such server, or it is not yours.'));
      render(actions);
      return;
    }
    seen = true;
    const plan = planOf(live, vps);
    const sub = subscriptionOf(live, vps);
    const a = (vps.status && vps.status.actual) || {};
    const notes = conditionNotes(vps);
    render(status, h('h2', { id: 'st-h' }, 'Status'), phaseBadge(vps),
      h('dl', { class: 'facts wide' },
        h('div', null, h('dt', null, 'Hostname'), h('dd', null, vps.spec.hostname)),
        h('div', null, h('dt', null, 'IPv4'), h('dd', { class: 'mono' }, (vps.status && vps.status.ips && vps.status.ips.ipv4) || '—')),
        h('div', null, h('dt', null, 'IPv6'), h('dd', { class: 'mono' }, (vps.status && vps.status.ips && vps.status.ips.ipv6) || '—')),
        h('div', null, h('dt', null, 'Plan'), h('dd', null, plan ? `${plan.metadata.name} · ${planSummary(plan)} · ${price(plan)}` : planName(live, vps))),
        h('div', null, h('dt', null, 'OS'), h('dd', null, imageLabel(live, vps.spec.image))),
        h('div', null, h('dt', null, 'Location'), h('dd', null, regionOf(live, vps))),
        h('div', null, h('dt', null, 'Power wanted'), h('dd', null, vps.spec.powerState)),
        a.vcpus ? h('div', null, h('dt', null, 'Running with'), h('dd', null, `${a.vcpus} vCPU · ${mib(a.memoryMiB)} · ${a.diskGiB} GiB`)) : null,
        sub ? h('div', null, h('dt', null, 'Subscription'), h('dd', null, sub.metadata.name, ' ', subState(sub))) : null,
        operator && sub ? h('div', null, h('dt', null, 'Customer'), h('dd', null, h('a', { href: `/ops/customers/${encodeURIComponent(sub.spec.customer)}` }, sub.spec.customer))) : null),
      notes.length ? h('ul', { class: 'notes' }, notes.map((n) => h('li', null, n))) : null);

    const phase = phaseOf(vps);
    const suspended = phase === 'Suspended' || (sub && sub.status && sub.status.state === 'Suspended');
    const terminating = phase === 'Terminating';
    const btn = (key, label, onclick, { tone = '', disabled = false } = {}) => h('button', {
      type: 'button', class: `btn ${tone}`, 'data-key': key, disabled: disabled || terminating, onclick,
    }, label);
    const simple = (action, label, progress, target) => async (ev) => {
      await busy(ev.currentTarget, progress, async () => {
        await act(vps, action);
        const gen = vps.metadata.generation || 0;
        expect(name, progress, target === 'reboot'
          ? (v) => (v.status && v.status.observedGeneration > gen) && phaseOf(v) === 'Running'
          : (v) => phaseOf(v) === target);
        toast(`${label} ${name}: accepted.`);
        paint();
      }, { errorTarget: error });
    };
    const running = vps.spec.powerState === 'Running';
    render(actions, h('h2', { id: 'ac-h' }, 'Actions'),
      suspended ? h('p', { class: 'hint' }, 'This server is suspended: it cannot be started until the subscription is active again.') : null,
      h('div', { class: 'button-row' },
        btn('start', 'Start', simple('start', 'Start', 'Starting…', 'Running'), { tone: 'primary', disabled: running || suspended }),
        btn('stop', 'Stop', simple('stop', 'Stop', 'Stopping…', 'Stopped'), { disabled: !running }),
        btn('reboot', 'Reboot', simple('reboot', 'Reboot', 'Rebooting…', 'reboot'), { disabled: !running || suspended }),
        btn('console', 'Console', () => ctx.navigate(`${operator ? '/ops/servers' : '/servers'}/${encodeURIComponent(name)}/console`),
          { disabled: suspended }),
        btn('resize', 'Resize…', () => plan && resizeDialog(live, vps, plan), { disabled: !plan }),
        btn('rebuild', 'Rebuild…', () => rebuildDialog(live, vps), { tone: 'danger-outline' }),
        btn('delete', 'Delete…', () => deleteDialog(live, vps, operator, () => ctx.navigate(back)), {
          tone: 'danger-outline', disabled: !operator && sub && sub.spec.cancelled })));
  };

  let timer = null;
  let lastEvents = 0;
  const loadEvents = async () => {
    lastEvents = Date.now();
    try {
      const data = await api.get(`/v1/events?kind=VPS&name=${api.enc(name)}`);
      const items = (data.items || []).slice().reverse();
      render(events, h('h2', { id: 'ev-h' }, 'Events'), table(['When', 'Type', 'Reason', 'Message'],
        items.map((e) => h('tr', null, h('td', null, when(e.time)), h('td', null, badge(e.type, e.type === 'Warning' ? 'warn' : 'idle')),
          h('td', null, e.reason, e.count > 1 ? ` ×${e.count}` : ''), h('td', null, e.message))),
        { empty: 'No events recorded.', caption: `Events of ${name}` }));
    } catch (e) {
      render(events, h('h2', { id: 'ev-h' }, 'Events'), alertBox(`Events could not be loaded: ${e.message}`));
    }
  };
  const eventsSoon = () => {
    if (timer) return;
    timer = setTimeout(() => { timer = null; loadEvents(); }, Math.max(0, 1000 - (Date.now() - lastEvents)));
  };
  paint();
  loadEvents();
  const off = live.on((kinds) => { paint(); if (kinds.has('VPS')) eventsSoon(); });
  const tick = setInterval(paint, 5000);
  return { destroy: () => { off(); clearInterval(tick); clearTimeout(timer); load.destroy(); } };
}

// ------------------------------------------------------------------ order

const HOSTNAME = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/;

export function orderView(container, ctx) {
  const { live } = ctx;
  const plans = live.list('Plan').filter((p) => p.spec.public !== false);
  const images = live.list('Image');
  const error = h('div', { class: 'form-error' });
  const summary = h('div', { class: 'summary card', 'aria-live': 'polite' });
  let plan = null;
  const planChoices = plans.map((p, i) => {
    const input = h('input', { type: 'radio', name: 'plan', value: p.metadata.name, required: true });
    input.addEventListener('change', () => { plan = p; paintSummary(); });
    return h('label', { class: 'choice' }, input,
      h('span', null, h('strong', null, p.metadata.name), h('span', { class: 'muted' }, ` ${planSummary(p)}`),
        p.spec.description ? h('span', { class: 'hint block' }, p.spec.description) : null),
      h('span', { class: 'price' }, price(p)));
  });
  const image = h('select', { name: 'image', required: true },
    images.map((img) => h('option', { value: img.metadata.name }, `${img.spec.os} ${img.spec.version}`)));
  const hostname = h('input', { type: 'text', name: 'hostname', required: true, autocomplete: 'off', spellcheck: 'false',
    placeholder: 'web1.example.com', maxlength: 253 });
  const sshKeys = h('textarea', { name: 'sshKeys', rows: 3, spellcheck: 'false', placeholder: 'ssh-ed25519 AAAA… you@laptop' });
  const vmName = h('input', { type: 'text', name: 'name', autocomplete: 'off', spellcheck: 'false', maxlength: 63,
    placeholder: 'chosen for you' });
  const submit = h('button', { type: 'submit', class: 'btn primary' }, 'Order');

  function paintSummary() {
    if (!plan) { summary.replaceChildren(h('p', null, 'Choose a plan to see what you will pay.')); return; }
    const p = plan.spec.price;
    summary.replaceChildren(
      h('div', { class: 'summary-line' }, h('span', null, 'First period (one month)'), h('strong', { 'data-testid': 'first-period' }, money(p.amount, p.currency))),
      h('p', { class: 'hint' }, `Charged by the hour as the server exists (at most ${money(p.amount, p.currency)} a month); `
        + 'nothing is charged when you order. Your balance plus credit must cover a month of all your servers, this one included.'));
  }
  paintSummary();

  const form = h('form', { class: 'order', novalidate: true },
    error,
    h('fieldset', { class: 'choices' }, h('legend', null, 'Plan'),
      plans.length ? planChoices : h('p', { class: 'empty' }, 'No plans are offered right now.')),
    field('Image', image),
    field('Hostname', hostname, 'Lowercase letters, digits, dots and dashes, e.g. web1.example.com'),
    field('SSH public keys (optional, one per line)', sshKeys),
    field('Server name (optional)', vmName, 'Lowercase letters, digits and dashes; a name is chosen if empty.'),
    summary, h('div', { class: 'actions' }, submit));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    busy(submit, 'Ordering…', async () => {
      const host = hostname.value.trim().toLowerCase();
      if (!plan) throw new Error('Choose a plan.');
      if (!image.value) throw new Error('Choose an image.');
      if (!HOSTNAME.test(host)) { hostname.focus(); throw new Error('Hostname: must be a hostname like web1.example.com.'); }
      const body = { plan: plan.metadata.name, image: image.value, hostname: host };
      const keys = sshKeys.value.split('\n').map((k) => k.trim()).filter(Boolean);
      if (keys.length) body.sshKeys = keys;
      if (vmName.value.trim()) body.name = vmName.value.trim();
      const out = await api.post('/v1/orders', body).catch((e) => {
        if (e.status === 402) throw new Error(`Not enough funds: ${e.message} Top up your balance and try again.`);
        throw e;
      });
      const vps = out && (typeof out.vps === 'string' ? out.vps : out.vps && out.vps.metadata && out.vps.metadata.name);
      const first = out && out.firstPeriod;
      toast(`Ordered ${vps || 'your server'}. It is being set up.`
        + (first && first.amount ? ` First period: ${money(first.amount, first.currency)}, charged by the hour.` : ''));
      ctx.navigate(vps ? `/servers/${encodeURIComponent(vps)}` : '/servers');
    }, { errorTarget: error });
  });
  container.append(pageHeader('Order a server'), form);
  return null;
}

// ------------------------------------------------------------------ billing banner

const banners = new WeakMap();

// One banner per live session, kept across pages and updated as billing changes state.
export function billingBanner(session) {
  const live = session.live;
  if (banners.has(live)) return banners.get(live);
  const el = h('div', { class: 'banner-slot' });
  const paint = () => {
    const subs = live.list('Subscription');
    const me = live.list('Customer')[0];
    // Billing's state of the subscription, or the servers themselves reporting the suspension
    // (the VPS status can get there first: the resolver reads an operator's suspension directly).
    const pausedSubs = new Set(live.list('VPS').filter((v) => phaseOf(v) === 'Suspended').map((v) => v.spec.subscription));
    const suspended = subs.filter((s) => (s.status && s.status.state === 'Suspended') || pausedSubs.has(s.metadata.name));
    const overdue = subs.filter((s) => s.status && s.status.state === 'Overdue');
    if (!suspended.length && !overdue.length) { el.replaceChildren(); return; }
    const currency = (me && me.spec.currency) || 'EUR';
    const balance = BigInt((me && me.status && me.status.balanceMinor) || 0);
    const credit = me ? toMinor(me.spec.creditLimit || '0', currency) : 0n;
    const need = -(balance + credit);
    const pay = need > 0n ? ` Pay at least ${fromMinor(need, currency)} ${currency} to restore service.` : '';
    const bal = `Balance: ${fromMinor(balance, currency)} ${currency}.`;
    let text;
    if (suspended.length) {
      const reasons = [...new Set(suspended.map((s) => (s.status && s.status.suspendReason) || s.spec.suspend || 'nonpayment'))];
      const byOperator = reasons.some((r) => r !== 'nonpayment');
      text = byOperator
        ? `Suspended (${reasons.join(', ')}): ${suspended.length} subscription(s) are suspended by an operator and their servers are paused. Contact support to lift it.`
        : `Suspended for non-payment: your servers are paused. ${bal}${pay}`;
    } else {
      const since = overdue.map((s) => s.status.overdueSince).filter(Boolean).sort()[0];
      text = `Overdue${since ? ` since ${when(since)}` : ''}: your servers keep running during the grace period, then are suspended. ${bal}${pay}`;
    }
    el.replaceChildren(h('div', { class: `banner ${suspended.length ? 'bad' : 'warn'}`, role: 'alert', 'data-testid': 'billing-banner' },
      h('span', null, text), ' ', h('a', { href: '/billing' }, 'Billing')));
  };
  paint();
  live.on(paint);
  banners.set(live, el);
  return el;
}

