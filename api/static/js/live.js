// A live copy of the objects this principal may see: listed once, then kept current by the
// server-sent events of /v1/watch. After a dropped stream it reconnects by itself from the last
// event id it saw (backing off up to 10 s); when the server says the revision is gone
// (compacted) or the client fell behind (relist) it lists again and watches from there.
//
// A cookie session uses the browser's EventSource; a token session reads the same stream with
// fetch, because EventSource cannot send an Authorization header.

import { get, authHeaders, token } from './api.js';

const PLURAL = { VPS: 'vps', Subscription: 'subscriptions', Customer: 'customers', Node: 'nodes', Plan: 'plans',
  Image: 'images' };

export class Live {
  constructor(kinds) {
    this.kinds = kinds;
    this.objects = new Map(kinds.map((k) => [k, new Map()]));
    this.hidden = new Set(); // kinds this principal may not list
    this.listeners = new Set();
    this.state = 'connecting';
    this.revision = null;
    this.stream = null;
    this.retry = 0;
    this.stopped = false;
    this.timer = null;
    this.lastEventAt = 0;
  }

  on(fn) { this.listeners.add(fn); return () => this.listeners.delete(fn); }

  list(kind) {
    return [...(this.objects.get(kind) || new Map()).values()].filter((o) => o.spec)
      .sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
  }

  find(kind, name) {
    const obj = (this.objects.get(kind) || new Map()).get(name);
    return obj && obj.spec ? obj : null;
  }

  notify(changed) {
    if (this.pending) { for (const k of changed) this.pending.add(k); return; }
    this.pending = new Set(changed);
    // One render per animation frame however many events a revision carried.
    requestAnimationFrame(() => {
      const kinds = this.pending;
      this.pending = null;
      for (const fn of this.listeners) fn(kinds);
    });
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.notify(['_state']);
  }

  async start() {
    this.stopped = false;
    await this.relist();
    this.watch();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.closeStream();
  }

  async relist() {
    const results = await Promise.all(this.kinds.map((kind) => get(`/v1/${PLURAL[kind]}`).then(
      (data) => ({ kind, data }),
      (error) => {
        if (error.status === 403 || error.status === 404) return { kind, data: null };
        throw error;
      })));
    let revision = null;
    for (const { kind, data } of results) {
      const map = new Map();
      if (data === null) {
        this.hidden.add(kind);
      } else {
        this.hidden.delete(kind);
        for (const item of data.items) map.set(item.metadata.name, item);
        const rv = Number(data.metadata.resourceVersion);
        // Watch from the oldest list: replaying a change already listed is harmless, missing one is not.
        revision = revision === null ? rv : Math.min(revision, rv);
      }
      this.objects.set(kind, map);
    }
    this.revision = revision ?? 0;
    this.notify(this.kinds);
  }

  watchURL() {
    const kinds = this.kinds.filter((k) => !this.hidden.has(k)).map((k) => PLURAL[k]).join(',');
    return `/v1/watch?kinds=${encodeURIComponent(kinds)}&resourceVersion=${this.revision}`;
  }

  watch() {
    if (this.stopped) return;
    this.closeStream();
    this.setState(this.retry ? 'reconnecting' : 'connecting');
    if (token()) this.watchFetch(); else this.watchEventSource();
  }

  closeStream() {
    if (this.stream) this.stream.close();
    this.stream = null;
  }

  watchEventSource() {
    const source = new EventSource(this.watchURL());
    this.stream = source;
    source.onopen = () => { this.retry = 0; this.setState('live'); };
    source.onmessage = (ev) => this.onData(ev.data, ev.lastEventId);
    const restart = () => { source.close(); this.relistSoon(); };
    source.addEventListener('compacted', restart);
    source.addEventListener('relist', restart);
    // The browser would reconnect with the URL's old revision; resume from the last event instead.
    source.onerror = () => { source.close(); if (this.stream === source) this.reconnect(); };
  }

  watchFetch() {
    const controller = new AbortController();
    let lastByte = performance.now();
    // The server sends a heartbeat comment every 15 s; silence for much longer means a dead
    // connection that TCP has not noticed yet.
    const watchdog = setInterval(() => {
      if (performance.now() - lastByte > 45000 && this.stream === stream) this.reconnect();
    }, 5000);
    const stream = { close: () => { clearInterval(watchdog); controller.abort(); } };
    this.stream = stream;
    const headers = { Accept: 'text/event-stream', ...authHeaders() };
    if (this.revision) headers['Last-Event-ID'] = String(this.revision);
    fetch(this.watchURL(), { headers, signal: controller.signal, cache: 'no-store' }).then(async (response) => {
      if (!response.ok) throw new Error(`watch: HTTP ${response.status}`);
      this.retry = 0;
      this.setState('live');
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        lastByte = performance.now();
        buffer += value;
        let end;
        while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, '');
          if (this.onFrame(frame) === 'restart') { controller.abort(); this.relistSoon(); return; }
        }
      }
      throw new Error('watch: stream ended');
    }).catch(() => {
      // Only the stream still in use reconnects; one closed on purpose has been replaced already.
      if (this.stream === stream) this.reconnect();
    });
  }

  onFrame(frame) {
    let event = 'message'; let id = ''; const data = [];
    for (const line of frame.split(/\r?\n/)) {
      if (!line || line.startsWith(':')) continue;
      const at = line.indexOf(':');
      const field = at < 0 ? line : line.slice(0, at);
      const value = at < 0 ? '' : line.slice(at + 1).replace(/^ /, '');
      if (field === 'event') event = value;
      else if (field === 'id') id = value;
      else if (field === 'data') data.push(value);
    }
    if (event === 'compacted' || event === 'relist') return 'restart';
    if (data.length) this.onData(data.join('\n'), id);
    return null;
  }

  onData(text, id) {
    let ev;
    try { ev = JSON.parse(text); } catch { return; }
    this.apply(ev);
    if (id) this.revision = Number(id);
    this.lastEventAt = performance.now();
  }

  apply(ev) {
    const map = this.objects.get(ev.kind);
    if (!map) return;
    const current = map.get(ev.name);
    if (ev.part === 'spec') {
      if (ev.type === 'DELETE') map.delete(ev.name);
      else map.set(ev.name, { ...ev.object, status: current ? current.status : null });
    } else if (ev.type === 'DELETE') {
      if (current) map.set(ev.name, { ...current, status: null });
    } else {
      map.set(ev.name, { ...(current || { metadata: { name: ev.name } }), status: ev.object });
    }
    this.notify([ev.kind]);
  }

  reconnect() {
    if (this.stopped) return;
    this.closeStream();
    this.retry += 1;
    this.setState('reconnecting');
    const delay = Math.min(10000, 500 * 2 ** Math.min(this.retry - 1, 5));
    // A stream cannot say why it failed; after a few tries ask whether the session is still
    // valid (a 401 there signs the panel out instead of retrying for ever).
    if (this.retry === 3) get('/v1/auth/whoami').catch(() => {});
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.watch(), delay);
  }

  relistSoon() {
    if (this.stopped) return;
    this.closeStream();
    this.setState('relisting');
    clearTimeout(this.timer);
    this.timer = setTimeout(async () => {
      try {
        await this.relist();
        this.watch();
      } catch {
        this.reconnect();
      }
    }, 200);
  }
}
