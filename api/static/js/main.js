// The panel's shell: who is signed in, the navigation for their role, the live connection,
// and history routing (the server answers any page path with index.html).

import { h, render } from './dom.js';
import * as api from './api.js';
import { Live } from './live.js';
import { toast } from './ui.js';
import { loginView } from './views/login.js';
import * as customer from './views/customer.js';
import * as billing from './views/billing.js';
import * as ops from './views/ops.js';
import { consoleView } from './views/console.js';

const app = document.getElementById('app');
const session = { who: null, live: null };

const CUSTOMER_ROUTES = [
  [/^\/servers$/, customer.serversView],
  [/^\/servers\/([^/]+)$/, customer.serverView],
  [/^\/servers\/([^/]+)\/console$/, consoleView],
  [/^\/order$/, customer.orderView],
  [/^\/billing$/, billing.billingView],
];
const OPERATOR_ROUTES = [
  [/^\/ops\/nodes$/, ops.nodesView],
  [/^\/ops\/servers$/, ops.serversView],
  [/^\/ops\/servers\/([^/]+)$/, customer.serverView],
  [/^\/ops\/servers\/([^/]+)\/console$/, consoleView],
  [/^\/ops\/customers$/, ops.customersView],
  [/^\/ops\/customers\/([^/]+)$/, ops.customerView],
  [/^\/ops\/events$/, ops.eventsView],
];
const NAV = {
  customer: [['/servers', 'My servers'], ['/order', 'Order'], ['/billing', 'Billing']],
  operator: [['/ops/nodes', 'Nodes'], ['/ops/servers', 'Servers'], ['/ops/customers', 'Customers'],
    ['/ops/events', 'Events']],
};

export function isOperator(who) { return who && (who.role === 'admin' || who.role === 'operator'); }

function home() {
  if (!session.who) return '/login';
  return isOperator(session.who) ? '/ops/nodes' : '/servers';
}

export function navigate(path, { replace = false } = {}) {
  if (replace) history.replaceState(null, '', path); else history.pushState(null, '', path);
  route();
}

// Same-origin links navigate inside the app; modified clicks (new tab, etc.) keep their meaning.
document.addEventListener('click', (ev) => {
  const link = ev.target.closest('a[href]');
  if (!link || ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
  const url = new URL(link.href, location.href);
  if (url.origin !== location.origin || link.target || url.pathname.startsWith('/v1/') || link.hasAttribute('download')) return;
  ev.preventDefault();
  navigate(url.pathname + url.search);
});
window.addEventListener('popstate', () => route());

async function whoami() {
  try {
    return await api.get('/v1/auth/whoami', { quiet401: true });
  } catch (error) {
    if (error.status === 401 || error.status === 403) {
      api.setToken(null); // a stored token that no longer works is dropped
      return null;
    }
    throw error;
  }
}

export async function signedIn(who) {
  session.who = who;
  if (session.live) session.live.stop();
  session.live = new Live(isOperator(who) ? ['VPS', 'Node', 'Subscription', 'Customer', 'Plan', 'Image']
    : ['VPS', 'Subscription', 'Customer', 'Plan', 'Image']);
  session.live.on((kinds) => { if (kinds.has('_state')) paintConnection(); });
  await session.live.start();
  const path = location.pathname;
  navigate(path === '/' || path === '/login' ? home() : path + location.search, { replace: true });
}

export async function signOut() {
  try {
    if (!api.token()) await api.post('/v1/auth/logout');
  } catch { /* the session is dropped locally either way */ }
  api.setToken(null);
  if (session.live) session.live.stop();
  session.live = null;
  session.who = null;
  navigate('/login');
}

api.onUnauthorized(() => {
  if (!session.who) return;
  toast('Your session has ended. Please sign in again.', 'bad');
  api.setToken(null);
  if (session.live) session.live.stop();
  session.live = null;
  session.who = null;
  navigate('/login', { replace: true });
});

let connection = null;
function paintConnection() {
  if (!connection || !session.live) return;
  const state = session.live.state;
  const label = { live: 'Live', connecting: 'Connecting…', reconnecting: 'Reconnecting…', relisting: 'Refreshing…' }[state] || state;
  connection.className = `conn ${state}`;
  connection.textContent = label;
  connection.title = state === 'live' ? 'Updates arrive as they happen' : 'Updates paused; reconnecting by itself';
}

let current = null;
function shell(role, content) {
  const nav = NAV[role].map(([href, label]) => h('a', {
    href, class: 'nav-link', 'aria-current': location.pathname.startsWith(href) ? 'page' : null,
  }, label));
  connection = h('span', { class: 'conn', role: 'status', 'aria-live': 'polite' });
  paintConnection();
  const who = session.who;
  return [
    h('header', { class: 'top' },
      h('a', { href: home(), class: 'brand' }, h('span', { class: 'logo', 'aria-hidden': 'true' }), 'Hostplane'),
      h('nav', { 'aria-label': 'Main' }, nav),
      h('div', { class: 'who' }, connection,
        h('span', { class: 'who-name' }, who.name || who.customer || who.role),
        h('button', { type: 'button', class: 'btn small', onclick: signOut }, 'Sign out'))),
    role === 'customer' ? customer.billingBanner(session) : null,
    h('main', { id: 'main', tabindex: '-1' }, content),
  ];
}

export function route() {
  if (current && current.destroy) current.destroy();
  current = null;
  const path = location.pathname;
  if (!session.who) {
    if (path !== '/login') history.replaceState(null, '', '/login');
    render(app, loginView({ onSignedIn: signedIn }));
    app.removeAttribute('aria-busy');
    performance.mark('hostplane:route');
    return;
  }
  const operator = isOperator(session.who);
  if (!operator && session.who.role !== 'customer') {
    render(app, h('main', { id: 'main', class: 'narrow' }, h('h1', null, 'Hostplane'),
      h('p', null, `The panel is for customers and operators; this sign-in has role “${session.who.role}”.`),
      h('button', { class: 'btn', onclick: signOut }, 'Sign out')));
    return;
  }
  const routes = operator ? OPERATOR_ROUTES : CUSTOMER_ROUTES;
  for (const [pattern, view] of routes) {
    const match = path.match(pattern);
    if (match) {
      const container = h('div', { class: 'view' });
      const ctx = { session, live: session.live, who: session.who, params: match.slice(1).map(decodeURIComponent),
        query: new URLSearchParams(location.search), navigate, operator };
      current = view(container, ctx) || null;
      render(app, shell(operator ? 'operator' : 'customer', container));
      app.removeAttribute('aria-busy');
      const heading = container.querySelector('h1');
      if (heading && document.activeElement === document.body) heading.focus({ preventScroll: true });
      document.title = `${heading ? heading.textContent : 'Hostplane'} · Hostplane`;
      performance.mark('hostplane:route'); // the benchmark's "interactive": a page drawn from live data
      return;
    }
  }
  navigate(home(), { replace: true });
}

async function boot() {
  try {
    const who = await whoami();
    if (who) { await signedIn(who); return; }
  } catch (error) {
    render(app, h('main', { id: 'main', class: 'narrow' }, h('h1', null, 'Hostplane'),
      h('div', { class: 'alert bad', role: 'alert' }, `The panel could not reach the API: ${error.message}`),
      h('button', { class: 'btn', onclick: () => location.reload() }, 'Try again')));
    app.removeAttribute('aria-busy');
    return;
  }
  route();
}

boot();
