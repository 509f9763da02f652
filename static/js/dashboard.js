// The dashboard: live status, launch progress, quota and console notices without reloading.
import { initDiskPanels, refreshDisks, showNotice } from "./disks.js";
import { request } from "./http.js";
import { confirmBeforeSubmit, connectLive, renderDesktopState, renderWatchers } from "./live.js";
import { STATES } from "./page.js";

const D = STATES.desktop;
// Every label a row shows (a launch step, "Rebooting…", "Stopping") stays at least this
// long, even when the server moves faster: people can read it, and nothing flickers.
const MIN_SHOWN_MS = 1000;

// A launch's step and its label come from the server (the payload's `launch`).
const labelOf = (desktop) => (desktop.launch && desktop.launch.label) || desktop.status_label || desktop.status;

// Per desktop: the updates not shown yet, and until when the current label must stay.
const queues = new Map();

function queueOf(id) {
  if (!queues.has(id)) queues.set(id, { pending: [], holdUntil: 0, timer: 0, shown: "" });
  return queues.get(id);
}

// Updates pushed live so far, per desktop: a snapshot fetched meanwhile is older than
// them and must not be shown after them (the row would step back).
const pushed = new Map();

function onPushed(desktop) {
  pushed.set(desktop.id, (pushed.get(desktop.id) || 0) + 1);
  onDesktop(desktop);
}

function onDesktop(desktop) {
  const queue = queueOf(desktop.id);
  queue.pending.push(desktop);
  if (!queue.timer) showNext(queue);
}

function showNext(queue) {
  queue.timer = 0;
  if (!queue.pending.length) return;
  const wait = queue.holdUntil - Date.now();
  if (wait > 0) {
    queue.timer = setTimeout(() => showNext(queue), wait);
    return;
  }
  // Updates that would show the same label are one step: show the newest of them.
  let desktop = queue.pending.shift();
  while (queue.pending.length && labelOf(queue.pending[0]) === labelOf(desktop)) {
    desktop = queue.pending.shift();
  }
  const before = queue.shown;
  applyUpdate(desktop);
  queue.shown = labelOf(desktop);
  if (queue.shown !== before) queue.holdUntil = Date.now() + MIN_SHOWN_MS;
  if (queue.pending.length) queue.timer = setTimeout(() => showNext(queue), 0);
}

// Set once this page is being left (a form was sent): a reload now would race the
// navigation and could swallow the messages of the page that comes next.
let leaving = false;
window.addEventListener("beforeunload", () => { leaving = true; });

function applyUpdate(desktop) {
  renderLaunchMessage(desktop);
  const row = document.querySelector(`tr[data-desktop="${desktop.id}"]`);
  if (!row) {
    // A desktop made elsewhere (another tab, a script): the page shows it after a reload.
    if (desktop.status !== D.DELETED && !leaving) window.location.reload();
    return;
  }
  if (desktop.status === D.DELETED) {
    row.remove();
    refreshStateSoon();
    return;
  }
  const held = `${row.dataset.status}|${row.dataset.size}`;
  renderDesktopState(row, desktop);
  // A console only answers while the desktop runs.
  row.querySelector("[data-console]").hidden = desktop.status !== D.RUNNING;
  renderName(row, desktop.name);
  renderProgress(row, desktop);
  row.dataset.progress = desktop.progress;
  if (desktop.size) row.dataset.size = desktop.size.join(",");
  if (`${row.dataset.status}|${row.dataset.size}` !== held) refreshStateSoon();
}

function renderName(row, name) {
  const label = row.querySelector("[data-field=name]");
  if (label.textContent === name) return;
  label.textContent = name;
  label.title = name;
  const input = row.querySelector(".rename input[name=name]");
  if (input && document.activeElement !== input) input.value = name;
}

function renderProgress(row, desktop) {
  const bar = row.querySelector("progress");
  const { launch } = desktop;
  bar.hidden = !launch;
  if (launch) bar.max = launch.steps;
  bar.value = launch ? launch.step : bar.max;
  bar.textContent = launch ? launch.label : "";
  bar.setAttribute("aria-valuetext", (launch && launch.label) || desktop.status);
  row.querySelector("[data-field=progress]").textContent = launch ? launch.label : "";
}

// "<name> is being prepared" (the launch's message) follows its desktop: "… is running"
// once it runs, the error if it failed, and it goes when the desktop goes or stops.
function renderLaunchMessage(desktop) {
  const message = document.querySelector(`[data-launched="${desktop.id}"]`);
  if (!message) return;
  if (desktop.status === D.RUNNING) {
    message.textContent = `${desktop.name} is running.`;
    message.dataset.ran = "yes";
  } else if (desktop.status === D.ERROR) {
    message.textContent = `${desktop.name} could not be prepared. ${desktop.last_error}`.trim();
    message.className = "message error";
  } else if (message.dataset.ran || desktop.status === D.DELETING || desktop.status === D.DELETED) {
    message.remove();
  }
}

// The quota meters and Launch buttons, and every row, from the server's current state.
const stateUrl = document.getElementById("quota").dataset.stateUrl;
let stateTimer = 0;

function refreshStateSoon() {
  clearTimeout(stateTimer);
  stateTimer = setTimeout(refreshState, 150);
}

async function refreshState() {
  const pushedBefore = new Map(pushed);
  const { ok, data: state } = await request("GET", stateUrl);
  if (!ok) return;
  renderMeters(state.meters);
  renderLaunchButtons(state.refusals);
  const stale = (id) => (pushed.get(id) || 0) !== (pushedBefore.get(id) || 0);
  const present = new Set(state.desktops.map((desktop) => desktop.id));
  for (const row of document.querySelectorAll("tr[data-desktop]")) {
    const id = row.dataset.desktop;
    if (!present.has(id) && !stale(id)) onDesktop({ id, status: D.DELETED });
  }
  for (const desktop of state.desktops) {
    const row = document.querySelector(`tr[data-desktop="${desktop.id}"]`);
    // Only what changed: a repeat of the shown state would hold the queue for nothing.
    const changed = !row || row.dataset.status !== desktop.status
      || row.dataset.progress !== desktop.progress;
    if (changed && !stale(desktop.id)) onDesktop(desktop);
  }
}

function renderMeters(meters) {
  for (const { key, used, limit, unit } of meters) {
    const box = document.querySelector(`[data-meter="${key}"]`);
    if (!box) continue;
    const meter = box.querySelector("meter");
    meter.max = limit;
    meter.value = used;
    box.querySelector("[data-field=figures]").textContent = `${used} / ${limit}${unit ? ` ${unit}` : ""}`;
  }
}

function renderLaunchButtons(refusals) {
  for (const form of document.querySelectorAll("form.launch")) {
    const refusal = refusals[form.dataset.template];
    if (refusal === undefined) continue; // no longer assigned: a reload will tell
    form.querySelector("button[type=submit]").disabled = refusal !== "";
    const note = form.querySelector("[data-field=refusal]");
    note.textContent = refusal;
    note.hidden = refusal === "";
  }
}

// The page as rendered (its launch progress drawn by the server), and launch messages of
// desktops already running.
for (const row of document.querySelectorAll("tr[data-desktop]")) {
  const bar = row.querySelector("progress");
  const desktop = { id: row.dataset.desktop, status: row.dataset.status, progress: row.dataset.progress,
                   status_label: row.querySelector("[data-field=status]").textContent,
                   launch: bar.hidden ? null : { label: bar.textContent, step: bar.value, steps: bar.max } };
  // What the page shows from the start is a label like any other: it stays its second.
  Object.assign(queueOf(desktop.id), { shown: labelOf(desktop), holdUntil: Date.now() + MIN_SHOWN_MS });
  const message = document.querySelector(`[data-launched="${desktop.id}"]`);
  if (message && desktop.status === D.RUNNING) {
    renderLaunchMessage({ ...desktop, name: row.querySelector("[data-field=name]").textContent });
  }
}

// Events sent while the feed was down (before it first opened, or between reconnects)
// never arrive: catch up from the server each time it (re)connects.
new MutationObserver(() => {
  if (document.body.dataset.live === "connected") refreshState();
}).observe(document.body, { attributes: true, attributeFilter: ["data-live"] });

connectLive({
  onDesktop: (desktop) => { onPushed(desktop); refreshDisks(desktop.id); },
  onNotice: (_desktopId, text) => showNotice(text),
  onWatchers: (desktopId, watchers) => {
    const banner = document.querySelector(`[data-watchers="${desktopId}"]`);
    if (banner) renderWatchers(banner, banner.dataset.name, watchers);
  },
});

confirmBeforeSubmit();
initDiskPanels();
