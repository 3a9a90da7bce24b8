// Sign in: a customer with e-mail and password (a session cookie), or anyone with an API token.

import { h } from '../dom.js';
import * as api from '../api.js';
import { busy, field } from '../ui.js';

export function loginView({ onSignedIn }) {
  let mode = 'password';
  const error = h('div', { class: 'form-error' });
  const email = h('input', { type: 'email', name: 'email', autocomplete: 'username', required: true, autofocus: true });
  const password = h('input', { type: 'password', name: 'password', autocomplete: 'current-password', required: true });
  const tokenInput = h('input', { type: 'password', name: 'token', autocomplete: 'off', spellcheck: 'false',
    placeholder: 'hpt_…' });
  const submit = h('button', { type: 'submit', class: 'btn primary wide' }, 'Sign in');
  const passwordFields = h('div', null, field('E-mail', email), field('Password', password));
  const tokenFields = h('div', { hidden: true }, field('API token', tokenInput,
    'A token from `hostplane token create` or the admin token printed by `hostplane up`. Kept in this tab only.'));
  const toggle = h('button', { type: 'button', class: 'link' }, 'Sign in with an API token instead');

  toggle.addEventListener('click', () => {
    mode = mode === 'password' ? 'token' : 'password';
    passwordFields.hidden = mode !== 'password';
    tokenFields.hidden = mode !== 'token';
    email.required = password.required = mode === 'password';
    tokenInput.required = mode === 'token';
    toggle.textContent = mode === 'password' ? 'Sign in with an API token instead' : 'Sign in with e-mail and password';
    (mode === 'password' ? email : tokenInput).focus();
    error.replaceChildren();
  });

  const form = h('form', { class: 'card login', novalidate: false },
    h('h1', null, 'Sign in to Hostplane'), error, passwordFields, tokenFields, submit, toggle);
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    busy(submit, 'Signing in…', async () => {
      let who;
      if (mode === 'password') {
        api.setToken(null);
        who = await api.post('/v1/auth/login', { email: email.value.trim(), password: password.value })
          .catch((e) => {
            if (e.status === 401 || e.status === 403) throw new Error('The e-mail or password is not right.');
            throw e;
          });
      } else {
        const value = tokenInput.value.trim();
        if (!/^hpt_[0-9a-f]+_\S+$/.test(value)) throw new Error('That does not look like a Hostplane token (hpt_…).');
        api.setToken(value);
        try {
          who = await api.get('/v1/auth/whoami', { quiet401: true });
        } catch (e) {
          api.setToken(null);
          if (e.status === 401) throw new Error('The token is not valid (revoked, expired or mistyped).');
          throw e;
        }
      }
      await onSignedIn(who);
    }, { errorTarget: error });
  });
  return h('main', { id: 'main', class: 'login-wrap' }, form);
}
