// Balance, ledger and statements: the customer's own, or any customer's for an operator.

import { h, render } from '../dom.js';
import * as api from '../api.js';
import { alertBox, money, pageHeader, subState, table, when } from '../ui.js';

export function ledgerPanel(customer, live, { compact = false } = {}) {
  const box = h('div', { class: 'ledger' }, h('p', { class: 'muted' }, 'Loading…'));
  const statement = h('div', { class: 'statement' });
  let inFlight = false;
  let again = false;

  const showStatement = async (month, button) => {
    button.disabled = true;
    button.setAttribute('aria-busy', 'true');
    try {
      const s = await api.get(`/v1/customers/${api.enc(customer)}/statements/${api.enc(month)}`);
      render(statement, h('h3', null, `Statement ${s.month}${s.final ? '' : ' (month still open)'}`),
        h('div', { class: 'summary-line' }, h('span', null, 'Opening'), h('strong', null, money(s.opening, s.currency))),
        table(['Type', 'Detail', 'Amount'], (s.lines || []).map((l) => h('tr', null, h('td', null, l.type),
          h('td', null, l.type === 'charge' ? `${l.subscription || ''} · ${l.plan || ''} · ${l.hours} h` : (l.description || l.reference || '')),
          h('td', { class: 'num' }, money(l.amount, s.currency)))), { empty: 'No entries in this month.', caption: `Statement ${s.month}` }),
        h('div', { class: 'summary-line' }, h('span', null, 'Closing'), h('strong', null, money(s.closing, s.currency))));
      statement.querySelector('h3').setAttribute('tabindex', '-1');
      statement.querySelector('h3').focus();
    } catch (e) {
      render(statement, alertBox(`The statement could not be loaded: ${e.message}`));
    } finally {
      button.disabled = false;
      button.removeAttribute('aria-busy');
    }
  };

  const load = async () => {
    if (inFlight) { again = true; return; }
    inFlight = true;
    try {
      const data = await api.get(`/v1/customers/${api.enc(customer)}/ledger`);
      const entries = (data.entries || []).slice().reverse().slice(0, compact ? 15 : 200);
      const months = (data.statements || []).slice().reverse();
      render(box,
        h('div', { class: 'balance' }, h('span', null, 'Balance'),
          h('strong', { class: data.balanceMinor < 0 ? 'neg' : '', 'data-testid': 'balance' }, money(data.balance, data.currency))),
        h('h3', null, 'Recent entries'),
        table(['When', 'Type', 'Description', 'Amount'], entries.map((e) => h('tr', null,
          h('td', null, when(e.time)), h('td', null, e.type), h('td', null, e.description || e.subscription || e.reference || ''),
          h('td', { class: `num ${e.amountMinor < 0 ? 'neg' : ''}` }, money(e.amount, e.currency)))),
        { empty: 'No entries yet.', caption: 'Ledger entries' }),
        h('h3', null, 'Statements'),
        months.length ? h('ul', { class: 'months' }, months.map((m) => h('li', null,
          h('button', { type: 'button', class: 'btn small', onclick: (ev) => showStatement(m, ev.currentTarget) }, m))))
          : h('p', { class: 'empty' }, 'No closed months yet.'),
        h('button', { type: 'button', class: 'btn small', onclick: (ev) => showStatement(new Date().toISOString().slice(0, 7), ev.currentTarget) }, 'This month so far'),
        statement);
    } catch (e) {
      render(box, alertBox(`The ledger could not be loaded: ${e.message}`));
    } finally {
      inFlight = false;
      if (again) { again = false; load(); }
    }
  };
  load();
  // Billing writes the customer's status with every charge or payment: reload the ledger then.
  const off = live.on((kinds) => { if (kinds.has('Customer')) load(); });
  return { el: box, destroy: off };
}

export function billingView(container, ctx) {
  const { live, who } = ctx;
  const subs = h('section', { class: 'card', 'aria-labelledby': 'subs-h' });
  const ledger = ledgerPanel(who.customer, live);
  container.append(pageHeader('Billing'), h('div', { class: 'grid2' },
    h('section', { class: 'card', 'aria-labelledby': 'led-h' }, h('h2', { id: 'led-h' }, 'Ledger'), ledger.el), subs));
  const paint = () => {
    render(subs, h('h2', { id: 'subs-h' }, 'Subscriptions'), table(['Subscription', 'Plan', 'State', 'Paid until'],
      live.list('Subscription').map((s) => h('tr', null, h('td', null, s.metadata.name), h('td', null, s.spec.plan),
        h('td', null, subState(s),
          s.status && s.status.suspendReason ? ` (${s.status.suspendReason})` : ''),
        h('td', null, when(s.status && s.status.paidUntil)))), { empty: 'No subscriptions.', caption: 'Subscriptions' }));
  };
  paint();
  const off = live.on(paint);
  return { destroy: () => { off(); ledger.destroy(); } };
}
