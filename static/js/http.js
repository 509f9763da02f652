// The one way the scripts talk to the portal over HTTP: the CSRF token, JSON in and out,
// and the API's URLs as the page names them (page.js).
import { page } from "./page.js";

export function csrfToken() {
  const match = document.cookie.match(/(?:^|; )csrftoken=([^;]+)/);
  return match ? decodeURIComponent(match[1]) : "";
}

// The URL the server calls `name`, each {parameter} filled in from `params`.
export function apiUrl(name, params = {}) {
  const template = page.urls[name];
  if (template === undefined) throw new Error(`This page names no URL "${name}".`);
  return template.replace(/\{(\w+)\}/g, (_, key) => encodeURIComponent(params[key]));
}

// Send a request (a JSON body, or a form's fields); the answer as { ok, status, data },
// data being its JSON ({} when it has none).
export async function request(method, url, { json, form } = {}) {
  const headers = { Accept: "application/json" };
  let body = form;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  if (method !== "GET" && form === undefined) headers["X-CSRFToken"] = csrfToken();
  const response = await fetch(url, { method, credentials: "same-origin", headers, body });
  const data = await response.json().catch(() => ({}));
  return { ok: response.ok, status: response.status, data };
}

// The same, for calls whose refusal is an error: it throws the server's `detail` (or
// `refused(status)` when there is none), else answers the JSON.
export async function callJson(method, url, json, refused = (status) => `The request failed (${status}).`) {
  const { ok, status, data } = await request(method, url, { json });
  if (!ok) throw new Error(data.detail || refused(status));
  return data;
}
