// The page around the results: the status line, the empty state, the query chip, the filter
// count and sort/jump menus, and the header's photo count (/ready).
import { api, withKey } from "./api.js";
import { els } from "./dom.js";
import { loadFacets } from "./filters.js";
import { activeFilterCount, byDate, hasFilters, isBrowse, state } from "./state.js";
import { fmtInt } from "./util.js";

export function setStatus(text, kind = "") {
  els.status.textContent = text;
  els.status.className = "status" + (kind ? ` ${kind}` : "");
  els.status.title = text;
}

export function setBusy(busy) {
  document.body.classList.toggle("busy", busy);
  els.results.setAttribute("aria-busy", busy ? "true" : "false");
}

export function showEmpty(kind) {
  if (!kind) {
    els.empty.hidden = true;
    return;
  }
  els.empty.hidden = false;
  els.empty.dataset.kind = kind;
  if (kind === "intro") {
    const n = state.imageCount;
    els.emptyTitle.textContent =
      n === 0 ? "No photos indexed yet" : n ? `Search your ${fmtInt(n)} photos` : "Search your photos";
    els.emptyText.textContent =
      n === 0
        ? "Once the indexer has processed your library, describe a photo here or drop one on this page."
        : "Describe what you remember — “birthday cake with candles”, “snowy mountain lake” — or drop a photo anywhere on this page to find similar ones.";
  } else {
    els.emptyTitle.textContent = isBrowse(state.query)
      ? "No photos match these filters"
      : state.query
        ? `No photos match “${describeQuery(state.query)}” well`
        : "No photos match well";
    els.emptyText.textContent = hasFilters()
      ? "Try other words, or loosen the filters."
      : "Try describing it differently — objects, colours, places or the mood of the scene.";
  }
  // Only when the automatic cut-off hid photos that exist: then the closest can be shown.
  els.showClosest.hidden = kind !== "cutoff";
}

export function updateFilterChrome() {
  const n = activeFilterCount();
  els.clearFilters.hidden = n === 0;
  els.filtersCount.hidden = n === 0;
  els.filtersCount.textContent = n ? String(n) : "";
  const grouped = byDate();
  document.body.classList.toggle("grouped", grouped);
  // One menu: best match / newest / oldest for a search; newest / oldest for the collection.
  const browsing = isBrowse(state.query);
  els.sortTool.hidden = !state.query;
  els.sort.options[0].hidden = browsing;
  els.sort.options[0].disabled = browsing;
  els.sort.value = browsing ? state.browseSort : state.sort;
  els.jumpTool.hidden = !isBrowse(state.query) || state.months.length < 2;
}

export function updateChip() {
  const q = state.query;
  if (!q || q.kind === "text" || q.kind === "browse") {
    els.chip.hidden = true;
    els.chipImg.removeAttribute("src");
    document.body.classList.remove("image-query");
    return;
  }
  els.chip.hidden = false;
  document.body.classList.add("image-query");
  els.chipImg.onerror = () => els.chipImg.classList.add("broken");
  els.chipImg.classList.remove("broken");
  if (q.kind === "upload") {
    els.chipImg.src = q.preview;
    els.chipImg.alt = `Query photo ${q.name || ""}`.trim();
    els.chipLabel.textContent = q.name || "Your photo";
    els.chip.title = `Searching with ${q.name || "your photo"}`;
  } else {
    els.chipImg.src = withKey(`/images/${encodeURIComponent(q.id)}/thumbnail`);
    els.chipImg.alt = `Query photo ${q.name || `#${q.id}`}`;
    els.chipLabel.textContent = `Like ${q.name || `#${q.id}`}`;
    els.chip.title = `Photos similar to ${q.name || `#${q.id}`}`;
  }
  els.q.placeholder = "Or type to search by words instead…";
}

export function resetPlaceholder() {
  els.q.placeholder = "Describe a photo… e.g. “dog on a beach at sunset”";
}

/** "What is shown" in words: the status line, the title, the empty state. */
export function describeQuery(q) {
  if (!q) return "";
  if (q.kind === "browse") return "All photos";
  if (q.kind === "text") return q.raw;
  if (q.kind === "upload") return q.name || "your photo";
  return q.name || `photo #${q.id}`;
}

let readyTimer = 0;
/** The header's photo count and model, polled while the indexer works or the server is away. */
export async function refreshReady() {
  clearTimeout(readyTimer);
  try {
    const data = await api("/ready");
    const images = Number(data.images);
    const before = state.imageCount;
    state.imageCount = Number.isFinite(images) ? images : null;
    if (before !== null && before !== state.imageCount) loadFacets();
    const model = data.model ? ` · ${data.model}` : "";
    if (data.ready === false) {
      els.count.textContent = `indexing… ${fmtInt(images)} photos so far${model}`;
      readyTimer = setTimeout(refreshReady, 4000);
    } else {
      els.count.textContent = `${fmtInt(images)} ${images === 1 ? "photo" : "photos"}${model}`;
    }
    els.count.classList.remove("offline");
    if ((!state.query || isBrowse(state.query)) && images === 0) showEmpty("intro");
  } catch (err) {
    if (err && err.status === 401) {
      els.count.textContent = "locked";
      return;
    }
    els.count.textContent = err && err.status ? "starting…" : "offline";
    els.count.classList.add("offline");
    readyTimer = setTimeout(refreshReady, err && err.status ? 3000 : 8000);
  }
}
