// The address bar mirrors the query and filters: a search can be shared, and Back goes back.
import { updateFilterChrome } from "./chrome.js";
import { els } from "./dom.js";
import { ensureOption } from "./filters.js";
import { closeLightbox } from "./lightbox.js";
import { clearQuery, runQuery } from "./query.js";
import { moreLikeThis } from "./search.js";
import { isBrowse, searchSort, state } from "./state.js";
import { parseText } from "./util.js";

export function syncUrl(mode) {
  if (mode === "none") return;
  const p = new URLSearchParams();
  const q = state.query;
  if (q && q.kind === "text") p.set("q", q.raw);
  if (q && q.kind === "similar") p.set("similar", String(q.id));
  if (els.after.value) p.set("after", els.after.value);
  if (els.before.value) p.set("before", els.before.value);
  if (els.folder.value.trim()) p.set("folder", els.folder.value.trim());
  if (els.camera.value) p.set("camera", els.camera.value);
  if (els.format.value) p.set("format", els.format.value);
  if (els.minSize.value) p.set("size", els.minSize.value);
  if (q && !isBrowse(q) && searchSort()) p.set("sort", state.sort);
  if (isBrowse(q) && state.browseSort === "date") p.set("sort", "date");
  const search = p.toString();
  const url = search ? `?${search}` : location.pathname;
  if ((search ? `?${search}` : "") === location.search) return;
  try {
    if (mode === "push") history.pushState(null, "", url);
    else history.replaceState(null, "", url);
  } catch { /* e.g. file:// */ }
}

export function applyUrl() {
  const p = new URLSearchParams(location.search);
  els.after.value = p.get("after") || "";
  els.before.value = p.get("before") || "";
  els.folder.value = p.get("folder") || "";
  els.camera.value = "";
  els.format.value = "";
  els.minSize.value = "";
  ensureOption(els.camera, p.get("camera"), p.get("camera"));
  ensureOption(els.format, p.get("format"), p.get("format"));
  ensureOption(els.minSize, p.get("size"), `≥ ${p.get("size")} px`);
  const sort = ["-date", "date"].includes(p.get("sort")) ? p.get("sort") : "relevance";
  state.sort = p.get("q") || p.get("similar") ? sort : "relevance";
  state.browseSort = sort === "date" && !(p.get("q") || p.get("similar")) ? "date" : "-date";
  updateFilterChrome();
  const similar = p.get("similar");
  const q = p.get("q");
  if (similar) {
    els.q.value = "";
    moreLikeThis(similar, { history: "none" });
  } else if (q) {
    els.q.value = q;
    const { text, negative } = parseText(q);
    if (text) runQuery({ kind: "text", raw: q, text, negative }, { history: "none" });
  } else if (state.query && state.query.kind === "upload") {
    // the uploaded photo is not in the URL; keep showing it
  } else {
    els.q.value = "";
    clearQuery({ history: "none" });
  }
}

export function initUrl() {
  window.addEventListener("popstate", () => {
    closeLightbox();
    applyUrl();
  });
}
