// Snapshots and backups of the dashboard's desktops, through the JSON API (docs/backups.md).
// Lists refresh when the desktop's state is pushed, and every 2 s while work is under way.

function csrfToken() {
  const match = document.cookie.match(/(?:^|; )csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

async function call(method, url, body) {
  const response = await fetch(url, {
    method,
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken(), Accept: "application/json" },
    body: body ? JSON.stringify(body) : undefined,
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(data.detail || `The request failed (${response.status}).`);
  return data;
}

const size = (bytes) => (bytes >= 1 << 30 ? `${(bytes / (1 << 30)).toFixed(1)} GiB`
  : `${Math.max(bytes / (1 << 20), 0).toFixed(1)} MiB`);
const when = (iso) => new Date(iso).toLocaleString([], { dateStyle: "short", timeStyle: "short" });
const PENDING_SNAPSHOT = new Set(["creating", "reverting", "deleting"]);
const PENDING_BACKUP = new Set(["queued", "running", "cancelling"]);
const PENDING_RESTORE = PENDING_BACKUP;
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

function snapshotRow(panel, snapshot) {
  const id = panel.dataset.disks;
  const base = `/api/desktops/${id}/snapshots/${snapshot.id}/`;
  const kind = snapshot.with_memory ? "with memory" : "disk";
  const text = `${snapshot.name} · ${when(snapshot.created_at)} · ${kind} · ${size(snapshot.size_bytes)}`;
  if (snapshot.status !== "ready") return item(`${text} · ${snapshot.status}${snapshot.last_error ? `: ${snapshot.last_error}` : ""}`);
  return item(text,
    button("Revert", () => window.confirm(`Revert ${panel.dataset.name} to "${snapshot.name}"? What changed since is lost.`)
      && act(panel, () => call("POST", `${base}revert/`, {}))),
    button("Delete", () => window.confirm(`Delete snapshot "${snapshot.name}"?`)
      && act(panel, () => call("DELETE", base)), { danger: true }));
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

function backupRow(panel, backup) {
  const kind = backup.incremental ? "incremental" : "full";
  if (PENDING_BACKUP.has(backup.status)) {
    return progressRow(`Backing up (${kind})`, backup.progress, "Backup progress",
      () => act(panel, () => call("POST", `/api/backups/${backup.id}/cancel/`)));
  }
  const restore = (target, question) => window.confirm(question)
    && act(panel, () => call("POST", `/api/backups/${backup.id}/restore/`, { target }));
  return item(`${when(backup.created_at)} · ${kind} · ${size(backup.bytes_written)} written`,
    button("Restore here", () => restore("in_place",
      `Restore ${panel.dataset.name} from this backup? Its disk and snapshots are replaced, and it is stopped.`), { danger: true }),
    button("Restore as new", () => restore("new", "Restore this backup as a new desktop?")));
}

// Restores into this desktop: the one under way (with its progress and Cancel), else how
// the newest one ended when it did not succeed.
function restoreRows(panel, restores) {
  const newest = restores[0];
  if (!newest || newest.status === "done") return [];
  const from = `the backup of ${when(newest.backup_created_at)}`;
  if (!PENDING_RESTORE.has(newest.status)) {
    return [item(`Restore from ${from} ${newest.status}${newest.last_error && newest.status === "failed" ? `: ${newest.last_error}` : ""}.`)];
  }
  const question = newest.target === "new"
    ? `Cancel the restore? ${panel.dataset.name} is deleted, as it was made only for it.`
    : `Cancel the restore? ${panel.dataset.name} keeps its disk.`;
  const text = newest.status === "cancelling" ? "Cancelling the restore" : `Restoring from ${from}`;
  return [progressRow(text, newest.progress, "Restore progress",
    () => window.confirm(question) && act(panel, () => call("POST", `/api/restores/${newest.id}/cancel/`)))];
}

function fill(list, rows, empty) {
  list.replaceChildren(...(rows.length ? rows : [item(empty)]));
}

export async function refresh(panel) {
  const id = panel.dataset.disks;
  clearTimeout(timers.get(id));
  try {
    const [snapshots, backups, restores] = await Promise.all([
      call("GET", `/api/desktops/${id}/snapshots/`), call("GET", `/api/desktops/${id}/backups/`),
      call("GET", `/api/desktops/${id}/restores/`)]);
    const restoring = panel.querySelector("[data-field=restores]");
    restoring.replaceChildren(...restoreRows(panel, restores));
    restoring.hidden = !restoring.children.length;
    fill(panel.querySelector("[data-field=snapshots]"), snapshots.map((s) => snapshotRow(panel, s)), "No snapshots.");
    fill(panel.querySelector("[data-field=backups]"), backups.map((b) => backupRow(panel, b)), "No backups yet.");
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
      act(panel, async () => { await call("POST", `/api/desktops/${panel.dataset.disks}/snapshots/`, { name }); form.reset(); });
    });
    panel.querySelector("[data-backup-now]").addEventListener("click",
      () => act(panel, () => call("POST", `/api/desktops/${panel.dataset.disks}/backups/`)));
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
