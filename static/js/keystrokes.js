// Text as a person would type it on a US keyboard. QEMU's VGA keyboard reads scancodes
// (noVNC sends the physical key's `code` in QEMU's extended key event) and adds no Shift of
// its own, so a capital or a shifted symbol needs Shift held around the unshifted key, as
// a person's hands would: '!' is Shift + the key "Digit1".
import KeyTable from "../vendor/novnc/core/input/keysym.js";

// Printable ASCII other than letters and digits: [unshifted, shifted] characters per key.
const SYMBOL_KEYS = {
  Backquote: ["`", "~"],
  Minus: ["-", "_"],
  Equal: ["=", "+"],
  BracketLeft: ["[", "{"],
  BracketRight: ["]", "}"],
  Backslash: ["\\", "|"],
  Semicolon: [";", ":"],
  Quote: ["'", '"'],
  Comma: [",", "<"],
  Period: [".", ">"],
  Slash: ["/", "?"],
  Space: [" ", null],
};
const DIGIT_SHIFTED = ")!@#$%^&*("; // Shift + Digit0 .. Digit9

function buildLayout() {
  const layout = new Map();
  // For printable ASCII the X11 keysym is the character's code point.
  const put = (char, code, shift) => layout.set(char, { keysym: char.codePointAt(0), code, shift });
  for (let i = 0; i < 26; i += 1) {
    const lower = String.fromCharCode(97 + i);
    const code = `Key${lower.toUpperCase()}`;
    put(lower, code, false);
    put(lower.toUpperCase(), code, true);
  }
  for (let digit = 0; digit < 10; digit += 1) {
    put(String(digit), `Digit${digit}`, false);
    put(DIGIT_SHIFTED[digit], `Digit${digit}`, true);
  }
  for (const [code, [plain, shifted]] of Object.entries(SYMBOL_KEYS)) {
    put(plain, code, false);
    if (shifted) put(shifted, code, true);
  }
  layout.set("\n", { keysym: KeyTable.XK_Return, code: "Enter", shift: false });
  layout.set("\t", { keysym: KeyTable.XK_Tab, code: "Tab", shift: false });
  return layout;
}

const US_LAYOUT = buildLayout();
const SHIFT = { keysym: KeyTable.XK_Shift_L, code: "ShiftLeft" };

// The key presses for `text`, and the characters no key of the layout types (each once).
// Windows line ends ("\r\n") and lone "\r" become one Return.
export function keystrokesFor(text) {
  const strokes = [];
  const skipped = [];
  for (const char of text.replace(/\r\n?/g, "\n")) {
    const key = US_LAYOUT.get(char);
    if (!key) {
      if (!skipped.includes(char)) skipped.push(char);
      continue;
    }
    strokes.push(key);
  }
  return { strokes, skipped };
}

// Press one key (Shift held around it when the layout says so). Returns the events sent.
export function pressKey(rfb, key) {
  if (key.shift) rfb.sendKey(SHIFT.keysym, SHIFT.code, true);
  rfb.sendKey(key.keysym, key.code, true);
  rfb.sendKey(key.keysym, key.code, false);
  if (key.shift) rfb.sendKey(SHIFT.keysym, SHIFT.code, false);
  return key.shift ? 4 : 2;
}

// How a skipped character reads in a sentence: visible ones quoted, others by code point.
export function describeChar(char) {
  const point = char.codePointAt(0);
  const hex = `U+${point.toString(16).toUpperCase().padStart(4, "0")}`;
  return /\p{L}|\p{N}|\p{P}|\p{S}/u.test(char) ? `“${char}”` : hex;
}
