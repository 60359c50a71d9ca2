// What the page shows and asks: the one state object, the settings that shape requests, and the
// filter values read from the form.
import { els } from "./dom.js";

export const PAGE_SIZE = 40;            // results per request (backend max is 200)
export const BROWSE_PAGE_SIZE = 90;     // photos per request when browsing by date
export const TYPE_DEBOUNCE_MS = 350;    // search-as-you-type delay
export const FILTER_DEBOUNCE_MS = 450;  // re-run delay after editing a filter
export const MIN_TYPE_CHARS = 2;        // don't search-as-you-type for a single character
export const PRELOAD_MARGIN_PX = 1200;  // start loading the next page this far before the bottom
export const KEY_STORAGE = "pixsearch.apiKey";
export const CAPTIONS_STORAGE = "pixsearch.captions";
export const SCORES_STORAGE = "pixsearch.scores";
export const SIZE_STEPS = [256, 512, 1024, 2048, 3000, 4000, 6000];  // "at least N px on the short side"

export const state = {
  // query: null | {kind: "browse"} (the collection by date, when nothing is asked)
  //              | {kind: "text", raw, text, negative}
  //              | {kind: "upload", file, name, preview}
  //              | {kind: "similar", id, name}
  query: null,
  gen: 0,            // bumped on every new query; stale responses are dropped
  controller: null,  // AbortController of the request in flight
  hits: [],          // hits shown, in order
  ids: new Set(),
  offset: 0,
  done: false,
  loading: false,
  errored: false,
  fresh: false,      // true until the first page of the current query arrives
  lbIndex: -1,
  sort: "relevance",  // a search's order: relevance | -date | date
  browseSort: "-date",
  startOffset: 0,     // where a browse starts (the month jumper moves it)
  total: null,        // photos a browse's filters allow
  months: [],         // [{month, count}] of the browse, newest first
  group: null,        // {month, grid} the next card goes into
  imageCount: null,
  previewUrl: null,  // object URL of the uploaded query image
};

export const isBrowse = (q) => Boolean(q && q.kind === "browse");
export const searchSort = () => (state.sort !== "relevance" ? state.sort : null);
/** Whether the view is grouped by month: the collection, or a search sorted by date. */
export const byDate = () => isBrowse(state.query) || Boolean(searchSort());

export function currentFilters() {
  const size = Number(els.minSize.value) || null;
  return {
    taken_after: els.after.value || null,
    taken_before: els.before.value || null,
    path_prefix: els.folder.value.trim() || null,
    camera: els.camera.value || null,
    min_width: size,
    min_height: size,
    format: els.format.value || null,
  };
}

export const filterInputs = () => [els.after, els.before, els.folder, els.camera, els.format, els.minSize];
export const activeFilterCount = () => filterInputs().filter((i) => i.value.trim()).length;
export const hasFilters = () => activeFilterCount() > 0;
