// A server's console: the serial console in xterm.js, or the screen in noVNC. Both ride one
// WebSocket opened with a one-time ticket (POST /v1/vps/<name>/console); the API relays it to
// the node. The libraries (vendor/) are imported only when this view opens.

import { h, render } from '../dom.js';
import * as api from '../api.js';
import { alertBox, pageHeader, toast } from '../ui.js';

const VENDOR = new URL('../../vendor/', import.meta.url);
const CLOSE_REASONS = {
  4401: 'The console ticket expired or your sign-in ended.',
  4403: 'The server is suspended: its console is closed.',
  4404: 'The console is not available: is the server running?',
  4409: 'The console was opened somewhere else.',
  4410: 'The server stopped.',
  4502: 'The server’s node cannot be reached.',
};

function styleOnce(href) {
  if ([...document.styleSheets].some((s) => s.href === href)) return;
  document.head.append(h('link', { rel: 'stylesheet', href }));
}

// The console's WebSocket URL with a fresh one-time ticket (valid 30 s, once).
async function ticketUrl(name, kind) {
  const ticket = await api.post(`/v1/vps/${api.enc(name)}/console`, { kind });
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${scheme}//${location.host}${ticket.url}`;
}

// xterm.js writes its theme and cell sizes into <style> elements, which the panel's CSP
// (style-src 'self', nothing inline) does not apply. The same text applied as constructed
// style sheets (CSSOM, which the CSP allows) gives the terminal its colours and metrics.
function adoptInlineStyles(root) {
  const sheets = new Map();
  const sync = () => {
    for (const el of root.querySelectorAll('style')) {
      let sheet = sheets.get(el);
      if (!sheet) {
        sheet = new CSSStyleSheet();
        sheets.set(el, sheet);
        document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
      }
      sheet.replaceSync(el.textContent || '');
    }
  };
  const observer = new MutationObserver(sync);
  observer.observe(root, { childList: true, subtree: true, characterData: true });
  sync();
  return () => {
    observer.disconnect();
    const ours = new Set(sheets.values());
    document.adoptedStyleSheets = document.adoptedStyleSheets.filter((s) => !ours.has(s));
  };
}

function closedMessage(ev) {
  return CLOSE_REASONS[ev.code] || ev.reason || 'The console was closed.';
}

// X11 keysyms for typing pasted text into the graphical console (Latin-1 maps to itself).
function keysym(ch) {
  if (ch === '\n' || ch === '\r') return 0xff0d;
  if (ch === '\t') return 0xff09;
  const cp = ch.codePointAt(0);
  return cp < 0x100 ? cp : 0x01000000 + cp;
}

export function consoleView(container, ctx) {
  const { params: [name], operator, query } = ctx;
  const kind = query.get('kind') === 'vnc' ? 'vnc' : 'serial';
  const base = `${operator ? '/ops/servers' : '/servers'}/${encodeURIComponent(name)}`;
  const status = h('p', { class: 'hint', role: 'status' }, 'Connecting…');
  const screen = h('div', { class: `console-screen ${kind}`, 'data-kind': kind });
  const tabs = h('div', { class: 'button-row' },
    h('a', { href: `${base}/console`, class: `btn ${kind === 'serial' ? 'primary' : ''}`, 'aria-current': kind === 'serial' ? 'page' : null }, 'Serial'),
    h('a', { href: `${base}/console?kind=vnc`, class: `btn ${kind === 'vnc' ? 'primary' : ''}`, 'aria-current': kind === 'vnc' ? 'page' : null }, 'Screen'));
  const tools = h('div', { class: 'button-row' });
  container.append(h('a', { href: base, class: 'back' }, `← ${name}`), pageHeader(`Console of ${name}`), tabs, tools,
    status, screen);

  let ws = null;
  let term = null;
  let rfb = null;
  let unadopt = null;
  let gone = false;
  const fail = (message) => { if (!gone) render(status, alertBox(message)); };

  const paste = async (send) => {
    let text = '';
    try { text = await navigator.clipboard.readText(); } catch { /* no clipboard permission */ }
    if (!text) text = window.prompt('Text to type into the console') || '';
    if (text) send(text);
  };

  const serial = async () => {
    styleOnce(new URL('xterm/xterm.css', VENDOR).href);
    const { Terminal } = await import(new URL('xterm/xterm.js', VENDOR).href);
    const small = window.innerWidth < 600;
    term = new Terminal({ convertEol: false, cursorBlink: true, fontSize: small ? 12 : 14, scrollback: 2000,
      fontFamily: 'ui-monospace, SFMono-Regular, Menlo, Consolas, monospace' });
    unadopt = adoptInlineStyles(screen);
    term.open(screen);
    ws = new WebSocket(await ticketUrl(name, 'serial'));
    ws.binaryType = 'arraybuffer';
    const encoder = new TextEncoder();
    const send = (text) => { if (ws && ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(text)); };
    term.onData(send);
    ws.onopen = () => { render(status, 'Connected. Press Enter if the prompt does not show.'); term.focus(); };
    ws.onmessage = (ev) => term.write(new Uint8Array(ev.data));
    ws.onclose = (ev) => fail(closedMessage(ev));
    render(tools,
      h('button', { type: 'button', class: 'btn', 'data-key': 'paste', onclick: () => paste(send) }, 'Paste'),
      h('button', { type: 'button', class: 'btn', 'data-key': 'ctrl-c', onclick: () => send('\x03') }, 'Ctrl-C'),
      h('button', { type: 'button', class: 'btn danger-outline', 'data-key': 'ctrl-alt-del', onclick: async () => {
        // A serial line has no Ctrl-Alt-Del: the reboot action is what the key would do.
        if (!window.confirm(`Reboot ${name}? (Ctrl-Alt-Del)`)) return;
        try { await api.post(`/v1/vps/${api.enc(name)}/actions/reboot`); toast(`Reboot ${name}: accepted.`); } catch (e) { fail(e.message); }
      } }, 'Ctrl-Alt-Del'));
  };

  const graphical = async () => {
    const { default: RFB } = await import(new URL('novnc/core/rfb.js', VENDOR).href);
    rfb = new RFB(screen, await ticketUrl(name, 'vnc'));
    rfb.scaleViewport = true;
    rfb.resizeSession = false;
    rfb.addEventListener('connect', () => render(status, 'Connected.'));
    rfb.addEventListener('disconnect', (ev) => fail(ev.detail.clean ? 'The console was closed.' : 'The console connection was lost.'));
    const type = (text) => { for (const ch of text) rfb.sendKey(keysym(ch), null); };
    render(tools,
      h('button', { type: 'button', class: 'btn', 'data-key': 'paste', onclick: () => paste(type) }, 'Paste'),
      h('button', { type: 'button', class: 'btn danger-outline', 'data-key': 'ctrl-alt-del', onclick: () => rfb.sendCtrlAltDel() }, 'Ctrl-Alt-Del'));
  };

  (kind === 'vnc' ? graphical() : serial()).catch((e) => fail(e.message || String(e)));

  return {
    destroy: () => {
      gone = true;
      if (ws) ws.close();
      if (rfb) rfb.disconnect();
      if (term) term.dispose();
      if (unadopt) unadopt();
    },
  };
}
