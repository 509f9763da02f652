// The console page: asks the portal for a one-time ticket, opens the relay WebSocket on
// this page's own origin (works behind a TLS proxy: wss:// when the page is https://),
// and hands it to noVNC (VNC desktops) or spice-html5 (SPICE desktops, through
// spice-session.js, which has RFB's face). The ticket travels as a WebSocket subprotocol,
// never in a URL.
import RFB from "../vendor/novnc/core/rfb.js";
import { SpiceSession } from "./spice-session.js";
import KeyTable from "../vendor/novnc/core/input/keysym.js";
import { callJson, request } from "./http.js";
import { connectLive, renderWatchers } from "./live.js";
import { STATES } from "./page.js";
import { describeChar, keystrokesFor, pressKey } from "./keystrokes.js";

const root = document.getElementById("console");
const screen = document.getElementById("screen");
const statusLine = document.getElementById("console-status");
const isOwner = root.dataset.owner === "true";
const isSpice = root.dataset.consoleType === "spice";
let mode = root.dataset.mode;
let reason = "";
let rfb = null;
let connected = false;
let desktop = JSON.parse(document.getElementById("desktop-state-initial").textContent);
const D = STATES.desktop;

// QEMU's VNC server spaces key events 10 ms apart (its key-delay-ms); typing no faster
// keeps its input queue short, so nothing is dropped however long the text.
const KEY_EVENT_MS = 10;
// After the desktop comes back to "running", connect by itself: once after a short
// delay, and once more if that fails. Never more, until the next start.
const AUTO_CONNECT_DELAYS_MS = [1000, 4000];
let autoConnectLeft = [];
let autoConnectTimer = null;

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

function requestTicket(wantedMode, wantedReason) {
  return callJson("POST", root.dataset.ticketUrl, { mode: wantedMode, reason: wantedReason },
    (status) => `The portal refused the console (HTTP ${status}).`);
}

function socketUrl(path) {
  const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${window.location.host}${path}`;
}

// --- what the page offers, from the mode and the desktop's state ---------------------

// Keys go nowhere while view-only or not connected: their controls say so (disabled,
// with a note in the paste panel) instead of doing nothing when used.
function setControls() {
  const viewOnly = mode === "view";
  const canType = !viewOnly && connected;
  document.querySelectorAll("[data-needs-control]").forEach((el) => {
    el.toggleAttribute("disabled", !canType);
    el.classList.toggle("disabled", !canType);
  });
  const note = document.getElementById("paste-note");
  note.hidden = canType;
  note.textContent = viewOnly ? "View only: take control to type." : "Not connected: nothing can be typed now.";
  const takeControl = document.getElementById("take-control");
  if (takeControl) {
    const inControl = mode === "full" && connected;
    takeControl.hidden = mode === "full";
    document.getElementById("control-held").hidden = !inControl;
    document.getElementById("control-reason-shown").textContent = inControl ? `Reason: ${reason}` : "";
  }
}

// What the page says about a desktop that is not running (status_label is the server's).
function offlineText(state) {
  const label = state.status_label.toLowerCase();
  if (state.status === D.ERROR) {
    return `This desktop is in ${label}${state.last_error ? `: ${state.last_error}` : "."}`;
  }
  if (state.launch) {
    return `This desktop is ${label}… The console connects when it is running.`;
  }
  if (state.status === D.STOPPING || state.status === D.DELETING) return `This desktop is ${label}…`;
  if (state.status === D.MIGRATING) {
    return "This desktop is moving to another host… The console reconnects when it is there.";
  }
  return `This desktop is ${label}.`;
}

// Show or hide the "not running" panel and the action buttons its state allows.
function renderOffline(state) {
  const panel = document.getElementById("desktop-offline");
  if (!panel) return;
  panel.hidden = state.status === D.RUNNING;
  document.getElementById("desktop-offline-text").textContent = offlineText(state);
  for (const form of panel.querySelectorAll("form[data-action]")) {
    form.hidden = !state.actions.includes(form.dataset.action);
  }
}

// When the desktop last moved between hosts: a connection lost around then is the old
// host's, and the page reconnects to the new one by itself.
let movedAt = 0;
const MOVE_RECONNECT_WINDOW_MS = 20000;

function onDesktopState(state) {
  const wasRunning = desktop.status === D.RUNNING;
  if (state.status === D.MIGRATING || desktop.status === D.MIGRATING) movedAt = Date.now();
  desktop = state;
  renderOffline(state);
  if (state.status !== D.RUNNING) {
    autoConnectLeft = [];
    clearTimeout(autoConnectTimer);
    setStatus(offlineText(state), state.status === D.ERROR ? "error" : "info");
    return;
  }
  if (!wasRunning && !connected) {
    autoConnectLeft = [...AUTO_CONNECT_DELAYS_MS];
    autoConnectNext();
  }
}

function autoConnectNext() {
  const delay = autoConnectLeft.shift();
  if (delay === undefined) return;
  const moved = Date.now() - movedAt < MOVE_RECONNECT_WINDOW_MS;
  setStatus(moved ? "The desktop moved to another host; reconnecting…"
    : "The desktop is running again; connecting…");
  clearTimeout(autoConnectTimer);
  autoConnectTimer = setTimeout(() => connect(), delay);
}

// Help-desk staff who lose the connection come back view-only: control is taken again on
// purpose, with a reason, never by a reconnect.
function dropControl() {
  if (!isOwner) {
    mode = "view";
    reason = "";
  }
}

// --- the connection ---------------------------------------------------------------------

// Ask for a ticket first: if the portal refuses (say, taking control without a reason), the
// connection the page has stays as it is.
async function connect({ wantedMode = mode, wantedReason = reason } = {}) {
  clearTimeout(autoConnectTimer);
  setStatus("Connecting…");
  let ticket;
  try {
    ticket = await requestTicket(wantedMode, wantedReason);
  } catch (error) {
    const still = connected ? ` The console stays connected (${howConnected()}).` : "";
    setStatus(error.message + still, "error");
    if (!connected) autoConnectNext();
    return;
  }
  disconnect();
  mode = ticket.mode;
  reason = mode === "full" ? wantedReason : "";
  setControls();
  openConsole(ticket);
}

// The display's client: noVNC on one socket, or spice-html5 on one socket per channel.
function openSession(ticket) {
  if (isSpice) {
    const session = new SpiceSession(screen, socketUrl(ticket.url), ticket.ticket);
    return { session, socket: session.socket };
  }
  const socket = new WebSocket(socketUrl(ticket.url), ["binary", `ticket.${ticket.ticket}`]);
  socket.binaryType = "arraybuffer";
  return { session: new RFB(screen, socket, { shared: true }), socket };
}

function openConsole(ticket) {
  const { session, socket } = openSession(ticket);
  rfb = session;
  window.portalConsole = session; // for people debugging from the browser's console
  socket.addEventListener("close", (event) => {
    if (session !== rfb) return;
    const message = CLOSE_MESSAGES[event.code] || event.reason;
    if (message) setStatus(message, event.code === 1000 ? "info" : "error");
  });
  session.viewOnly = mode === "view"; // a courtesy: the relay enforces view-only itself
  session.scaleViewport = document.getElementById("btn-scale").getAttribute("aria-pressed") === "true";
  followScreenShape(session);
  session.addEventListener("connect", () => {
    if (session !== rfb) return;
    connected = true;
    autoConnectLeft = [];
    setStatus(`Connected (${howConnected()}).`, "ok");
    document.body.dataset.console = "connected";
    setControls();
    session.focus();
  });
  session.addEventListener("disconnect", (event) => onDisconnect(session, event.detail.clean));
}

function howConnected() {
  return mode === "view" ? "view only" : "full control";
}

function onDisconnect(session, clean) {
  if (session !== rfb) return; // an older connection, replaced on purpose
  const wasConnected = connected;
  connected = false;
  document.body.dataset.console = "disconnected";
  dropControl();
  setControls();
  if (desktop.status !== D.RUNNING) {
    setStatus(offlineText(desktop), "info");
  } else if (!wasConnected && autoConnectLeft.length) {
    autoConnectNext();
  } else if (wasConnected && Date.now() - movedAt < MOVE_RECONNECT_WINDOW_MS) {
    autoConnectLeft = [...AUTO_CONNECT_DELAYS_MS];
    autoConnectNext();
  } else if (statusLine.dataset.kind !== "error") {
    setStatus(clean ? "Disconnected." : "The connection was lost. Press Reconnect.",
      clean ? "info" : "error");
  }
}

function disconnect() {
  if (rfb) {
    const old = rfb;
    rfb = null;
    connected = false;
    old.disconnect();
    setControls();
  }
}

// Give the screen area the shape of the guest's screen, so the scaled picture fills the
// width (on a phone too) instead of floating in a tall black box.
function followScreenShape(session) {
  const canvas = screen.querySelector("canvas");
  if (!canvas || isSpice) return; // a SPICE session follows its own canvas
  const apply = () => {
    if (session === rfb && canvas.width > 0 && canvas.height > 0) {
      screen.style.setProperty("--guest-aspect", `${canvas.width} / ${canvas.height}`);
      screen.style.setProperty("--guest-height", `${canvas.height}px`);
    }
  };
  new MutationObserver(apply).observe(canvas, { attributes: true, attributeFilter: ["width", "height"] });
  apply();
}

// --- typing -----------------------------------------------------------------------------

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });
let typingQueue = Promise.resolve();

// Press keys one after another, whoever asks (paste, the on-screen keyboard): one queue,
// so what is typed arrives in order. Resolves to how many were pressed.
function pressKeys(keys) {
  const job = typingQueue.then(async () => {
    let pressed = 0;
    for (const key of keys) {
      if (!rfb || !connected || mode === "view") break;
      await sleep(pressKey(rfb, key) * KEY_EVENT_MS);
      pressed += 1;
    }
    return pressed;
  });
  typingQueue = job.catch(() => 0);
  return job;
}

function skippedNote(skipped) {
  if (!skipped.length) return "";
  const shown = skipped.slice(0, 10).map(describeChar).join(", ");
  const more = skipped.length > 10 ? ` and ${skipped.length - 10} more` : "";
  return ` Skipped what a US keyboard cannot type: ${shown}${more}.`;
}

async function typeText(text) {
  const { strokes, skipped } = keystrokesFor(text);
  const typed = await pressKeys(strokes);
  return { typed, total: strokes.length, skipped };
}

async function pasteAsKeystrokes() {
  if (!connected || mode === "view") {
    setStatus("Not connected with control: nothing was typed.", "error");
    return;
  }
  const button = document.getElementById("btn-paste");
  button.disabled = true;
  setStatus("Typing…");
  const { typed, total, skipped } = await typeText(document.getElementById("paste-text").value);
  setControls();
  const plural = (n) => `${n} character${n === 1 ? "" : "s"}`;
  const what = typed === total ? `Typed ${plural(typed)}.` : `Typed ${typed} of ${plural(total)}; the connection ended.`;
  setStatus(what + skippedNote(skipped), typed === total && !skipped.length ? "ok" : "error");
}

// --- the on-screen keyboard (phones and tablets) ---------------------------------------

const osk = document.getElementById("osk-input");
const OSK_SPECIAL_KEYS = {
  Backspace: { keysym: KeyTable.XK_BackSpace, code: "Backspace" },
  Escape: { keysym: KeyTable.XK_Escape, code: "Escape" },
  ArrowUp: { keysym: KeyTable.XK_Up, code: "ArrowUp" },
  ArrowDown: { keysym: KeyTable.XK_Down, code: "ArrowDown" },
  ArrowLeft: { keysym: KeyTable.XK_Left, code: "ArrowLeft" },
  ArrowRight: { keysym: KeyTable.XK_Right, code: "ArrowRight" },
};
// A character stays in the field, so that the keyboard's Backspace has something to
// delete (and says so with an input event) even when the field looks empty.
const OSK_FILLER = "_";

function oskReset() {
  osk.value = OSK_FILLER;
  osk.setSelectionRange(OSK_FILLER.length, OSK_FILLER.length);
}

async function oskType(text) {
  const { skipped } = await typeText(text);
  if (skipped.length) setStatus(skippedNote(skipped).trim(), "error");
}

function oskKeydown(event) {
  if (event.isComposing) return;
  if (event.key === "Enter" || event.key === "Tab") {
    event.preventDefault();
    oskType(event.key === "Enter" ? "\n" : "\t");
  } else if (OSK_SPECIAL_KEYS[event.key]) {
    event.preventDefault();
    pressKeys([{ ...OSK_SPECIAL_KEYS[event.key], shift: false }]);
  }
}

function oskInput(event) {
  // A word being composed (predictive keyboards) arrives whole at compositionend.
  if (event.isComposing || event.inputType === "insertCompositionText") return;
  if (event.inputType === "deleteContentBackward") {
    pressKeys([{ ...OSK_SPECIAL_KEYS.Backspace, shift: false }]);
  } else if (event.inputType === "insertLineBreak" || event.inputType === "insertParagraph") {
    oskType("\n");
  } else if (event.inputType.startsWith("insert")) {
    // A paste into the field carries no `data`: what it added is the field minus the filler.
    const text = event.data ?? osk.value.replace(OSK_FILLER, "");
    if (text) oskType(text);
  }
  oskReset();
}

if (osk) {
  osk.addEventListener("keydown", oskKeydown);
  osk.addEventListener("input", oskInput);
  osk.addEventListener("compositionend", (event) => {
    if (event.data) oskType(event.data);
    oskReset();
  });
  document.getElementById("btn-keyboard").addEventListener("click", () => {
    oskReset();
    osk.focus(); // in the tap's own handler: only then do phones open their keyboard
    setStatus("Keyboard open: what you type goes to the desktop.", "ok");
  });
}

// --- key combinations -------------------------------------------------------------------

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

// Ctrl-Alt-Del restarts many guests on the spot: a person confirms it first.
function ctrlAltDel() {
  if (!rfb || !connected) return;
  if (window.confirm(`Send Ctrl-Alt-Del to ${desktop.name}? Many systems restart at once.`)) {
    rfb.sendCtrlAltDel();
    setStatus("Ctrl-Alt-Del sent.", "ok");
  } else {
    setStatus("Ctrl-Alt-Del not sent.");
  }
  rfb.focus();
}

// --- wiring -----------------------------------------------------------------------------

document.getElementById("btn-cad").addEventListener("click", ctrlAltDel);
document.getElementById("send-keys").addEventListener("change", (event) => {
  if (rfb && COMBOS[event.target.value]) sendCombo(COMBOS[event.target.value]);
  event.target.value = "";
  if (rfb) rfb.focus();
});
document.getElementById("btn-scale").addEventListener("click", (event) => {
  const scaled = event.currentTarget.getAttribute("aria-pressed") !== "true";
  event.currentTarget.setAttribute("aria-pressed", String(scaled));
  event.currentTarget.textContent = scaled ? "Scale to window" : "Actual size (1:1)";
  screen.classList.toggle("actual-size", !scaled);
  if (rfb) rfb.scaleViewport = scaled;
});
document.getElementById("btn-fullscreen").addEventListener("click", () => {
  if (document.fullscreenElement) document.exitFullscreen();
  else screen.requestFullscreen();
});
document.getElementById("btn-reconnect").addEventListener("click", () => connect());
document.getElementById("btn-paste").addEventListener("click", pasteAsKeystrokes);
const takeControl = document.getElementById("take-control");
if (takeControl) {
  takeControl.addEventListener("submit", (event) => {
    event.preventDefault();
    const given = document.getElementById("control-reason").value.trim();
    if (given) connect({ wantedMode: "full", wantedReason: given });
    else setStatus("Say why you are taking control: the reason is recorded.", "error");
  });
  document.getElementById("btn-release").addEventListener("click", () => {
    connect({ wantedMode: "view", wantedReason: "" });
  });
}

const spiceForm = document.getElementById("spice-form");
if (spiceForm) {
  // SPICE: a ticket of its own, traded for a one-minute virt-viewer file (full control:
  // remote-viewer has no view-only mode the portal could enforce).
  spiceForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const ticket = await requestTicket("full", mode === "full" ? reason : "");
      document.getElementById("spice-ticket").value = ticket.ticket;
      spiceForm.submit();
      setStatus("Connection file downloaded; open it with remote-viewer.", "ok");
    } catch (error) {
      setStatus(error.message, "error");
    }
  });
}
setControls();
if (desktop.status === D.RUNNING) connect();
else onDesktopState(desktop);

const watchersBanner = document.getElementById("watchers");
connectLive({
  watch: [root.dataset.desktop],
  onWatchers: (desktopId, watchers) => {
    if (watchersBanner && desktopId === root.dataset.desktop) {
      renderWatchers(watchersBanner, watchersBanner.dataset.name, watchers);
    }
  },
  onDesktop: (state) => {
    if (state.id === root.dataset.desktop) onDesktopState(state);
  },
});

// Each time the live feed (re)opens, read the state once: a change made before the feed
// was subscribed (a quick start right after this page loaded) is otherwise never seen.
async function refreshState() {
  const { ok, data } = await request("GET", root.dataset.stateUrl);
  if (ok) onDesktopState(data);
}
new MutationObserver(() => {
  if (document.body.dataset.live === "connected") refreshState().catch(() => {});
}).observe(document.body, { attributes: true, attributeFilter: ["data-live"] });
