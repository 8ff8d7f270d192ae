import { DEMO_PAGE_SCRIPT } from './demo-page-script.js';

// The demo page served by `warren dev` at `/`. Plain HTML and CSS so it needs no build of its own; the only
// script is the module in demo-page-script.ts, which loads the real client bundle from /warren-client.js.

const STYLE = `
:root {
  --bg: #f4f5f7; --card: #fff; --line: #e3e6eb; --text: #1c2330; --muted: #677285;
  --accent: #4f46e5; --accent-dark: #4338ca; --ok: #16a34a; --warn: #d97706; --off: #9aa3b2;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
  color: var(--text); background: var(--bg);
}
* { box-sizing: border-box; }
body { margin: 0; }
header { background: var(--card); border-bottom: 1px solid var(--line); }
.bar { max-width: 1120px; margin: 0 auto; padding: 14px 24px; display: flex; align-items: center; gap: 12px; }
.logo { width: 30px; height: 30px; border-radius: 8px; background: var(--accent); color: #fff;
  display: grid; place-items: center; font-weight: 700; flex: none; }
.brand { font-weight: 650; font-size: 16px; }
.tag { font-size: 12px; color: var(--muted); border: 1px solid var(--line); border-radius: 999px; padding: 1px 8px;
  white-space: nowrap; }
.status { margin-left: auto; display: flex; align-items: center; gap: 8px; font-size: 13px; color: var(--muted); }
.dot { width: 9px; height: 9px; border-radius: 50%; background: var(--off); flex: none; }
.status[data-state="connected"] .dot { background: var(--ok); box-shadow: 0 0 0 4px #16a34a22; }
.status[data-state="connecting"] .dot, .status[data-state="reconnecting"] .dot { background: var(--warn); }
.status strong { color: var(--text); font-weight: 600; }
.node { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; color: var(--text); background: var(--bg);
  border: 1px solid var(--line); border-radius: 6px; padding: 1px 6px; }
main { max-width: 1120px; margin: 24px auto; padding: 0 24px; display: grid; gap: 20px;
  grid-template-columns: 340px minmax(0, 1fr); align-items: start; }
.side { display: grid; gap: 20px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 12px; padding: 18px;
  box-shadow: 0 1px 2px #1c23300a; }
h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .06em; color: var(--muted); margin: 0 0 14px;
  display: flex; align-items: center; gap: 8px; }
label { display: block; font-size: 13px; font-weight: 550; margin: 12px 0 5px; }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 10px; }
.pair label { margin-top: 0; }
select, input[type=text] { width: 100%; font: inherit; padding: 8px 10px; border: 1px solid var(--line);
  border-radius: 8px; background: #fff; color: inherit; }
select:focus, input:focus { outline: 2px solid #4f46e533; border-color: var(--accent); }
input[aria-invalid=true] { border-color: #dc2626; }
.check { display: flex; gap: 8px; align-items: flex-start; font-weight: 400; color: var(--muted); margin-top: 14px; }
.check input { margin-top: 3px; }
.row { display: flex; gap: 8px; margin-top: 16px; }
button { font: inherit; font-weight: 600; border-radius: 8px; padding: 8px 14px; cursor: pointer;
  border: 1px solid var(--accent); background: var(--accent); color: #fff; }
button:hover { background: var(--accent-dark); }
button.ghost { background: #fff; color: var(--text); border-color: var(--line); }
button.ghost:hover { background: var(--bg); }
button:disabled { opacity: .5; cursor: default; }
.chips { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 8px; font-size: 12px; color: var(--muted); }
.chip { border-radius: 999px; padding: 1px 9px; font-size: 12px; font-weight: 600;
  color: hsl(var(--hue) 55% 32%); background: hsl(var(--hue) 70% 94%); }
.chips .pending { font-style: italic; }
.sender { font-size: 13px; color: var(--muted); margin: -6px 0 12px; }
.hint { font-size: 12px; color: var(--muted); margin: 10px 0 0; }
/* Small text: darker than the --ok dot and the --off grey, to stay readable (4.5:1 on white). */
.flash { font-size: 12px; color: #15803d; min-height: 18px; margin: 8px 0 0; }
.flash.err { color: #dc2626; }
.count { background: var(--accent); color: #fff; border-radius: 999px; padding: 0 8px; font-size: 12px;
  letter-spacing: 0; }
.feed-head { display: flex; align-items: center; }
.feed-head h2 { margin: 0; }
.sub { font-size: 13px; color: var(--muted); margin: 6px 0 0; }
.feed-head button { margin-left: auto; padding: 4px 10px; font-size: 12px; }
#events { list-style: none; margin: 14px 0 0; padding: 0 2px 0 0; display: grid; gap: 10px;
  grid-template-columns: minmax(0, 1fr); max-height: 520px; overflow-y: auto; }
.event { border: 1px solid var(--line); border-left: 4px solid hsl(var(--hue) 60% 50%); border-radius: 10px;
  padding: 10px 14px; animation: arrive .8s ease-out; }
@keyframes arrive { from { background: #eef2ff; transform: translateY(-4px); } to { background: #fff; } }
.event-head { display: flex; flex-wrap: wrap; align-items: center; gap: 4px 8px; font-size: 12px; color: var(--muted); }
.type { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; color: var(--text); font-weight: 600; }
.event time { margin-left: auto; font-variant-numeric: tabular-nums; }
/* A word longer than the card (a URL, a pasted token) wraps instead of widening the whole page. */
.event p { margin: 6px 0 4px; font-size: 15px; overflow-wrap: anywhere; }
.event code { font-size: 11px; color: var(--muted); }
.empty { text-align: center; color: var(--muted); padding: 48px 12px; border: 1px dashed var(--line);
  border-radius: 10px; margin-top: 14px; }
.empty strong { display: block; color: var(--text); margin-bottom: 4px; }
#log { list-style: none; margin: 0; padding: 0; font-size: 12px; color: var(--muted); display: grid; gap: 4px; }
#log li { display: flex; gap: 8px; }
#log li > * { flex: none; }
#log li > span:first-of-type { flex: 1 1 auto; min-width: 0; overflow-wrap: anywhere; }
#log .times { color: var(--muted); }
#log time { font-variant-numeric: tabular-nums; color: var(--muted); }
#log .bad { color: #dc2626; }
@media (max-width: 820px) { main { grid-template-columns: minmax(0, 1fr); } }
/* A phone: the status goes under the brand, at full width, instead of squeezing the logo and the tag. */
@media (max-width: 560px) { .bar { flex-wrap: wrap; } .status { margin-left: 0; flex-basis: 100%; } }
`;

const BODY = `
<header><div class="bar">
  <div class="logo">W</div><div class="brand">Warren</div><span class="tag">dev demo</span>
  <div class="status" id="status" data-state="closed"><span class="dot"></span><span id="status-text">Not connected</span></div>
</div></header>
<main>
  <div class="side">
    <section class="card">
      <h2>Sign in as</h2>
      <div class="pair">
        <div><label for="tenant">Organisation</label><select id="tenant"></select></div>
        <div><label for="user">User</label><select id="user"></select></div>
      </div>
      <div class="chips" id="memberships"></div>
      <label class="check"><input type="checkbox" id="share" checked>
        <span>Share one connection across this user’s tabs; open a second tab to watch it follow</span></label>
      <div class="row"><button id="connect">Connect</button><button id="disconnect" class="ghost" disabled>Disconnect</button></div>
    </section>
    <section class="card">
      <h2>Publish to a team</h2>
      <p class="sender" id="sender"></p>
      <form id="publish">
        <div class="pair">
          <div><label for="team">Team</label><select id="team"></select></div>
          <div><label for="type">Event type</label><input type="text" id="type" value="message.created" placeholder="message.created" spellcheck="false"></div>
        </div>
        <label for="text">Message</label><input type="text" id="text" maxlength="500" autocomplete="off">
        <div class="row"><button type="submit">Publish</button></div>
        <p class="flash" id="flash" role="status"></p>
      </form>
      <p class="hint">Goes through the publisher SDK and the resolver: every online member of the team gets it, no one else.</p>
    </section>
  </div>
  <div class="side">
  <section class="card">
    <div class="feed-head"><h2>Live events <span class="count" id="count">0</span></h2>
      <button class="ghost" id="clear">Clear</button></div>
    <p class="sub" id="audience">Sign in to receive the events of your teams.</p>
    <div class="empty" id="empty"><strong>No events yet</strong>Publish one with the form, or from another tab signed in as a teammate.</div>
    <ul id="events"></ul>
  </section>
  <section class="card"><h2>Connection log</h2><ul id="log"></ul></section>
  </div>
</main>`;

// The logo as an inline icon: without one, every load asks for /favicon.ico and logs its 404 in the console.
const ICON =
  "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 32 32'%3E%3Crect width='32' height='32' rx='8' fill='%234f46e5'/%3E%3Ctext x='16' y='22' font-family='system-ui,sans-serif' font-size='18' font-weight='700' fill='%23fff' text-anchor='middle'%3EW%3C/text%3E%3C/svg%3E";

export const DEMO_PAGE = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Warren · dev demo</title><link rel="icon" href="${ICON}"><style>${STYLE}</style></head>
<body>${BODY}
<script type="module">${DEMO_PAGE_SCRIPT}</script>
</body></html>`;
