// The results: photo tiles in grids, one grid per month (with its header) when the view is by
// date, and the clicks and drags on them.
import { hitAlt, hitName, originalUrl, thumbUrl } from "./api.js";
import { updateChip } from "./chrome.js";
import { els } from "./dom.js";
import { openLightbox } from "./lightbox.js";
import { moreLikeThis } from "./search.js";
import { byDate, state } from "./state.js";
import { dirName, el, fmtDate, fmtInt, fmtScore, monthLabel, svgIcon } from "./util.js";

const monthOf = (hit) => {
  if (hit.month) return String(hit.month);
  const m = /^(\d{4})-(\d{2})/.exec(String(hit.date || hit.taken_at || ""));
  return m ? `${m[1]}-${m[2]}` : "";
};

/** The grid the next card goes into: one per month when the view is by date. */
function gridFor(hit, frag) {
  const grouped = byDate();
  const month = grouped ? monthOf(hit) : "*";
  if (state.group && state.group.month === month) return state.group.grid;
  const grid = el("div", { class: "grid", role: "list", "aria-label": grouped ? monthLabel(month) : "Search results" });
  if (grouped) {
    const count = (state.months.find((m) => m.month === month) || {}).count;
    const header = el(
      "h2",
      { class: "month-header", "data-testid": "month-header", "data-month": month },
      el("span", { text: monthLabel(month) }),
      count ? el("span", { class: "month-count", text: `${fmtInt(count)} ${count === 1 ? "photo" : "photos"}` }) : null,
    );
    frag.append(el("section", { class: "month", "data-month": month }, header, grid));
  } else {
    frag.append(grid);
  }
  state.group = { month, grid };
  return grid;
}

export function appendHits(results) {
  const frag = document.createDocumentFragment();
  const folders = new Set();
  for (const hit of results) {
    if (!hit || hit.id === undefined || hit.id === null || state.ids.has(hit.id)) continue;
    state.ids.add(hit.id);
    state.hits.push(hit);
    gridFor(hit, frag).append(buildCard(hit, state.hits.length - 1));
    const dir = hit.folder || dirName(hit.path);
    if (dir) folders.add(dir);
  }
  els.results.append(frag);
  rememberFolders(folders);
  // "?similar=12" from a link: learn the query photo's file name from the results
  const q = state.query;
  if (q && q.kind === "similar" && !q.name) {
    const self = state.hits.find((h) => String(h.id) === String(q.id));
    if (self && self.path) {
      q.name = hitName(self);
      updateChip();
    }
  }
}

function buildCard(hit, index) {
  const name = hitName(hit);
  const alt = hitAlt(hit);
  const dims = hit.width && hit.height ? `${hit.width}×${hit.height}` : "";
  const date = fmtDate(hit.date || hit.taken_at);

  // `loading` must be set before `src`, or the browser starts fetching eagerly
  const img = el("img", {
    loading: "lazy",
    decoding: "async",
    width: 256,
    height: 256,
    alt,
    src: thumbUrl(hit),
  });
  img.addEventListener("load", () => img.classList.add("loaded"), { once: true });
  img.addEventListener("error", () => card.classList.add("broken"), { once: true });

  const link = el(
    "a",
    {
      class: "thumb",
      href: originalUrl(hit.id),
      target: "_blank",
      rel: "noopener",
      title: [name, date, dims].filter(Boolean).join(" · "),
      "data-index": index,
    },
    img,
    typeof hit.score === "number"
      ? el("span", { class: "score", "data-testid": "score", title: "Similarity score", text: fmtScore(hit.score) })
      : null,
  );

  const more = el(
    "button",
    {
      class: "action more-like-this",
      type: "button",
      "data-testid": "more-like-this",
      "data-id": hit.id,
      "aria-label": `More like this: ${name}`,
      title: "More like this",
    },
    svgIcon("similar"),
    el("span", { class: "action-label", text: "More like this" }),
  );
  const download = el(
    "a",
    {
      class: "action download",
      href: originalUrl(hit.id),
      download: name,
      "aria-label": `Download ${name}`,
      title: "Download",
    },
    svgIcon("download"),
  );
  const open = el(
    "a",
    {
      class: "action open",
      href: originalUrl(hit.id),
      target: "_blank",
      rel: "noopener",
      "aria-label": `Open ${name} in a new tab`,
      title: "Open the original",
    },
    svgIcon("open"),
  );

  const card = el(
    "article",
    { class: "hit", role: "listitem", "data-id": hit.id, "data-testid": "hit" },
    el("div", { class: "tile" }, link, el("div", { class: "hit-actions" }, more, open, download)),
    hit.caption ? el("p", { class: "caption", "data-testid": "caption", text: String(hit.caption) }) : null,
  );
  const q = state.query;
  if (q && q.kind === "similar" && String(q.id) === String(hit.id)) {
    card.classList.add("is-query");
    link.append(el("span", { class: "query-badge", text: "query" }));
  }
  return card;
}

const knownFolders = new Set();
function rememberFolders(folders) {
  let changed = false;
  for (const f of folders) {
    if (knownFolders.size >= 200) break;
    if (!knownFolders.has(f)) {
      knownFolders.add(f);
      changed = true;
    }
  }
  if (!changed) return;
  const opts = [...knownFolders].sort().map((f) => el("option", { value: f }));
  els.folderOptions.replaceChildren(...opts);
}

export function findHit(id) {
  const i = state.hits.findIndex((h) => String(h.id) === String(id));
  return i >= 0 ? { hit: state.hits[i], index: i } : null;
}

/** The card of photo `id` on the page, if it is there. */
export const cardFor = (id) => els.results.querySelector(`.hit[data-id="${CSS.escape(String(id))}"]`);

/** Clicks on the tiles open the lightbox or run "more like this"; a tile can be dragged. */
export function initGrid() {
  els.results.addEventListener("click", (e) => {
    if (els.results.classList.contains("stale")) return;
    const more = e.target.closest(".more-like-this");
    if (more) {
      e.preventDefault();
      moreLikeThis(more.dataset.id);
      return;
    }
    const link = e.target.closest("a.thumb");
    if (link) {
      if (e.button !== 0 || e.ctrlKey || e.metaKey || e.shiftKey || e.altKey) return; // new tab etc.
      e.preventDefault();
      openLightbox(Number(link.dataset.index));
    }
  });

  // Dragging a result onto the page (outside the grid) runs "more like this".
  els.results.addEventListener("dragstart", (e) => {
    const card = e.target.closest && e.target.closest(".hit");
    if (card && e.dataTransfer) e.dataTransfer.setData("application/x-pixsearch-id", card.dataset.id);
  });
}

/** Month headers stick under the top bar where it sticks (not on a phone, where it scrolls). */
export function initMonthHeaders() {
  const placeHeaders = () => {
    const sticky = getComputedStyle(els.topbar).position === "sticky";
    document.documentElement.style.setProperty("--sticky-top", sticky ? `${els.topbar.offsetHeight}px` : "0px");
  };
  if ("ResizeObserver" in window) new ResizeObserver(placeHeaders).observe(els.topbar);
  window.addEventListener("resize", placeHeaders);
  placeHeaders();
}
