// Asking: the query box (search as you type, -word exclusions, "/" to focus), a photo as the
// query (picker, drop, paste, a result dragged onto the page), "more like this", and "Show the
// closest photos anyway" after the cut-off hid every photo.
import { hitName } from "./api.js";
import { setStatus } from "./chrome.js";
import { els } from "./dom.js";
import { findHit } from "./grid.js";
import { clearQuery, releasePreview, runQuery } from "./query.js";
import { MIN_TYPE_CHARS, TYPE_DEBOUNCE_MS, state } from "./state.js";
import { debounce, isImageFile, parseText } from "./util.js";

export function submitText({ force = false, history: historyMode = "replace" } = {}) {
  const raw = els.q.value.trim();
  if (!raw) {
    if (state.query && state.query.kind !== "text") {
      if (force) runQuery(state.query, { history: historyMode });
      return;
    }
    clearQuery();
    return;
  }
  const { text, negative } = parseText(raw);
  if (!text) {
    setStatus("Add something to look for besides the excluded words.", "error");
    return;
  }
  runQuery({ kind: "text", raw, text, negative }, { force, history: historyMode });
}

const typeSearch = debounce(() => {
  const raw = els.q.value.trim();
  if (raw.length < MIN_TYPE_CHARS) return;
  submitText({ force: false });
}, TYPE_DEBOUNCE_MS);

/** Photos like the indexed photo `id`. */
export function moreLikeThis(id, { history: historyMode = "push" } = {}) {
  const found = findHit(id);
  const name = found ? hitName(found.hit) : (state.query && state.query.kind === "similar" && String(state.query.id) === String(id) ? state.query.name : "");
  els.q.value = "";
  typeSearch.cancel();
  runQuery({ kind: "similar", id, name }, { history: historyMode });
}

function searchWithFile(file) {
  if (!isImageFile(file)) {
    setStatus(`“${file && file.name ? file.name : "That file"}” is not an image.`, "error");
    return;
  }
  releasePreview();
  const preview = URL.createObjectURL(file);
  els.q.value = "";
  typeSearch.cancel();
  runQuery({ kind: "upload", file, name: file.name || "pasted image", preview }, { history: "push" });
  state.previewUrl = preview;
}

/** Wire the query box, the photo picker, dropping and pasting. */
export function initSearch() {
  els.form.addEventListener("submit", (e) => {
    e.preventDefault();
    typeSearch.cancel();
    submitText({ force: true, history: "push" });
  });

  els.q.addEventListener("input", () => {
    const raw = els.q.value.trim();
    if (!raw) {
      typeSearch.cancel();
      if (!state.query || state.query.kind === "text") clearQuery();
      return;
    }
    typeSearch();
  });

  els.q.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && els.q.value) {
      e.preventDefault();
      els.q.value = "";
      els.q.dispatchEvent(new Event("input"));
    }
  });

  els.clearQuery.addEventListener("click", () => {
    const raw = els.q.value.trim();
    if (raw) submitText({ force: true });
    else clearQuery();
    els.q.focus();
  });

  // "/" focuses the search box from anywhere
  document.addEventListener("keydown", (e) => {
    if (e.key !== "/" || e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.target;
    if (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName))) return;
    if (document.querySelector("dialog[open]")) return;
    e.preventDefault();
    els.q.focus();
    els.q.select();
  });
  els.showClosest.addEventListener("click", () => {
    if (state.query) runQuery({ ...state.query, closest: true }, { history: "replace" });
  });

  els.file.addEventListener("change", () => {
    const file = els.file.files && els.file.files[0];
    if (file) searchWithFile(file);
    els.file.value = ""; // allow picking the same file again
  });

  let dragDepth = 0;
  const draggingSomething = (e) => {
    const types = e.dataTransfer ? Array.from(e.dataTransfer.types || []) : [];
    return types.includes("Files") || types.includes("application/x-pixsearch-id");
  };
  const showDrop = (show) => {
    els.drop.hidden = !show;
    document.body.classList.toggle("dragging", show);
  };
  window.addEventListener("dragenter", (e) => {
    if (!draggingSomething(e)) return;
    e.preventDefault();
    dragDepth += 1;
    showDrop(true);
  });
  window.addEventListener("dragover", (e) => {
    if (!draggingSomething(e)) return;
    e.preventDefault();
    if (e.dataTransfer) e.dataTransfer.dropEffect = "copy";
  });
  window.addEventListener("dragleave", (e) => {
    if (!draggingSomething(e)) return;
    dragDepth = Math.max(0, dragDepth - 1);
    if (dragDepth === 0) showDrop(false);
  });
  window.addEventListener("drop", (e) => {
    dragDepth = 0;
    showDrop(false);
    if (!e.dataTransfer) return;
    const id = e.dataTransfer.getData("application/x-pixsearch-id");
    const files = Array.from(e.dataTransfer.files || []);
    if (!id && !files.length) return;
    e.preventDefault();
    if (files.length) searchWithFile(files.find(isImageFile) || files[0]);
    else moreLikeThis(id);
  });
  window.addEventListener("dragend", () => { dragDepth = 0; showDrop(false); });

  document.addEventListener("paste", (e) => {
    const files = Array.from((e.clipboardData && e.clipboardData.files) || []).filter(isImageFile);
    if (!files.length) return;
    e.preventDefault();
    searchWithFile(files[0]);
  });
}
