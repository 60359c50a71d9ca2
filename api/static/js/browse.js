// Browsing the collection by date: the sort menu, the month jumper, and "Newer photos".
import { updateFilterChrome } from "./chrome.js";
import { els } from "./dom.js";
import { rerun, runQuery } from "./query.js";
import { isBrowse, state } from "./state.js";
import { el, fmtInt, monthLabel } from "./util.js";

/** Fill the "Jump to…" menu with the browse's months, grouped by year. */
export function fillJumper() {
  const byYear = new Map();
  for (const m of state.months) {
    const year = String(m.month).slice(0, 4);
    if (!byYear.has(year)) byYear.set(year, []);
    byYear.get(year).push(m);
  }
  const groups = [...byYear].map(([year, months]) =>
    el(
      "optgroup",
      { label: year },
      ...months.map((m) => el("option", { value: m.month, text: `${monthLabel(m.month)} (${fmtInt(m.count)})` })),
    ),
  );
  els.jump.replaceChildren(el("option", { value: "", text: "Jump to…" }), ...groups);
  updateFilterChrome();
}

/** Browse from the first photo of `month`: the photos before it are skipped, not loaded. */
function jumpTo(month) {
  const order = state.browseSort === "-date" ? state.months : [...state.months].reverse();
  let start = 0;
  for (const m of order) {
    if (m.month === month) break;
    start += m.count;
  }
  runQuery({ kind: "browse" }, { force: true, start, history: "none" });
}

/** The order menu (a search's or the collection's), the jumper and the "newer" button. */
export function initBrowse() {
  els.sort.addEventListener("change", () => {
    if (!state.query) return;
    if (isBrowse(state.query)) state.browseSort = els.sort.value === "date" ? "date" : "-date";
    else state.sort = els.sort.value;
    rerun();
  });
  els.jump.addEventListener("change", () => {
    const month = els.jump.value;
    els.jump.value = "";
    if (month) jumpTo(month);
  });
  els.newer.addEventListener("click", () => runQuery({ kind: "browse" }, { force: true }));
}
