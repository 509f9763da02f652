// Snapshots and backups of the dashboard's desktops, through the JSON API (docs/backups.md).
// Lists refresh when the desktop's state is pushed, and every 2 s while work is under way.
// The URLs, the states' names and which of them mean "under way" come from the page.
import { apiUrl, callJson as call } from "./http.js";
import { STATES, UNDER_WAY } from "./page.js";

const SNAPSHOT = STATES.snapshot;
const RESTORE = STATES.restore;
const TARGET = STATES.restore_target;

const size = (bytes) => (bytes >= 1 << 30 ? `${(bytes / (1 << 30)).toFixed(1)} GiB`
  : `${Math.max(bytes / (1 << 20), 0).toFixed(1)} MiB`);
const when = (iso) => new Date(iso).toLocaleString([], { dateStyle: "short", timeStyle: "short" });
const PENDING_SNAPSHOT = UNDER_WAY.snapshot;
const PENDING_BACKUP = UNDER_WAY.backup;
const PENDING_RESTORE = UNDER_WAY.restore;
const timers = new Map();

function button(label, onClick, { danger = false } = {}) {
  const element = document.createElement("button");
  element.type = "button";
  element.className = danger ? "small danger" : "small";
  element.textContent = label;
  element.addEventListener("click", onClick);
  return element;
}

function item(text, ...controls) {
  const li = document.createElement("li");
  li.className = "disk-row";
  const span = document.createElement("span");
  span.textContent = text;
  li.append(span, ...controls);
  return li;
}

function showError(panel, error) {
  const note = panel.querySelector("[data-field=disk-error]");
  note.textContent = error ? error.message : "";
  note.hidden = !error;
}

async function act(panel, run) {
  try {
    showError(panel, null);
    await run();
  } catch (error) {
    showError(panel, error);
  }
  refresh(panel);
}

// While a restore into this desktop runs, nothing else may touch it (the server answers
// 409): the panel offers no snapshot, backup or restore controls, only the restore's Cancel.
function snapshotRow(panel, snapshot, locked) {
  const ids = { desktop_id: panel.dataset.disks, snapshot_id: snapshot.id };
  const kind = snapshot.with_memory ? "with memory" : "disk";
  const text = `${snapshot.name} · ${when(snapshot.created_at)} · ${kind} · ${size(snapshot.size_bytes)}`;
  if (locked) return item(text);
  if (snapshot.status !== SNAPSHOT.READY) return item(`${text} · ${snapshot.status}${snapshot.last_error ? `: ${snapshot.last_error}` : ""}`);
  return item(text,
    button("Revert", () => window.confirm(`Revert ${panel.dataset.name} to "${snapshot.name}"? What changed since is lost.`)
      && act(panel, () => call("POST", apiUrl("snapshot_revert", ids), {}))),
    button("Delete", () => window.confirm(`Delete snapshot "${snapshot.name}"?`)
      && act(panel, () => call("DELETE", apiUrl("snapshot", ids))), { danger: true }));
}

function progressRow(text, percent, label, onCancel) {
  const li = item(`${text}… ${percent}%`);
  const bar = document.createElement("progress");
  bar.max = 100;
  bar.value = percent;
  bar.setAttribute("aria-label", label);
  li.append(bar, button("Cancel", onCancel));
  return li;
}

function backupRow(panel, backup, locked) {
  const kind = backup.incremental ? "incremental" : "full";
  if (PENDING_BACKUP.has(backup.status)) {
    return progressRow(`Backing up (${kind})`, backup.progress, "Backup progress",
      () => act(panel, () => call("POST", apiUrl("backup_cancel", { backup_id: backup.id }))));
  }
  const text = `${when(backup.created_at)} · ${kind} · ${size(backup.bytes_written)} written`;
  if (locked) return item(text);
  const restore = (target, question) => window.confirm(question)
    && act(panel, () => call("POST", apiUrl("backup_restore", { backup_id: backup.id }), { target }));
  return item(text,
    button("Restore here", () => restore(TARGET.IN_PLACE,
      `Restore ${panel.dataset.name} from this backup? Its disk and snapshots are replaced, and it is stopped.`), { danger: true }),
    button("Restore as new", () => restore(TARGET.NEW, "Restore this backup as a new desktop?")));
}

// Restores into this desktop: the one under way (with its progress and Cancel), else how
// the newest one ended when it did not succeed.
function restoreRows(panel, restores) {
  const newest = restores[0];
  if (!newest || newest.status === RESTORE.DONE) return [];
  const from = `the backup of ${when(newest.backup_created_at)}`;
  if (!PENDING_RESTORE.has(newest.status)) {
    return [item(`Restore from ${from} ${newest.status}${newest.last_error && newest.status === RESTORE.FAILED ? `: ${newest.last_error}` : ""}.`)];
  }
  const question = newest.target === TARGET.NEW
    ? `Cancel the restore? ${panel.dataset.name} is deleted, as it was made only for it.`
    : `Cancel the restore? ${panel.dataset.name} keeps its disk.`;
  const text = newest.status === RESTORE.CANCELLING ? "Cancelling the restore" : `Restoring from ${from}`;
  return [progressRow(text, newest.progress, "Restore progress",
    () => window.confirm(question) && act(panel, () => call("POST", apiUrl("restore_cancel", { restore_id: newest.id }))))];
}

function lock(panel, locked) {
  panel.classList.toggle("restoring", locked);
  for (const control of panel.querySelectorAll("[data-take-snapshot] input, [data-take-snapshot] button, [data-backup-now]")) {
    control.disabled = locked;
    control.title = locked ? "Not while a restore of this desktop is under way" : "";
  }
}

function fill(list, rows, empty) {
  list.replaceChildren(...(rows.length ? rows : [item(empty)]));
}

export async function refresh(panel) {
  const id = panel.dataset.disks;
  clearTimeout(timers.get(id));
  try {
    const [snapshots, backups, restores] = await Promise.all(
      ["snapshots", "backups", "restores"].map((list) => call("GET", apiUrl(list, { desktop_id: id }))));
    const restoring = panel.querySelector("[data-field=restores]");
    restoring.replaceChildren(...restoreRows(panel, restores));
    restoring.hidden = !restoring.children.length;
    const locked = restores.some((r) => PENDING_RESTORE.has(r.status) && r.target === TARGET.IN_PLACE);
    lock(panel, locked);
    fill(panel.querySelector("[data-field=snapshots]"), snapshots.map((s) => snapshotRow(panel, s, locked)), "No snapshots.");
    fill(panel.querySelector("[data-field=backups]"), backups.map((b) => backupRow(panel, b, locked)), "No backups yet.");
    const busy = snapshots.some((s) => PENDING_SNAPSHOT.has(s.status)) || backups.some((b) => PENDING_BACKUP.has(b.status))
      || restores.some((r) => PENDING_RESTORE.has(r.status));
    if (busy) timers.set(id, setTimeout(() => refresh(panel), 2000));
  } catch (error) {
    showError(panel, error);
  }
}

export function refreshDisks(desktopId) {
  const panel = document.querySelector(`[data-disks="${desktopId}"]`);
  if (panel && panel.open) refresh(panel);
}

export function initDiskPanels() {
  for (const panel of document.querySelectorAll("[data-disks]")) {
    panel.addEventListener("toggle", () => panel.open && refresh(panel));
    const form = panel.querySelector("[data-take-snapshot]");
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const name = form.elements.name.value;
      act(panel, async () => { await call("POST", apiUrl("snapshots", { desktop_id: panel.dataset.disks }), { name }); form.reset(); });
    });
    panel.querySelector("[data-backup-now]").addEventListener("click",
      () => act(panel, () => call("POST", apiUrl("backups", { desktop_id: panel.dataset.disks }))));
    if (panel.open) refresh(panel);
  }
}

// A notice for the owner (a help-desk revert or restore of their desktop, with its reason).
export function showNotice(text) {
  let list = document.querySelector("ul.messages");
  if (!list) {
    list = document.createElement("ul");
    list.className = "messages";
    list.setAttribute("role", "status");
    document.querySelector("main h1").after(list);
  }
  const li = document.createElement("li");
  li.className = "message warning";
  li.dataset.notice = "";
  li.textContent = text;
  list.append(li);
}
