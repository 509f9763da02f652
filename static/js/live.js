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
  for (const form of row.querySelectorAll("form[data-action]")) {
    form.hidden = !desktop.actions.includes(form.dataset.action);
  }
  row.dataset.status = desktop.status;
}

// Who else has this desktop's console open: the owner's notice. An entry with `until`
// (a SPICE client file) is dropped when its password stops working.
export function renderWatchers(container, desktopName, watchers) {
  const now = Date.now();
  const current = watchers.filter((w) => !w.until || Date.parse(w.until) > now);
  container.replaceChildren();
  container.hidden = current.length === 0;
  for (const watcher of current) {
    const line = document.createElement("p");
    const how = watcher.mode === "view" ? "is viewing" : "has taken control of";
    const client = watcher.until ? " with a SPICE client" : "";
    line.textContent = `${watcher.user} (help desk) ${how} ${desktopName}${client}.`;
    container.append(line);
  }
  const next = Math.min(...current.filter((w) => w.until).map((w) => Date.parse(w.until)));
  clearTimeout(container.expiryTimer);
  if (Number.isFinite(next)) {
    container.expiryTimer = setTimeout(
      () => renderWatchers(container, desktopName, current),
      next - now + 100,
    );
  }
}

// Actions that destroy something ask first (their form carries data-confirm).
export function confirmBeforeSubmit() {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
}
