// A SPICE console with the face the console page uses for noVNC's RFB: sendKey(keysym,
// code, down), sendCtrlAltDel(), focus(), disconnect(), scaleViewport, and "connect" /
// "disconnect" events. spice-html5 (served locally, static/vendor) does the protocol.
//
// spice-html5 opens one WebSocket per SPICE channel with `new WebSocket(url, "binary")`.
// The relay admits them all with the console's one ticket, which rides as a subprotocol
// (never in a URL): while a session is open, sockets to its relay path get it added.
import { SpiceMainConn } from "../vendor/spice-html5/src/main.js";
import { SpiceMiniData, SpiceMsgcKeyDown, SpiceMsgcKeyUp } from "../vendor/spice-html5/src/spicemsg.js";
import { Constants } from "../vendor/spice-html5/src/enums.js";

const NativeWebSocket = window.WebSocket;
let ticketed = null; // { path, ticket } of the open SPICE session

class TicketedWebSocket extends NativeWebSocket {
  constructor(url, protocols) {
    const path = new URL(url, window.location.href).pathname;
    super(url, ticketed && path === ticketed.path ? ["binary", `ticket.${ticketed.ticket}`] : protocols);
  }
}

// PC scancodes (set 1) of the keys the page types, by KeyboardEvent.code; extended keys
// are 0xE0xx. SPICE sends scancodes, and QEMU adds no Shift of its own.
const SCANCODES = {
  Escape: 0x01, Minus: 0x0c, Equal: 0x0d, Backspace: 0x0e, Tab: 0x0f, BracketLeft: 0x1a,
  BracketRight: 0x1b, Enter: 0x1c, ControlLeft: 0x1d, Semicolon: 0x27, Quote: 0x28,
  Backquote: 0x29, ShiftLeft: 0x2a, Backslash: 0x2b, Comma: 0x33, Period: 0x34, Slash: 0x35,
  AltLeft: 0x38, Space: 0x39, F11: 0x57, F12: 0x58,
  PrintScreen: 0xe037, ArrowUp: 0xe048, ArrowLeft: 0xe04b, ArrowRight: 0xe04d,
  ArrowDown: 0xe050, Delete: 0xe053,
};
"1234567890".split("").forEach((digit, i) => { SCANCODES[`Digit${digit}`] = 0x02 + i; });
const ROWS = [["QWERTYUIOP", 0x10], ["ASDFGHJKL", 0x1e], ["ZXCVBNM", 0x2c]];
ROWS.forEach(([letters, first]) => letters.split("").forEach((letter, i) => {
  SCANCODES[`Key${letter}`] = first + i;
}));
for (let n = 1; n <= 10; n += 1) SCANCODES[`F${n}`] = 0x3a + n;

// The wire form of a press or a release: extended keys go E0 first (low byte first).
function keyMessage(scancode, down) {
  const extended = scancode > 0xff;
  const key = (extended ? scancode & 0xff : scancode) | (down ? 0 : 0x80);
  const code = extended ? 0xe0 | (key << 8) : key;
  const body = down ? new SpiceMsgcKeyDown() : new SpiceMsgcKeyUp();
  body.code = code;
  const message = new SpiceMiniData();
  message.build_msg(down ? Constants.SPICE_MSGC_INPUTS_KEY_DOWN : Constants.SPICE_MSGC_INPUTS_KEY_UP, body);
  return message;
}

export class SpiceSession extends EventTarget {
  constructor(screen, url, ticket) {
    super();
    this.screen = screen;
    this._scale = true;
    this.viewOnly = false; // a courtesy: the relay gives a view-only session no inputs channel
    ticketed = { path: new URL(url, window.location.href).pathname, ticket };
    // Only SPICE pages get the ticketed sockets: noVNC refuses a WebSocket subclass
    // ("Raw channel missing property: send"), so a VNC page keeps the browser's own.
    window.WebSocket = TicketedWebSocket;
    this.conn = new SpiceMainConn({
      uri: url,
      screen_id: screen.id,
      password: "", // the relay holds the display's password; this ticket is a dummy
      onsuccess: () => this.dispatchEvent(new CustomEvent("connect")),
      onerror: () => this._ended(false),
    });
    window.spice_connection = this.conn; // spice-html5's own handlers look for it
    this.socket = this.conn.ws;
    this.socket.addEventListener("close", () => this._ended(false));
    this._observer = new MutationObserver(() => this._applyScale());
    this._observer.observe(screen, { childList: true });
  }

  get inputsReady() {
    return Boolean(this.conn.inputs && this.conn.inputs.state === "ready");
  }

  sendKey(keysym, code, down) {
    const scancode = SCANCODES[code];
    if (scancode === undefined || !this.inputsReady || this.viewOnly) return;
    this.conn.inputs.send_msg(keyMessage(scancode, down));
  }

  sendCtrlAltDel() {
    const keys = ["ControlLeft", "AltLeft", "Delete"];
    keys.forEach((code) => this.sendKey(0, code, true));
    [...keys].reverse().forEach((code) => this.sendKey(0, code, false));
  }

  get canvas() {
    return this.screen.querySelector("canvas");
  }

  focus() {
    if (this.canvas) this.canvas.focus();
  }

  set scaleViewport(scaled) {
    this._scale = scaled;
    this._applyScale();
  }

  get scaleViewport() {
    return this._scale;
  }

  // Scaled: the guest's screen fits the page's width (the picture only: spice-html5
  // places the pointer at unscaled positions, so clicking works best at actual size).
  _applyScale() {
    const canvas = this.canvas;
    if (!canvas) return;
    canvas.style.width = this._scale ? "100%" : "";
    canvas.style.height = this._scale ? "auto" : "";
    this.screen.style.height = "";
    this.screen.style.setProperty("--guest-aspect", `${canvas.width} / ${canvas.height}`);
    this.screen.style.setProperty("--guest-height", `${canvas.height}px`);
  }

  disconnect() {
    if (this._done) return;
    this.conn.stop();
    this._ended(true);
  }

  _ended(clean) {
    if (this._done) return;
    this._done = true;
    this._observer.disconnect();
    if (ticketed && ticketed.ticket && window.spice_connection === this.conn) ticketed = null;
    if (!clean) {
      try {
        this.conn.stop(); // its other channels' sockets go too
      } catch (error) {
        console.warn("spice-html5 did not stop cleanly", error);
      }
    }
    this.dispatchEvent(new CustomEvent("disconnect", { detail: { clean } }));
  }
}
