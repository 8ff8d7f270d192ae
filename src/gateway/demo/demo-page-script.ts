// The demo page's module script, as text. It is what an application would write around the client: fetch
// a token, connect, render events. Written without template literals so it can live inside one.

export const DEMO_PAGE_SCRIPT = String.raw`
import { connect } from '/warren-client.js';

const $ = (id) => document.getElementById(id);
const el = (tag, cls, text) => {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
};
// Distinct hues for teams (a plain hash put ICU and Pharmacy both in green).
const HUES = [232, 168, 24, 330, 198, 276, 44, 0];
const hue = (s) => HUES[[...String(s)].reduce((h, c) => (h * 31 + c.charCodeAt(0)) % 9973, 7) % HUES.length];
const clock = () => new Date().toLocaleTimeString([], { hour12: false });
const SAMPLES = ['Bed 4 needs a check', 'New lab results for patient 1182', 'Shift handover at 19:00',
  'Room 12 is ready', 'Order 5521 dispensed', 'Imaging slot moved to 14:30'];

let directory = [];
let client;
let count = 0;
// Who the page is signed in as. The pickers only say whom "Switch user" signs in next: until then the
// status, the feed and the publish form stay with the signed-in user (the chips beside the pickers show
// the picked user's teams, marked as not signed in yet).
let me;

async function api(path, body) {
  const init = body === undefined ? {} : {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) };
  const res = await fetch(path, init);
  const json = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(json.error || res.status + ' ' + res.statusText);
  return json;
}

const tenant = () => directory.find((t) => t.id === $('tenant').value) || directory[0];
const user = () => tenant().users.find((u) => u.id === $('user').value) || tenant().users[0];
// The signed-in user, or while nobody is, the one picked.
const who = () => me || { t: tenant(), u: user() };
const teamName = (id, t = who().t) => (t.teams.find((x) => x.id === id) || { name: id }).name;
const userName = (id) => (who().t.users.find((u) => u.id === id) || { name: id }).name;
const options = (items) => items.map((i) => Object.assign(el('option', '', i.name), { value: i.id }));

function chip(teamId, t) {
  const c = el('span', 'chip', teamName(teamId, t));
  c.style.setProperty('--hue', hue(teamId));
  return c;
}

function fillUsers() {
  $('user').replaceChildren(...options(tenant().users));
  fillMemberships();
}

const firstName = (u) => u.name.split(' ')[0];

function fillMemberships() {
  // The chips stand next to the pickers, so they are the picked user's, named: until "Switch user", that
  // may be someone other than the signed-in user, whose teams the publish form and the feed keep.
  const picked = user();
  const pending = me && (me.t !== tenant() || me.u !== picked);
  const hint = pending ? [el('span', 'pending', 'not signed in yet')] : [];
  $('memberships').replaceChildren(el('span', '', firstName(picked) + ' is in'),
    ...picked.teams.map((id) => chip(id, tenant())), ...hint);
  const { t, u } = who();
  const teams = u.teams;
  const team = $('team').value;
  $('team').replaceChildren(...options(t.teams));
  $('team').value = t.teams.some((x) => x.id === team) ? team : teams[0] || t.teams[0].id;
  const signedIn = me ? '' : ' (not signed in)';
  $('sender').textContent = 'As ' + u.name + ', to a team of ' + t.name + signedIn + '.';
  const names = teams.map((id) => teamName(id));
  const list = names.length > 1 ? names.slice(0, -1).join(', ') + ' and ' + names.at(-1) : names[0];
  $('audience').textContent = 'Events for ' + list + ' reach ' + firstName(u) +
    '’s tabs; events for other teams and organisations never do.';
}

function log(text, bad) {
  // While the gateway is down every retry fails alike: one line that counts them, not a screen of copies.
  const last = $('log').firstElementChild;
  if (last && last.dataset.text === text) {
    last.dataset.times = String(Number(last.dataset.times) + 1);
    last.querySelector('time').textContent = clock();
    return last.querySelector('.times').replaceChildren('×' + last.dataset.times);
  }
  const li = el('li', bad ? 'bad' : '');
  li.dataset.text = text;
  li.dataset.times = '1';
  li.append(el('time', '', clock()), el('span', '', text), el('span', 'times'));
  $('log').prepend(li);
  while ($('log').children.length > 6) $('log').lastChild.remove();
}

const ROLE = { own: 'own socket', leader: 'this tab holds the socket', follower: 'via a sibling tab' };

function connected() {
  // A follower is told here, once its leader's connection reaches it: its role changes before that.
  const via = client.role === 'follower' ? ' via a sibling tab' : '';
  log('connected to node ' + client.session.gateway + via);
}

// Without a close code, a shared connection was not lost but handed on: the tab holding it closed, or
// disconnected, and the next tab in line opens one at once. Not an error.
function lost(code) {
  // A leader hears this right after taking over, which roleChanged has logged.
  if (code === undefined && client.role === 'leader') return;
  if (code === undefined && client.role === 'follower')
    return log('the tab holding the connection closed; the next tab takes over');
  log('connection lost' + (code ? ' (close ' + code + ')' : '') + ', reconnecting', true);
}

function roleChanged(role) {
  showStatus();
  if (role === 'follower') return;
  // Past 'connecting', a leader took over from another tab: the first sign of it when that tab was closed
  // (it could not say so); after its own 'down' this tab was already told (see lost).
  if (role === 'leader' && client.state === 'connected')
    log('the tab holding the connection closed; this tab takes over');
  else if (role === 'leader' && client.state === 'reconnecting') log('this tab takes over the connection');
  else log(ROLE[role]);
}

function showStatus() {
  const box = $('status');
  const state = client ? client.state : 'closed';
  box.dataset.state = state;
  const text = $('status-text');
  if (!client || state === 'closed') return text.replaceChildren('Not connected');
  const name = el('strong', '', who().u.name + ' · ' + who().t.name);
  const session = client.session;
  if (state !== 'connected' || !session) return text.replaceChildren(name, ' — ' + state + '…');
  text.replaceChildren(name, ' — node ', el('span', 'node', session.gateway), ' · ' + ROLE[client.role]);
}

function addEvent(e) {
  const data = e.data && typeof e.data === 'object' ? e.data : { text: JSON.stringify(e.data) };
  const li = el('li', 'event');
  li.style.setProperty('--hue', hue(data.team || e.type));
  const head = el('div', 'event-head');
  head.append(el('span', 'type', e.type));
  if (data.team) head.append(chip(data.team));
  if (data.from) head.append(el('span', '', 'from ' + userName(data.from)));
  head.append(el('time', '', clock()));
  li.append(head, el('p', '', String(data.text ?? '')), el('code', '', e.id));
  $('events').prepend(li);
  while ($('events').children.length > 100) $('events').lastChild.remove();
  $('count').textContent = String(++count);
  $('empty').hidden = true;
}

function clearEvents() {
  $('events').replaceChildren();
  count = 0;
  $('count').textContent = '0';
  $('empty').hidden = false;
}

function disconnect() {
  if (client) client.close();
  client = undefined;
  me = undefined;
  fillMemberships();
  $('disconnect').disabled = true;
  $('connect').textContent = 'Connect';
  showStatus();
}

function start() {
  disconnect();
  clearEvents();
  const t = tenant();
  const u = user();
  me = { t, u };
  fillMemberships();
  history.replaceState(null, '', '#' + t.id + '/' + u.id + ($('share').checked ? '' : '/own'));
  client = connect({
    url: (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws',
    getToken: () => api('/dev/token', { tenantId: t.id, userId: u.id }).then((r) => r.token),
    shareAcrossTabs: $('share').checked,
  });
  client.on('state', (s) => {
    showStatus();
    if (s.to === 'connected') connected();
    else if (s.to === 'reconnecting') lost(s.code);
  });
  client.on('role', roleChanged);
  client.on('event', addEvent);
  client.on('resync', (r) => log('may have missed events (' + r.reason.replace('_', ' ') + ')', true));
  client.on('error', (e) => log(e.code + ': ' + e.message, true));
  $('disconnect').disabled = false;
  $('connect').textContent = 'Switch user';
  log('signing in as ' + u.name);
  showStatus();
}

// Which field a refusal of /dev/publish is about, by the start of its message.
const FIELD_OF = { 'event type': 'type', text: 'text' };

async function publish(event) {
  event.preventDefault();
  const text = $('text').value.trim() || $('text').placeholder;
  const flash = $('flash');
  for (const id of Object.values(FIELD_OF)) {
    $(id).removeAttribute('aria-invalid');
    $(id).removeAttribute('aria-describedby');
  }
  try {
    const { t, u } = who();
    const { id } = await api('/dev/publish', { tenantId: t.id, teamId: $('team').value,
      type: $('type').value.trim() || 'message.created', text, from: u.id });
    flash.className = 'flash';
    flash.textContent = 'Published ' + id + ' to ' + teamName($('team').value);
    $('text').value = '';
    $('text').placeholder = SAMPLES[Math.floor(Math.random() * SAMPLES.length)];
  } catch (error) {
    flash.className = 'flash err';
    // fetch rejects with a TypeError ("Failed to fetch") when nothing answers.
    flash.textContent = error instanceof TypeError
      ? 'Not published: warren dev does not answer (stopped?)' : error.message;
    const field = Object.keys(FIELD_OF).find((start) => error.message.startsWith(start));
    if (field) {
      $(FIELD_OF[field]).setAttribute('aria-invalid', 'true');
      $(FIELD_OF[field]).setAttribute('aria-describedby', 'flash');
      $(FIELD_OF[field]).focus();
    }
  }
}

async function main() {
  directory = (await api('/dev/directory')).tenants;
  $('tenant').replaceChildren(...options(directory));
  const [tid, uid, mode] = location.hash.slice(1).split('/');
  if (directory.some((t) => t.id === tid)) $('tenant').value = tid;
  fillUsers();
  if (tenant().users.some((u) => u.id === uid)) $('user').value = uid;
  fillMemberships();
  $('share').checked = mode !== 'own';
  $('text').placeholder = SAMPLES[0];
  $('tenant').onchange = fillUsers;
  $('user').onchange = fillMemberships;
  $('connect').onclick = start;
  $('disconnect').onclick = disconnect;
  $('clear').onclick = clearEvents;
  $('publish').onsubmit = publish;
  if (uid) start();
}

main().catch((error) => log('cannot load the demo: ' + error.message, true));
`;
