// The console page: asks the portal for a one-time ticket, opens the relay WebSocket on
// this page's own origin (works behind a TLS proxy: wss:// when the page is https://),
// and hands it to noVNC. The ticket travels as a WebSocket subprotocol, never in a URL.
import RFB from "../vendor/novnc/core/rfb.js";
import KeyTable from "../vendor/novnc/core/input/keysym.js";
import keysyms from "../vendor/novnc/core/input/keysymdef.js";
import { connectLive, renderWatchers } from "./live.js";

const root = document.getElementById("console");
const screen = document.getElementById("screen");
const statusLine = document.getElementById("console-status");
const isOwner = root.dataset.owner === "true";
let mode = root.dataset.mode;
let reason = "";
let rfb = null;

const CLOSE_MESSAGES = {
  4400: "The console connection sent something invalid and was closed.",
  1009: "The console sent a message that was too large and was closed. Press Reconnect.",
  4401: "The console ticket expired or was used, or your login ended. Press Reconnect (log in again if asked).",
  4403: "Access to this console was refused.",
  4409: "The desktop is not running. Start it, then press Reconnect.",
  4410: "The desktop stopped.",
  4429: "You have too many consoles open. Close one and press Reconnect.",
  4460: "The desktop's owner (or an admin) ended this console session.",
  4502: "The desktop's display did not answer. Try again in a moment.",
};

function setStatus(text, kind = "info") {
  statusLine.textContent = text;
  statusLine.dataset.kind = kind;
}

function csrfToken() {
  const match = document.cookie.match(/(?:^|; )csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

async function requestTicket() {
  const response = await fetch(root.dataset.ticketUrl, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
    body: JSON.stringify({ mode, reason }),
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new Error(body.detail || `The portal refused the console (HTTP ${response.status}).`);
  }
  return body;
}

function socketUrl(path) {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${window.location.host}${path}`;
}

function setControls() {
  const viewOnly = mode === "view";
  document.querySelectorAll("[data-needs-control]").forEach((el) => {
    el.toggleAttribute("disabled", viewOnly);
    el.classList.toggle("disabled", viewOnly);
  });
}

async function connect() {
  disconnect();
  setStatus("Connecting…");
  let ticket;
  try {
    ticket = await requestTicket();
  } catch (error) {
    setStatus(error.message, "error");
    return;
  }
  mode = ticket.mode;
  setControls();
  const socket = new WebSocket(socketUrl(ticket.url), ["binary", `ticket.${ticket.ticket}`]);
  socket.binaryType = "arraybuffer";
  socket.addEventListener("close", (event) => {
    const message = CLOSE_MESSAGES[event.code] || event.reason;
    if (message) setStatus(message, event.code === 1000 ? "info" : "error");
  });
  rfb = new RFB(screen, socket, { shared: true });
  window.portalConsole = rfb; // for people debugging from the browser's console
  rfb.viewOnly = mode === "view"; // a courtesy: the relay enforces view-only itself
  rfb.scaleViewport = document.getElementById("btn-scale").getAttribute("aria-pressed") === "true";
  rfb.addEventListener("connect", () => {
    const how = mode === "view" ? "view only" : "full control";
    setStatus(`Connected (${how}).`, "ok");
    document.body.dataset.console = "connected";
    rfb.focus();
  });
  rfb.addEventListener("disconnect", (event) => {
    document.body.dataset.console = "disconnected";
    if (statusLine.dataset.kind !== "error") {
      setStatus(event.detail.clean ? "Disconnected." : "The connection was lost. Press Reconnect.",
        event.detail.clean ? "info" : "error");
    }
  });
}

function disconnect() {
  if (rfb) {
    rfb.disconnect();
    rfb = null;
  }
}

const COMBOS = {
  esc: [[KeyTable.XK_Escape, "Escape"]],
  tab: [[KeyTable.XK_Tab, "Tab"]],
  "alt-tab": [[KeyTable.XK_Alt_L, "AltLeft"], [KeyTable.XK_Tab, "Tab"]],
  "ctrl-c": [[KeyTable.XK_Control_L, "ControlLeft"], [KeyTable.XK_c, "KeyC"]],
  "ctrl-d": [[KeyTable.XK_Control_L, "ControlLeft"], [KeyTable.XK_d, "KeyD"]],
  "ctrl-alt-f1": [[KeyTable.XK_Control_L, "ControlLeft"], [KeyTable.XK_Alt_L, "AltLeft"], [KeyTable.XK_F1, "F1"]],
  "ctrl-alt-f2": [[KeyTable.XK_Control_L, "ControlLeft"], [KeyTable.XK_Alt_L, "AltLeft"], [KeyTable.XK_F2, "F2"]],
  "ctrl-alt-f7": [[KeyTable.XK_Control_L, "ControlLeft"], [KeyTable.XK_Alt_L, "AltLeft"], [KeyTable.XK_F7, "F7"]],
  print: [[KeyTable.XK_Print, "PrintScreen"]],
};

function sendCombo(keys) {
  keys.forEach(([sym, code]) => rfb.sendKey(sym, code, true));
  [...keys].reverse().forEach(([sym, code]) => rfb.sendKey(sym, code, false));
}

function typeText(text) {
  for (const char of text) {
    const sym = char === "\n" ? KeyTable.XK_Return : keysyms.lookup(char.codePointAt(0));
    rfb.sendKey(sym, null);
  }
}

document.getElementById("btn-cad").addEventListener("click", () => rfb && rfb.sendCtrlAltDel());
document.getElementById("send-keys").addEventListener("change", (event) => {
  if (rfb && COMBOS[event.target.value]) sendCombo(COMBOS[event.target.value]);
  event.target.value = "";
  if (rfb) rfb.focus();
});
document.getElementById("btn-scale").addEventListener("click", (event) => {
  const scaled = event.currentTarget.getAttribute("aria-pressed") !== "true";
  event.currentTarget.setAttribute("aria-pressed", String(scaled));
  event.currentTarget.textContent = scaled ? "Scale to window" : "Actual size (1:1)";
  if (rfb) rfb.scaleViewport = scaled;
});
document.getElementById("btn-fullscreen").addEventListener("click", () => {
  if (document.fullscreenElement) document.exitFullscreen();
  else screen.requestFullscreen();
});
document.getElementById("btn-reconnect").addEventListener("click", connect);
document.getElementById("btn-paste").addEventListener("click", () => {
  if (rfb) typeText(document.getElementById("paste-text").value);
});
const takeControl = document.getElementById("take-control");
if (takeControl) {
  takeControl.addEventListener("submit", (event) => {
    event.preventDefault();
    reason = document.getElementById("control-reason").value.trim();
    if (!reason) return;
    mode = "full";
    connect();
  });
}

const spiceForm = document.getElementById("spice-form");
if (spiceForm) {
  // SPICE: the same ticket, traded for a one-minute virt-viewer file instead of a relay.
  mode = "full";
  spiceForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const ticket = await requestTicket();
      document.getElementById("spice-ticket").value = ticket.ticket;
      spiceForm.submit();
      setStatus("Connection file downloaded; open it with remote-viewer.", "ok");
    } catch (error) {
      setStatus(error.message, "error");
    }
  });
  setStatus("Ready.", "ok");
} else {
  setControls();
  connect();
}
const watchersBanner = document.getElementById("watchers");
connectLive({
  watch: [root.dataset.desktop],
  onWatchers: (desktopId, watchers) => {
    if (watchersBanner && desktopId === root.dataset.desktop) {
      renderWatchers(watchersBanner, watchersBanner.dataset.name, watchers);
    }
  },
  onDesktop: (desktop) => {
    if (desktop.id === root.dataset.desktop && desktop.status !== "running") {
      setStatus(`The desktop is ${desktop.status}.`, "error");
    }
  },
});
