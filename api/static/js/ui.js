// Shared pieces of the panel: money, badges, progress on buttons, messages, dialogs, bars.

import { h, uid } from './dom.js';

// ISO 4217 minor-unit exponents (as the server's specs.money); 2 for anything else.
const EXPONENT = { JPY: 0, KRW: 0, BHD: 3, KWD: 3, OMR: 3, TND: 3 };

export function exponent(currency) { return EXPONENT[currency] ?? 2; }

// Decimal string -> BigInt minor units. Never floats: "0.10" + "0.20" must be 0.30 exactly.
export function toMinor(amount, currency) {
  const exp = exponent(currency);
  const text = String(amount).trim();
  const negative = text.startsWith('-');
  const [whole, frac = ''] = text.replace(/^[-+]/, '').split('.');
  const digits = (whole || '0') + frac.padEnd(exp, '0').slice(0, exp);
  const value = BigInt(digits || '0');
  return negative ? -value : value;
}

export function fromMinor(minor, currency) {
  const exp = exponent(currency);
  const value = BigInt(minor);
  const negative = value < 0n;
  const text = (negative ? -value : value).toString().padStart(exp + 1, '0');
  const whole = exp ? text.slice(0, -exp) : text;
  const frac = exp ? `.${text.slice(-exp)}` : '';
  return `${negative ? '-' : ''}${whole.replace(/\B(?=(\d{3})+(?!\d))/g, '\u202f')}${frac}`;
}

export function money(amount, currency) {
  if (amount === undefined || amount === null || amount === '') return '—';
  return `${fromMinor(toMinor(amount, currency), currency)} ${currency || ''}`.trim();
}

export function moneyMinor(minor, currency) { return `${fromMinor(minor, currency)} ${currency || ''}`.trim(); }

export function price(plan) {
  const p = plan && plan.spec && plan.spec.price;
  return p ? `${money(p.amount, p.currency)} / month` : '—';
}

const PHASE_TONE = {
  Running: 'ok', Stopped: 'idle', Paused: 'warn', Suspended: 'bad', Failed: 'bad', Terminating: 'warn',
  Pending: 'busy', Scheduled: 'busy', Provisioning: 'busy', Resizing: 'busy', Unknown: 'idle',
  Ready: 'ok', NotReady: 'bad', Active: 'ok', Overdue: 'warn', Terminated: 'idle',
};

export function badge(text, tone) {
  const label = text || 'Unknown';
  return h('span', { class: `badge ${tone || PHASE_TONE[label] || 'idle'}` }, label);
}

// A subscription's billing state; "Pending" until billing has written one.
export function subState(sub) {
  const state = sub && sub.status && sub.status.state;
  return state ? badge(state) : h('span', { class: 'badge busy', title: 'Billing has not reported a state yet' }, 'Pending');
}

export function when(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

export function ago(iso) {
  if (!iso) return '';
  const s = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  if (Number.isNaN(s)) return '';
  if (s < 60) return 'just now';
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

export function mib(value) {
  if (value === undefined || value === null) return '—';
  return value >= 1024 && value % 1024 === 0 ? `${value / 1024} GiB` : `${value} MiB`;
}

export function planSummary(plan) {
  if (!plan || !plan.spec) return '';
  const s = plan.spec;
  return `${s.vcpus} vCPU · ${mib(s.memoryMiB)} RAM · ${s.diskGiB} GiB disk`;
}

// Messages for everyone: polite for news, assertive for failures (screen readers read them at once).
export function toast(message, tone = 'ok') {
  const box = document.getElementById('toasts');
  const item = h('div', { class: `toast ${tone}`, role: tone === 'bad' ? 'alert' : null }, message);
  box.append(item);
  setTimeout(() => item.remove(), tone === 'bad' ? 9000 : 4000);
}

export function alertBox(message, tone = 'bad') {
  return h('div', { class: `alert ${tone}`, role: tone === 'bad' ? 'alert' : 'status' }, message);
}

// Run `work` with the button disabled and a progress label until the server has answered.
export async function busy(button, label, work, { errorTarget } = {}) {
  const before = button.textContent;
  button.disabled = true;
  button.setAttribute('aria-busy', 'true');
  button.classList.add('working');
  button.textContent = label;
  if (errorTarget) errorTarget.replaceChildren();
  try {
    return await work();
  } catch (error) {
    const message = error && error.message ? error.message : String(error);
    if (errorTarget) errorTarget.replaceChildren(alertBox(message)); else toast(message, 'bad');
    return undefined;
  } finally {
    button.disabled = false;
    button.removeAttribute('aria-busy');
    button.classList.remove('working');
    button.textContent = before;
  }
}

export function field(label, control, hint) {
  const id = control.id || uid('f');
  control.id = id;
  const hintId = hint ? `${id}-hint` : null;
  if (hintId) control.setAttribute('aria-describedby', hintId);
  return h('div', { class: 'field' },
    h('label', { for: id }, label), control, hint ? h('div', { class: 'hint', id: hintId }, hint) : null);
}

export function bar(label, used, total, unit = '', format = null) {
  const pct = total > 0 ? Math.min(100, Math.round((used / total) * 100)) : 0;
  const show = format || ((v) => `${v}${unit}`);
  const tone = pct >= 90 ? 'bad' : pct >= 70 ? 'warn' : 'ok';
  const fill = h('span', { class: `fill ${tone}` });
  fill.style.width = `${pct}%`;
  return h('div', { class: 'meter' },
    h('div', { class: 'meter-label' }, h('span', null, label), h('span', null, `${show(used)} / ${show(total)} (${pct}%)`)),
    h('div', { class: 'track', role: 'meter', 'aria-label': label, 'aria-valuemin': 0, 'aria-valuemax': total,
      'aria-valuenow': used }, fill));
}

export function table(headers, rows, { empty = 'Nothing here yet.', caption } = {}) {
  if (!rows.length) return h('p', { class: 'empty' }, empty);
  return h('div', { class: 'table-wrap' }, h('table', null,
    caption ? h('caption', { class: 'sr-only' }, caption) : null,
    h('thead', null, h('tr', null, headers.map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', null, rows)));
}

// A modal dialog (native <dialog>: focus is trapped and Escape cancels). `body` builds the
// content and returns {confirm: button, valid?: () => bool}. Resolves with the value of
// `action()` once it succeeds, or null if cancelled; failures are shown inside the dialog.
export function dialog({ title, body, confirmLabel, progressLabel, tone = 'primary', action }) {
  return new Promise((resolve) => {
    const error = h('div', { class: 'dialog-error' });
    const confirm = h('button', { type: 'submit', class: `btn ${tone}` }, confirmLabel);
    const cancel = h('button', { type: 'button', class: 'btn' }, 'Cancel');
    const titleId = uid('dlg');
    const form = h('form', { method: 'dialog' });
    const dlg = h('dialog', { class: 'dialog', 'aria-labelledby': titleId }, form);
    const content = body(confirm);
    form.append(h('h2', { id: titleId }, title), content, error, h('div', { class: 'actions' }, cancel, confirm));
    let result = null;
    cancel.addEventListener('click', () => dlg.close());
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (confirm.disabled) return;
      const value = await busy(confirm, progressLabel || `${confirmLabel}…`, async () => {
        const out = await action();
        return out === undefined ? true : out;
      }, { errorTarget: error });
      if (value !== undefined) { result = value; dlg.close(); }
    });
    dlg.addEventListener('close', () => { dlg.remove(); resolve(result); });
    document.body.append(dlg);
    dlg.showModal();
  });
}

export function pageHeader(title, ...extra) {
  return h('div', { class: 'page-head' }, h('h1', { tabindex: '-1' }, title), extra.length ? h('div', { class: 'page-tools' }, extra) : null);
}
