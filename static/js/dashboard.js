// The dashboard: live status, launch progress and console notices without reloading.
import { confirmBeforeSubmit, connectLive, renderDesktopState, renderWatchers } from "./live.js";

const STEPS = ["queued", "cloning", "defining", "starting", "ready"];
const LABELS = { queued: "Queued", cloning: "Cloning disk", defining: "Defining",
                 starting: "Starting", ready: "Console ready" };

function updateRow(desktop) {
  const row = document.querySelector(`tr[data-desktop="${desktop.id}"]`);
  if (!row) {
    if (desktop.status !== "deleted") window.location.reload(); // a desktop made elsewhere
    return;
  }
  if (desktop.status === "deleted") { row.remove(); return; }
  renderDesktopState(row, desktop);
  const bar = row.querySelector("progress");
  const busy = desktop.status === "provisioning" || desktop.status === "starting";
  bar.hidden = !busy;
  const step = Math.max(0, STEPS.indexOf(desktop.progress));
  bar.value = busy ? step : STEPS.length - 1;
  bar.textContent = LABELS[desktop.progress] || "";
  bar.setAttribute("aria-valuetext", LABELS[desktop.progress] || desktop.status);
  row.querySelector("[data-field=progress]").textContent = busy ? LABELS[desktop.progress] || "" : "";
}

connectLive({
  onDesktop: updateRow,
  onWatchers: (desktopId, watchers) => {
    const banner = document.querySelector(`[data-watchers="${desktopId}"]`);
    if (banner) renderWatchers(banner, banner.dataset.name, watchers);
  },
});

confirmBeforeSubmit();
