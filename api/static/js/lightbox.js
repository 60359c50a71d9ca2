// The lightbox: one photo large, its details, and stepping through the results.
import { api, hitAlt, hitName, originalUrl, thumbUrl } from "./api.js";
import { els } from "./dom.js";
import { cardFor } from "./grid.js";
import { loadPage, maybeLoadMore } from "./query.js";
import { moreLikeThis } from "./search.js";
import { state } from "./state.js";
import { el, fmtBytes, fmtDateTime, fmtScore } from "./util.js";

const infoCache = new Map();

/** A photo's details (date, camera, file size, GPS…): browsed photos carry them. */
async function photoInfo(hit) {
  if (hit.dated_by && hit.size !== undefined && hit.folder !== undefined) return hit;
  const key = String(hit.id);
  if (!infoCache.has(key)) {
    infoCache.set(key, api(`/images/${encodeURIComponent(hit.id)}/info`).catch((err) => {
      infoCache.delete(key);
      throw err;
    }));
  }
  return infoCache.get(key);
}

/** The photo's box: the stage's size at most, its own size at most (never upscaled, never
 * cropped); the thumbnail shown meanwhile fills the same box. */
function fitLightbox() {
  const hit = state.hits[state.lbIndex];
  if (!hit || !hit.width || !hit.height) return;
  const cs = getComputedStyle(els.lbStage);
  const w = els.lbStage.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
  const h = els.lbStage.clientHeight - parseFloat(cs.paddingTop) - parseFloat(cs.paddingBottom);
  const scale = Math.min(1, w / hit.width, h / hit.height);
  els.lbImg.style.width = `${Math.max(1, Math.floor(hit.width * scale))}px`;
  els.lbImg.style.height = `${Math.max(1, Math.floor(hit.height * scale))}px`;
}

function metaRow(name, value, testid) {
  if (value === null || value === undefined || value === "") return null;
  return el("div", { class: "lb-row" }, el("dt", { text: name }), el("dd", { "data-testid": testid }, value));
}

function renderInfo(hit, info) {
  const dims = hit.width && hit.height ? `${hit.width} × ${hit.height}` : "";
  const rows = [];
  const when = info && info.date ? fmtDateTime(info.date) : hit.taken_at ? fmtDateTime(hit.taken_at) : "";
  const fileDated = info && info.dated_by === "file";
  rows.push(metaRow("Date", when ? (fileDated ? `${when} (file time: no capture date)` : when) : "", "lb-date"));
  if (info) rows.push(metaRow("Camera", info.camera || "", "lb-camera"));
  rows.push(metaRow("Dimensions", dims, "lb-dims"));
  if (info) {
    const fmt = info.format ? String(info.format).toUpperCase() : "";
    rows.push(metaRow("File", [fmtBytes(info.size), fmt].filter(Boolean).join(" · "), "lb-file"));
    rows.push(metaRow("Folder", info.folder || "", "lb-folder"));
    if (Number.isFinite(info.gps_lat) && Number.isFinite(info.gps_lon)) {
      const lat = info.gps_lat.toFixed(5);
      const lon = info.gps_lon.toFixed(5);
      const link = el("a", {
        href: `https://www.openstreetmap.org/?mlat=${lat}&mlon=${lon}#map=15/${lat}/${lon}`,
        target: "_blank",
        rel: "noopener noreferrer",
        text: `${lat}, ${lon}`,
        title: "Show on OpenStreetMap",
      });
      rows.push(metaRow("Location", link, "lb-gps"));
    }
  }
  if (els.scores.checked && typeof hit.score === "number") rows.push(metaRow("Score", fmtScore(hit.score), "lb-score"));
  els.lbMeta.replaceChildren(...rows.filter(Boolean));
}

export function openLightbox(index) {
  const hit = state.hits[index];
  if (!hit) return;
  state.lbIndex = index;
  const name = hitName(hit);
  const thumb = thumbUrl(hit);
  const full = originalUrl(hit.id);
  els.lbImg.alt = hitAlt(hit);
  els.lbImg.src = thumb; // shown at once, swapped for the original when it has loaded
  els.lbImg.classList.add("loading");
  const pre = new Image();
  pre.onload = () => {
    if (state.lbIndex === index) {
      els.lbImg.src = full;
      els.lbImg.classList.remove("loading");
    }
  };
  pre.onerror = () => {
    if (state.lbIndex === index) els.lbImg.classList.remove("loading");
  };
  pre.src = full;

  els.lbTitle.textContent = name;
  els.lbTitle.title = hit.path || "";
  els.lbCaption.textContent = hit.caption || "";
  els.lbCaption.hidden = !hit.caption;
  renderInfo(hit, null);
  photoInfo(hit).then(
    (info) => { if (state.lbIndex === index) renderInfo(hit, info); },
    () => { /* the basic line stays */ },
  );
  els.lbOpen.href = full;
  els.lbDownload.href = full;
  els.lbDownload.setAttribute("download", name);
  els.lbPrev.disabled = index <= 0;
  els.lbNext.disabled = index >= state.hits.length - 1 && state.done;
  if (!els.lb.open) {
    els.lb.showModal();
    document.body.classList.add("no-scroll");
  }
  fitLightbox();
  // keep the page scrolled to the current photo, and fetch more near the end
  const card = cardFor(hit.id);
  if (card) card.scrollIntoView({ block: "nearest" });
  if (index >= state.hits.length - 5) maybeLoadMore();
}

function stepLightbox(delta) {
  const next = state.lbIndex + delta;
  if (next < 0) return;
  if (next >= state.hits.length) {
    if (!state.done) loadPage();
    return;
  }
  openLightbox(next);
}

export function closeLightbox() {
  if (els.lb.open) els.lb.close();
}

/** Keys, swipes, buttons and resizing while the lightbox is open. */
export function initLightbox() {
  els.lb.addEventListener("close", () => {
    document.body.classList.remove("no-scroll");
    els.lbImg.removeAttribute("src");
    els.lbImg.style.width = "";
    els.lbImg.style.height = "";
    const hit = state.hits[state.lbIndex];
    state.lbIndex = -1;
    if (hit) {
      const link = cardFor(hit.id)?.querySelector("a.thumb");
      if (link) link.focus({ preventScroll: true });
    }
  });
  els.lb.addEventListener("keydown", (e) => {
    if (e.key === "ArrowLeft") { e.preventDefault(); stepLightbox(-1); }
    else if (e.key === "ArrowRight") { e.preventDefault(); stepLightbox(1); }
  });
  // The stage changes size with the window and with the panel below (its lines wrap).
  if ("ResizeObserver" in window) new ResizeObserver(() => { if (els.lb.open) fitLightbox(); }).observe(els.lbStage);
  window.addEventListener("resize", () => { if (els.lb.open) fitLightbox(); });
  // Swipe left or right on the photo: the next or the previous one.
  let touchStart = null;
  els.lbStage.addEventListener("touchstart", (e) => {
    const t = e.changedTouches[0];
    touchStart = e.touches.length === 1 ? { x: t.clientX, y: t.clientY } : null;
  }, { passive: true });
  els.lbStage.addEventListener("touchend", (e) => {
    if (!touchStart) return;
    const t = e.changedTouches[0];
    const dx = t.clientX - touchStart.x;
    const dy = t.clientY - touchStart.y;
    touchStart = null;
    if (Math.abs(dx) > 50 && Math.abs(dx) > 1.5 * Math.abs(dy)) stepLightbox(dx < 0 ? 1 : -1);
  }, { passive: true });
  els.lb.addEventListener("click", (e) => {
    if (e.target === els.lb || e.target.classList.contains("lb-stage")) closeLightbox();
  });
  els.lbPrev.addEventListener("click", () => stepLightbox(-1));
  els.lbNext.addEventListener("click", () => stepLightbox(1));
  els.lbClose.addEventListener("click", closeLightbox);
  els.lbSimilar.addEventListener("click", () => {
    const hit = state.hits[state.lbIndex];
    closeLightbox();
    if (hit) moreLikeThis(hit.id);
  });
}
