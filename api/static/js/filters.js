// The filters: dates, camera, format, size and folder, the switches beside them, the facets
// that fill the menus, and their folding on a phone.
import { api } from "./api.js";
import { updateFilterChrome } from "./chrome.js";
import { els } from "./dom.js";
import { rerun, runQuery } from "./query.js";
import { submitText } from "./search.js";
import {
  CAPTIONS_STORAGE, FILTER_DEBOUNCE_MS, SCORES_STORAGE, SIZE_STEPS, filterInputs, state,
} from "./state.js";
import { debounce, el, fmtInt, store } from "./util.js";

const rerunForFilters = debounce(() => {
  updateFilterChrome();
  rerun();
}, FILTER_DEBOUNCE_MS);

/** The filter values that exist in the collection, offered in the selects. */
export async function loadFacets() {
  let f;
  try {
    f = await api("/facets");
  } catch {
    return; // the filters stay usable with what they hold
  }
  const keep = (select, options) => {
    const current = select.value;
    const first = select.options[0];
    select.replaceChildren(first, ...options);
    select.value = current;
    if (select.value !== current) ensureOption(select, current, current);
  };
  keep(els.camera, (f.cameras || []).map((c) => el("option", { value: c.value, text: `${c.value} (${fmtInt(c.count)})` })));
  keep(els.format, (f.formats || []).map((c) => el("option", { value: c.value, text: `${String(c.value).toUpperCase()} (${fmtInt(c.count)})` })));
  const largest = Math.max(Number(f.max_width) || 0, Number(f.max_height) || 0);
  const steps = SIZE_STEPS.filter((n) => n <= largest);
  if (!steps.length && largest) steps.push(Math.max(1, Math.floor(largest / 2)));
  keep(els.minSize, steps.map((n) => el("option", { value: String(n), text: `≥ ${fmtInt(n)} px` })));
}

export function ensureOption(select, value, label) {
  if (!value) return;
  if (![...select.options].some((o) => o.value === value)) select.append(el("option", { value, text: label }));
  select.value = value;
}

/** React to the filters and switches; restore the switches from the last visit. */
export function initFilters() {
  for (const select of [els.camera, els.format, els.minSize]) {
    select.addEventListener("change", () => { updateFilterChrome(); rerun(); });
  }
  for (const input of [els.after, els.before, els.folder]) {
    input.addEventListener("input", () => { updateFilterChrome(); rerunForFilters(); });
    input.addEventListener("change", () => { rerunForFilters.cancel(); updateFilterChrome(); rerun(); });
  }
  els.folder.addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      rerunForFilters.cancel();
      if (state.query) runQuery(state.query, { force: true });
      else if (els.q.value.trim()) submitText({ force: true });
    }
  });
  els.captions.checked = store.get(CAPTIONS_STORAGE) === "true";
  // On a phone the filters fold away behind one button.
  els.filtersBtn.addEventListener("click", () => {
    const open = !document.body.classList.contains("filters-open");
    document.body.classList.toggle("filters-open", open);
    els.filtersBtn.setAttribute("aria-expanded", open ? "true" : "false");
  });

  els.scores.checked = store.get(SCORES_STORAGE) === "true";
  document.body.classList.toggle("show-scores", els.scores.checked);
  els.scores.addEventListener("change", () => {
    store.set(SCORES_STORAGE, els.scores.checked ? "true" : "false");
    document.body.classList.toggle("show-scores", els.scores.checked);
  });
  els.captions.addEventListener("change", () => {
    store.set(CAPTIONS_STORAGE, els.captions.checked ? "true" : "false");
    rerun();
  });
  els.clearFilters.addEventListener("click", () => {
    for (const input of filterInputs()) input.value = "";
    updateFilterChrome();
    rerunForFilters.cancel();
    rerun();
  });
}
