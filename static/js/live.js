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

// Who else has this desktop's console open: the owner's notice.
export function renderWatchers(container, desktopName, watchers) {
  container.replaceChildren();
  container.hidden = watchers.length === 0;
  for (const watcher of watchers) {
    const line = document.createElement("p");
    const how = watcher.mode === "view" ? "is viewing" : "has taken control of";
    line.textContent = `${watcher.user} (help desk) ${how} ${desktopName}.`;
    container.append(line);
  }
}
