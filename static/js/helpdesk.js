// Help-desk search results: live status of the listed desktops.
import { connectLive } from "./live.js";

const ids = [...document.querySelectorAll("tr[data-desktop]")].map((row) => row.dataset.desktop);
connectLive({
  watch: ids,
  onDesktop: (desktop) => {
    const row = document.querySelector(`tr[data-desktop="${desktop.id}"]`);
    if (!row) return;
    const status = row.querySelector("[data-field=status]");
    status.textContent = desktop.status.charAt(0).toUpperCase() + desktop.status.slice(1);
    status.className = `status status-${desktop.status}`;
    row.querySelector("[data-field=last_error]").textContent = desktop.last_error;
  },
});
