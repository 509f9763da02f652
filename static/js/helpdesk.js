// Help-desk search results: live status and valid actions of the listed desktops.
import { confirmBeforeSubmit, connectLive, renderDesktopState } from "./live.js";

const ids = [...document.querySelectorAll("tr[data-desktop]")].map((row) => row.dataset.desktop);
connectLive({
  watch: ids,
  onDesktop: (desktop) => {
    const row = document.querySelector(`tr[data-desktop="${desktop.id}"]`);
    if (row) renderDesktopState(row, desktop);
  },
});
confirmBeforeSubmit();
