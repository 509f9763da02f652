// The owner's notice (templates/vms/_watchers.html): times in the browser's local time,
// and End buttons that end a help-desk console session without leaving the page (the
// live feed then redraws the notice; live.js's renderWatchers builds the same markup).
import { request } from "./http.js";

const TIME = { hour: "2-digit", minute: "2-digit" };

function showLocalTimes(root) {
  for (const time of root.querySelectorAll("time[datetime]")) {
    time.textContent = new Date(time.dateTime).toLocaleTimeString([], TIME);
  }
}

async function endSession(form) {
  const banner = form.closest("[data-watchers]");
  const note = document.querySelector(`[data-watchers-note="${banner.dataset.watchers}"]`);
  const button = form.querySelector("button");
  button.disabled = true;
  let text;
  try {
    const response = await request("POST", form.action, { form: new FormData(form) });
    text = response.data.detail || `The portal could not end the session (HTTP ${response.status}).`;
    if (response.ok) {
      form.closest(".watcher").remove();
      banner.hidden = !banner.querySelector(".watcher");
    }
  } catch {
    text = "The portal could not be reached; try again.";
  }
  button.disabled = false;
  note.textContent = text;
  note.hidden = false;
}

for (const banner of document.querySelectorAll("[data-watchers]")) showLocalTimes(banner);
document.addEventListener("submit", (event) => {
  const form = event.target.closest("form.watcher-end");
  if (!form) return;
  event.preventDefault();
  endSession(form);
});
