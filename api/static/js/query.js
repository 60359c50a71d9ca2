// Running a query: starting it (dropping the one before), loading its pages as the page
// scrolls, and summing up what came back.
import { fetchPage } from "./api.js";
import { fillJumper } from "./browse.js";
import {
  describeQuery, resetPlaceholder, setBusy, setStatus, showEmpty, updateChip, updateFilterChrome,
} from "./chrome.js";
import { els } from "./dom.js";
import { appendHits } from "./grid.js";
import {
  BROWSE_PAGE_SIZE, PAGE_SIZE, PRELOAD_MARGIN_PX, currentFilters, hasFilters, isBrowse, state,
} from "./state.js";
import { syncUrl } from "./url.js";
import { debounce, el, fmtInt } from "./util.js";

function queryKey(q) {
  if (!q) return "";
  const base =
    q.kind === "browse"
      ? `b:${state.browseSort}`
      : q.kind === "text"
        ? `t:${q.text}|${q.negative.join(",")}|${state.sort}`
        : q.kind === "similar"
          ? `s:${q.id}|${state.sort}`
          : `u:${q.preview}|${state.sort}`;
  const f = Object.values(currentFilters()).join("|");
  return `${base}|${q.closest ? "closest" : ""}|${f}|${els.captions.checked}`;
}
let lastRunKey = "";

function validateFilters() {
  if (els.after.value && els.before.value && els.after.value > els.before.value) {
    setStatus("“Taken after” is later than “Taken before” — no photo can match.", "error");
    return false;
  }
  return true;
}

/** Forget the query shown (its requests, hits and preview) and make `query` the current one. */
function replaceQuery(query) {
  state.gen += 1;
  if (state.controller) state.controller.abort();
  state.controller = null;
  if (state.query && state.query.kind === "upload" && query.kind !== "upload") releasePreview();
  state.query = query;
  state.hits = [];
  state.ids = new Set();
}

/** Start `query` from its first page (or a browse from `start`); unless `force`, a query that
 * asks exactly what is shown already is not sent again. */
export function runQuery(query, { history: historyMode = "replace", force = true, start = 0 } = {}) {
  if (!validateFilters()) {
    // keep the query so that fixing the dates re-runs it, but don't send it
    replaceQuery(query);
    state.errored = true;
    state.loading = false;
    lastRunKey = "";
    setBusy(false);
    els.results.replaceChildren();
    els.endNote.hidden = true;
    showEmpty(null);
    updateChip();
    return;
  }
  const key = queryKey(query);
  if (!force && key === lastRunKey && !state.errored) return;
  lastRunKey = key;
  // Search results never mix with the browsed collection, even for a moment.
  const modeChange = isBrowse(state.query) !== isBrowse(query);

  replaceQuery(query);
  state.startOffset = isBrowse(query) ? start : 0;
  state.offset = state.startOffset;
  if (!isBrowse(query) || start === 0) state.months = [];
  state.group = null;
  state.done = false;
  state.loading = false;
  state.errored = false;
  state.fresh = true;
  els.endNote.hidden = true;
  els.newer.hidden = true;
  els.results.classList.add("stale");
  if (modeChange || !els.results.querySelector(".hit")) showSkeleton();
  updateChip();
  updateFilterChrome();
  syncUrl(historyMode);
  document.title = `${describeQuery(query)} — pixsearch`;
  loadPage();
}

/** Run the current query again after a setting changed (nothing is sent if nothing did). */
export function rerun() {
  if (state.query) runQuery(state.query, { force: false });
}

export function clearQuery({ history: historyMode = "replace" } = {}) {
  releasePreview();
  resetPlaceholder();
  state.sort = "relevance";
  runQuery({ kind: "browse" }, { history: historyMode, force: false });
  document.title = "pixsearch";
}

export function releasePreview() {
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = null;
}

function showSkeleton() {
  const frag = document.createDocumentFragment();
  for (let i = 0; i < 12; i++) frag.append(el("div", { class: "skeleton", "aria-hidden": "true" }));
  els.results.replaceChildren(el("div", { class: "grid" }, frag));
  showEmpty(null);
}

/** The first answer of a query replaces what the previous query left on screen. */
function clearStale() {
  state.fresh = false;
  els.results.replaceChildren();
  els.results.classList.remove("stale");
}

export async function loadPage() {
  if (!state.query || state.loading || state.done || state.errored) return;
  const gen = state.gen;
  const query = state.query;
  const offset = state.offset;
  const controller = new AbortController();
  state.controller = controller;
  state.loading = true;
  setBusy(true);
  const first = offset === state.startOffset;
  const pageSize = isBrowse(query) ? BROWSE_PAGE_SIZE : PAGE_SIZE;
  if (!isBrowse(query)) {
    setStatus(first ? "Searching…" : `Loading more… (${state.hits.length} shown)`, "pending");
  }

  try {
    const data = await fetchPage(query, offset, controller.signal);
    if (gen !== state.gen) return;
    const results = Array.isArray(data && data.results)
      ? data.results
      : Array.isArray(data && data.items) ? data.items : [];
    if (state.fresh) {
      clearStale();
      if (first) window.scrollTo({ top: 0 });
    }
    if (first) {
      els.notice.textContent = (data && data.notice) || "";
      els.notice.hidden = !els.notice.textContent;
    }
    if (isBrowse(query)) {
      state.total = Number(data.total) || 0;
      if (first && state.startOffset === 0 && Array.isArray(data.months)) {
        state.months = data.months;
        fillJumper();
      }
    }
    appendHits(results);
    state.offset = offset + results.length;
    if (results.length < pageSize || (isBrowse(query) && state.offset >= state.total)) state.done = true;
    renderSummary(data);
  } catch (err) {
    if (gen !== state.gen || (err && err.name === "AbortError")) return;
    state.errored = true;
    if (state.fresh) {
      clearStale();
      showEmpty(null);
    }
    const msg = err && err.message ? err.message : String(err);
    setStatus(first ? msg : `Couldn't load more: ${msg}`, "error");
  } finally {
    if (gen === state.gen) {
      state.loading = false;
      state.controller = null;
      setBusy(false);
      requestAnimationFrame(maybeLoadMore);
    }
  }
}

function renderSummary(data) {
  const n = state.hits.length;
  if (isBrowse(state.query)) {
    els.newer.hidden = state.startOffset === 0;
    els.newer.textContent = state.browseSort === "-date" ? "↑ Newer photos" : "↑ Older photos";
    const total = state.total || 0;
    if (total === 0) {
      showEmpty(hasFilters() ? "nomatch" : "intro");
      setStatus(hasFilters() ? "No photos match these filters." : "");
      els.endNote.hidden = true;
      return;
    }
    showEmpty(null);
    const order = state.browseSort === "-date" ? "newest first" : "oldest first";
    setStatus(`${fmtInt(total)} ${total === 1 ? "photo" : "photos"} · ${order}`);
    if (state.done) {
      els.endNote.hidden = false;
      els.endNote.textContent = `That's all — ${fmtInt(total)} photos.`;
    }
    return;
  }
  if (n === 0) {
    const hidden = Boolean(data && data.cut_off) && !state.query.closest;
    showEmpty(hidden ? "cutoff" : "nomatch");
    setStatus(
      hidden ? "No photo matches well enough to show." : data && data.notice ? data.notice : "No photos found.",
      "nomatch",
    );
    els.endNote.hidden = true;
    return;
  }
  showEmpty(null);
  const took = data && typeof data.took_ms === "number" ? ` · ${Math.round(data.took_ms)} ms` : "";
  const what =
    state.query.kind === "similar"
      ? ` similar to ${describeQuery(state.query)}`
      : state.query.kind === "upload"
        ? ` like ${describeQuery(state.query)}`
        : "";
  const plural = n === 1 ? "photo" : "photos";
  const closest = state.query.closest ? "closest " : "";
  setStatus(`${fmtInt(n)}${state.done ? "" : "+"} ${closest}${plural}${what}${took}`);
  if (state.done) {
    els.endNote.hidden = false;
    els.endNote.textContent = n > PAGE_SIZE ? `That's all — ${fmtInt(n)} photos.` : "That's all.";
  }
}

export function maybeLoadMore() {
  if (!state.query || state.done || state.loading || state.errored) return;
  const rect = els.sentinel.getBoundingClientRect();
  if (rect.top < window.innerHeight + PRELOAD_MARGIN_PX) loadPage();
}

/** Load the next page before the reader reaches the bottom. */
export function initInfiniteScroll() {
  if ("IntersectionObserver" in window) {
    const io = new IntersectionObserver(
      (entries) => { if (entries.some((en) => en.isIntersecting)) maybeLoadMore(); },
      { rootMargin: `0px 0px ${PRELOAD_MARGIN_PX}px 0px` },
    );
    io.observe(els.sentinel);
  }
  // fallback and belt-and-braces: IntersectionObserver only reports changes
  window.addEventListener("scroll", debounce(maybeLoadMore, 120), { passive: true });
  window.addEventListener("resize", debounce(maybeLoadMore, 200));
}
