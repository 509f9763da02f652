// Live updates over /ws/desktops/ (same origin, wss:// behind TLS). Reconnects with backoff.
export function connectLive({ onDesktop = () => {}, onWatchers = () => {}, watch = [] } = {}) {
  let delay = 1000;
  function open() {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${window.location.host}/ws/desktops/`);
    socket.addEventListener("open", () => {
      delay = 1000;
      document.body.dataset.live = "connected";
      if (watch.length) socket.send(JSON.stringify({ watch }));
    });
    socket.addEventListener("message", (event) => {
      const message = JSON.parse(event.data);
      if (message.kind === "desktop") onDesktop(message.desktop);
      if (message.kind === "watchers") onWatchers(message.desktop_id, message.watchers);
      // Monitoring values (kinds "metrics", "host_metrics") go to the charts (metrics.js).
      if (message.kind.endsWith("metrics")) {
        for (const metrics of [].concat(message.metrics)) {
          document.dispatchEvent(new CustomEvent(`live:${message.kind}`, { detail: metrics }));
        }
      }
    });
    socket.addEventListener("close", () => {
      document.body.dataset.live = "disconnected";
      setTimeout(open, delay);
      delay = Math.min(delay * 2, 30000);
    });
  }
  open();
}

// Redraw what every page shows of a desktop in its row: the status (its label comes from
// the server) and the action buttons the new state allows.
export function renderDesktopState(row, desktop) {
  const status = row.querySelector("[data-field=status]");
  status.textContent = desktop.status_label;
  status.className = `status status-${desktop.status}`;
  row.querySelector("[data-field=last_error]").textContent = desktop.last_error;
  const addresses = row.querySelector("[data-field=addresses]");
  if (addresses && desktop.addresses !== undefined) addresses.textContent = desktop.addresses;
  for (const form of row.querySelectorAll("form[data-action]")) {
    form.hidden = !desktop.actions.includes(form.dataset.action);
  }
  row.dataset.status = desktop.status;
}

// Who else has this desktop's console open: the owner's notice (the markup of
// templates/vms/_watchers.html): who, viewing or in control (with the reason given), since
// when in local time, and an End button per session. An entry with `spice_client` is a
// SPICE file (remote-viewer through the portal's SPICE proxy); one that also has `until`
// was not used yet and is dropped when its password stops working.
export function renderWatchers(container, desktopName, watchers) {
  const now = Date.now();
  const current = watchers.filter((w) => !w.until || Date.parse(w.until) > now);
  container.replaceChildren(...current.map((w) => watcherEntry(container, desktopName, w)));
  container.hidden = current.length === 0;
  const next = Math.min(...current.filter((w) => w.until).map((w) => Date.parse(w.until)));
  clearTimeout(container.expiryTimer);
  if (Number.isFinite(next)) {
    container.expiryTimer = setTimeout(
      () => renderWatchers(container, desktopName, current),
      next - now + 100,
    );
  }
}

function watcherEntry(container, desktopName, watcher) {
  const entry = document.createElement("div");
  entry.className = "watcher";
  entry.dataset.session = watcher.session;
  const line = document.createElement("p");
  const who = document.createElement("strong");
  who.textContent = watcher.user;
  const how = watcher.mode === "view" ? "is viewing" : "is in control of";
  const client = watcher.spice_client ? " with a SPICE client" : "";
  line.append(who, ` (help desk) ${how} ${desktopName}${client} `);
  const since = document.createElement("span");
  since.className = "watcher-since";
  const time = document.createElement("time");
  time.dateTime = watcher.since;
  time.textContent = new Date(watcher.since).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  since.append("\u00b7 since ", time);
  line.append(since);
  if (watcher.mode !== "view" && watcher.reason) {
    const reason = document.createElement("span");
    reason.className = "watcher-reason";
    reason.textContent = `\u00b7 Reason: “${watcher.reason}”`;
    line.append(" ", reason);
  }
  entry.append(line);
  entry.append(watcherEndForm(container, watcher));
  return entry;
}

// The same form the page renders; static/js/watchers.js sends it without leaving the page.
function watcherEndForm(container, watcher) {
  const form = document.createElement("form");
  form.method = "post";
  form.action = container.dataset.endUrl;
  form.className = "watcher-end";
  const fields = { csrfmiddlewaretoken: container.dataset.csrf, session: watcher.session,
                   next: container.dataset.next };
  for (const [name, value] of Object.entries(fields)) {
    const input = document.createElement("input");
    input.type = "hidden";
    input.name = name;
    input.value = value;
    form.append(input);
  }
  const button = document.createElement("button");
  button.type = "submit";
  button.className = "small danger";
  button.textContent = "End";
  button.setAttribute("aria-label", `End ${watcher.user}'s session`);
  form.append(button);
  return form;
}

// Actions that destroy something ask first (their form carries data-confirm).
export function confirmBeforeSubmit() {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
}
