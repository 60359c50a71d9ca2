// Talking to the server: fetch with the API key and uniform errors, the key prompt, the URLs
// of photos, and one page of results for each kind of query.
import { els } from "./dom.js";
import { refreshReady, setStatus } from "./chrome.js";
import { runQuery } from "./query.js";
import {
  BROWSE_PAGE_SIZE, KEY_STORAGE, PAGE_SIZE, currentFilters, hasFilters, searchSort, state,
} from "./state.js";
import { fileName, store } from "./util.js";

let apiKey = store.get(KEY_STORAGE) || "";

export class ApiError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

/** Add ?api_key=… to same-origin URLs, for <img>/<a> which cannot send headers. */
export function withKey(url) {
  if (!apiKey) return url;
  const u = new URL(url, location.href);
  if (u.origin !== location.origin) return url;
  u.searchParams.set("api_key", apiKey);
  return u.pathname + u.search + u.hash;
}

export const thumbUrl = (hit) => withKey(hit.thumbnail_url || `/images/${hit.id}/thumbnail`);
export const originalUrl = (id) => withKey(`/images/${encodeURIComponent(id)}`);
export const hitName = (hit) => fileName(hit.path) || `Photo ${hit.id}`;
export const hitAlt = (hit) => (hit.caption ? String(hit.caption) : hitName(hit));

async function errorDetail(res) {
  let detail = "";
  try {
    const body = await res.json();
    detail = body && (body.detail ?? body.message ?? body.error);
  } catch { /* not JSON */ }
  if (Array.isArray(detail)) {
    // FastAPI validation errors: [{loc: [...], msg: "..."}]
    detail = detail
      .map((d) => {
        if (!d || typeof d !== "object") return String(d);
        const loc = Array.isArray(d.loc) ? d.loc.filter((x) => x !== "body" && x !== "query").join(".") : "";
        return (loc ? `${loc}: ` : "") + (d.msg || JSON.stringify(d));
      })
      .join("; ");
  } else if (detail && typeof detail === "object") {
    detail = JSON.stringify(detail);
  }
  return String(detail || `${res.status} ${res.statusText || "error"}`).trim();
}

/** fetch() with the API key header and uniform error handling. Resolves to parsed JSON. */
export async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  headers.set("Accept", "application/json");
  if (apiKey) headers.set("X-API-Key", apiKey);
  let res;
  try {
    res = await fetch(path, { ...options, headers });
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    throw new ApiError("Can't reach the pixsearch server — is it running?", 0);
  }
  if (!res.ok) {
    const detail = await errorDetail(res);
    const keyProblem =
      res.status === 401 || (res.status === 403 && (!apiKey || /key|auth/i.test(detail)));
    if (keyProblem) {
      askForKey(apiKey ? "That API key was not accepted. Please enter a valid key." : null);
      throw new ApiError("This server needs an API key.", 401);
    }
    throw new ApiError(detail, res.status);
  }
  try {
    return await res.json();
  } catch {
    throw new ApiError("The server sent an unreadable answer.", res.status);
  }
}

/** The JSON body of POST /search: a text, or an indexed photo, with the page's settings. */
function searchBody(query, offset, { text, imageId, negative }) {
  const sort = searchSort();
  return JSON.stringify({
    text,
    image_id: imageId,
    weights: null,
    negative,
    k: PAGE_SIZE,
    offset,
    filters: currentFilters(),
    captions: els.captions.checked,
    cutoff: !query.closest,
    ...(sort ? { sort } : {}),
  });
}

/** One page of results of `query` from `offset`: the browse, text, similar or upload endpoint. */
export function fetchPage(query, offset, signal) {
  const captions = els.captions.checked;
  const filters = currentFilters();
  const sort = searchSort();
  const json = { "Content-Type": "application/json" };

  if (query.kind === "browse") {
    const params = new URLSearchParams({
      sort: state.browseSort,
      offset: String(offset),
      k: String(BROWSE_PAGE_SIZE),
    });
    for (const [name, value] of Object.entries(filters)) if (value) params.set(name, String(value));
    return api(`/images?${params}`, { signal });
  }

  if (query.kind === "text") {
    const body = searchBody(query, offset, { text: query.text, imageId: null, negative: query.negative });
    return api("/search", { method: "POST", signal, headers: json, body });
  }

  if (query.kind === "similar") {
    if (hasFilters()) {
      // /images/{id}/similar has no filters; the general endpoint does.
      const body = searchBody(query, offset, { text: null, imageId: query.id, negative: [] });
      return api("/search", { method: "POST", signal, headers: json, body });
    }
    const params = new URLSearchParams({ k: String(PAGE_SIZE), offset: String(offset) });
    if (captions) params.set("captions", "true");
    if (query.closest) params.set("cutoff", "false");
    if (sort) params.set("sort", sort);
    return api(`/images/${encodeURIComponent(query.id)}/similar?${params}`, { signal });
  }

  // upload
  const form = new FormData();
  form.append("file", query.file, query.name || "query.jpg");
  form.append("k", String(PAGE_SIZE));
  form.append("offset", String(offset));
  form.append("captions", captions ? "true" : "false");
  form.append("cutoff", query.closest ? "false" : "true");
  if (filters.path_prefix) form.append("path_prefix", filters.path_prefix);
  if (filters.taken_after) form.append("taken_after", filters.taken_after);
  if (filters.taken_before) form.append("taken_before", filters.taken_before);
  for (const name of ["camera", "format", "min_width", "min_height"]) {
    if (filters[name]) form.append(name, String(filters[name]));
  }
  if (sort) form.append("sort", sort);
  return api("/search/image", { method: "POST", body: form, signal });
}

// ---------------------------------------------------------------- API key prompt

function askForKey(message) {
  els.keyBtn.hidden = false;
  setStatus("This server needs an API key.", "error");
  els.keyMessage.textContent =
    message || "This pixsearch server needs an API key. It is stored only in this browser.";
  if (els.keyDialog.open) return;
  if (els.lb.open) els.lb.close();
  els.keyInput.value = apiKey;
  els.keyDialog.showModal();
  els.keyInput.focus();
  els.keyInput.select();
}

/** Wire the key dialog and the header's "API key" button. */
export function initKeyPrompt() {
  els.keyForm.addEventListener("submit", (e) => {
    e.preventDefault();
    apiKey = els.keyInput.value.trim();
    store.set(KEY_STORAGE, apiKey);
    els.keyDialog.close();
    els.keyBtn.hidden = !apiKey;
    refreshReady();
    if (state.query) runQuery(state.query);
    else setStatus("");
  });
  els.keyCancel.addEventListener("click", () => els.keyDialog.close());
  els.keyBtn.addEventListener("click", () => askForKey("Change the API key used by this browser (leave empty and save to forget it)."));
  if (apiKey) els.keyBtn.hidden = false;
}
