// The HTTP client of the panel. A browser session rides on the HttpOnly cookie; a token
// sign-in keeps the token in this tab's sessionStorage only and sends it as a bearer header.
// Every state-changing request carries X-Hostplane-CSRF: 1, which a cross-site form cannot send.

const TOKEN_KEY = 'hostplane.token';

export class ApiError extends Error {
  constructor(status, message, errors = []) {
    super(message);
    this.status = status;
    this.errors = errors;
  }
}

const listeners = new Set();
export function onUnauthorized(fn) { listeners.add(fn); }

export function token() {
  try { return sessionStorage.getItem(TOKEN_KEY); } catch { return null; }
}

export function setToken(value) {
  try {
    if (value) sessionStorage.setItem(TOKEN_KEY, value); else sessionStorage.removeItem(TOKEN_KEY);
  } catch { /* storage disabled: the token lives only as long as this page */ }
}

export function authHeaders() {
  const t = token();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

function describe(status, problem) {
  if (problem && (problem.detail || problem.title)) {
    const fields = (problem.errors || []).filter((e) => e.path).map((e) => `${e.path}: ${e.message}`);
    const detail = problem.detail || problem.title;
    return fields.length && !detail.includes(fields[0]) ? `${detail} (${fields.join('; ')})` : detail;
  }
  if (status === 401) return 'Your session has ended. Please sign in again.';
  if (status === 403) return 'You are not allowed to do that.';
  if (status === 404) return 'Not found.';
  if (status >= 500) return `The server failed (HTTP ${status}). Try again in a moment.`;
  return `The request failed (HTTP ${status}).`;
}

export async function request(method, path, body, { quiet401 = false } = {}) {
  const headers = { Accept: 'application/json', ...authHeaders() };
  if (method !== 'GET' && method !== 'HEAD') headers['X-Hostplane-CSRF'] = '1';
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method, headers, credentials: 'same-origin', cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, 'Cannot reach the server. Check your connection and try again.');
  }
  let data = null;
  const type = response.headers.get('content-type') || '';
  if (response.status !== 204 && type.includes('json')) {
    try { data = await response.json(); } catch { data = null; }
  }
  if (!response.ok) {
    if (response.status === 401 && !quiet401) for (const fn of listeners) fn();
    throw new ApiError(response.status, describe(response.status, data), (data && data.errors) || []);
  }
  return data;
}

export const get = (path, opts) => request('GET', path, undefined, opts);
export const post = (path, body) => request('POST', path, body === undefined ? {} : body);
export const patch = (path, body) => request('PATCH', path, body);
export const del = (path) => request('DELETE', path);

export const enc = encodeURIComponent;
