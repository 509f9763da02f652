// What the server tells every page's scripts (templates/vms/_page_data.html, from
// vms.web.context.script_data): the URLs they call and the names of the states the API
// and the live feed answer with. The scripts keep no copy of either.
export const page = JSON.parse(document.getElementById("page-data").textContent);
export const STATES = page.states;
export const UNDER_WAY = Object.fromEntries(
  Object.entries(page.under_way).map(([kind, states]) => [kind, new Set(states)]));
