// pixsearch web UI: plain ES2020, no framework, no build step, no external resources.
"use strict";

(() => {
  const PAGE_SIZE = 40;            // results per request (backend max is 200)
  const BROWSE_PAGE_SIZE = 90;     // photos per request when browsing by date
  const TYPE_DEBOUNCE_MS = 350;    // search-as-you-type delay
  const FILTER_DEBOUNCE_MS = 450;  // re-run delay after editing a filter
  const MIN_TYPE_CHARS = 2;        // don't search-as-you-type for a single character
  const PRELOAD_MARGIN_PX = 1200;  // start loading the next page this far before the bottom
  const KEY_STORAGE = "pixsearch.apiKey";
  const CAPTIONS_STORAGE = "pixsearch.captions";
  const SCORES_STORAGE = "pixsearch.scores";
  const SIZE_STEPS = [256, 512, 1024, 2048, 3000, 4000, 6000];  // "at least N px on the short side"

  const $ = (id) => document.getElementById(id);
  const els = {
    count: $("image-count"),
    keyBtn: $("api-key-btn"),
    form: $("search-form"),
    q: $("q"),
    searchBtn: $("search-btn"),
    file: $("file-input"),
    chip: $("query-chip"),
    chipImg: $("query-image"),
    chipLabel: $("query-label"),
    clearQuery: $("clear-query"),
    after: $("taken-after"),
    before: $("taken-before"),
    folder: $("folder"),
    camera: $("camera"),
    format: $("format"),
    minSize: $("min-size"),
    scores: $("scores-toggle"),
    filtersBtn: $("filters-btn"),
    filtersCount: $("filters-count"),
    filters: $("filters"),
    sort: $("sort"),
    sortTool: $("sort-tool"),
    jump: $("jump"),
    jumpTool: $("jump-tool"),
    notice: $("undated-note"),
    newer: $("newer"),
    topbar: document.querySelector(".topbar"),
    lbStage: $("lb-stage"),
    lbDownload: $("lb-download"),
    folderOptions: $("folder-options"),
    captions: $("captions-toggle"),
    clearFilters: $("clear-filters"),
    status: $("status"),
    empty: $("empty-state"),
    emptyTitle: $("empty-title"),
    emptyText: $("empty-text"),
    showClosest: $("show-closest"),
    results: $("results"),
    sentinel: $("sentinel"),
    endNote: $("end-note"),
    drop: $("drop-overlay"),
    lb: $("lightbox"),
    lbImg: $("lb-img"),
    lbTitle: $("lb-title"),
    lbCaption: $("lb-caption"),
    lbMeta: $("lb-meta"),
    lbPrev: $("lb-prev"),
    lbNext: $("lb-next"),
    lbSimilar: $("lb-similar"),
    lbOpen: $("lb-open"),
    lbClose: $("lb-close"),
    keyDialog: $("key-dialog"),
    keyForm: $("key-form"),
    keyInput: $("api-key"),
    keyMessage: $("key-message"),
    keyCancel: $("key-cancel"),
  };

  // ---------------------------------------------------------------- storage

  const store = {
    get(name) {
      try { return localStorage.getItem(name); } catch { return null; }
    },
    set(name, value) {
      try {
        if (value === null || value === "") localStorage.removeItem(name);
        else localStorage.setItem(name, value);
      } catch { /* private mode etc.: keep it in memory only */ }
    },
  };

  let apiKey = store.get(KEY_STORAGE) || "";

  // ---------------------------------------------------------------- state

  const state = {
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

  // ---------------------------------------------------------------- helpers

  class ApiError extends Error {
    constructor(message, status = 0) {
      super(message);
      this.name = "ApiError";
      this.status = status;
    }
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  const debounce = (fn, ms) => {
    let timer = 0;
    const wrapped = (...args) => {
      clearTimeout(timer);
      timer = setTimeout(() => fn(...args), ms);
    };
    wrapped.cancel = () => clearTimeout(timer);
    return wrapped;
  };

  const fileName = (path) => (path ? String(path).split(/[\\/]/).pop() : "") || "";
  const dirName = (path) => {
    const p = String(path || "");
    const i = Math.max(p.lastIndexOf("/"), p.lastIndexOf("\\"));
    return i > 0 ? p.slice(0, i) : "";
  };
  const fmtInt = (n) => (Number.isFinite(n) ? n.toLocaleString() : "?");
  const fmtScore = (s) => (typeof s === "number" && Number.isFinite(s) ? s.toFixed(3) : "–");

  function fmtDate(value) {
    if (!value) return "";
    const m = /^(\d{4})-(\d{2})-(\d{2})/.exec(String(value));
    if (!m) return String(value);
    const d = new Date(Number(m[1]), Number(m[2]) - 1, Number(m[3]));
    if (Number.isNaN(d.getTime())) return String(value);
    return d.toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });
  }

  /** Add ?api_key=… to same-origin URLs, for <img>/<a> which cannot send headers. */
  function withKey(url) {
    if (!apiKey) return url;
    const u = new URL(url, location.href);
    if (u.origin !== location.origin) return url;
    u.searchParams.set("api_key", apiKey);
    return u.pathname + u.search + u.hash;
  }

  const thumbUrl = (hit) => withKey(hit.thumbnail_url || `/images/${hit.id}/thumbnail`);
  const originalUrl = (id) => withKey(`/images/${encodeURIComponent(id)}`);
  const hitName = (hit) => fileName(hit.path) || `Photo ${hit.id}`;
  const hitAlt = (hit) => (hit.caption ? String(hit.caption) : hitName(hit));

  function isImageFile(file) {
    if (!file) return false;
    if (file.type && file.type.startsWith("image/")) return true;
    return /\.(jpe?g|png|gif|webp|bmp|tiff?|heic|heif|avif)$/i.test(file.name || "");
  }

  /** "beach -people -"red car"" → {text: "beach", negative: ["people", "red car"]} */
  function parseText(raw) {
    const negative = [];
    const text = raw
      .replace(/(^|\s)-(?:"([^"]+)"|([^\s"]+))/g, (_, lead, quoted, word) => {
        negative.push((quoted || word).trim());
        return lead;
      })
      .replace(/\s+/g, " ")
      .trim();
    return { text, negative: negative.filter(Boolean) };
  }

  // ---------------------------------------------------------------- network

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
  async function api(path, options = {}) {
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

  function currentFilters() {
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

  const filterInputs = () => [els.after, els.before, els.folder, els.camera, els.format, els.minSize];
  const activeFilterCount = () => filterInputs().filter((i) => i.value.trim()).length;
  const hasFilters = () => activeFilterCount() > 0;
  const isBrowse = (q) => Boolean(q && q.kind === "browse");
  const searchSort = () => (state.sort !== "relevance" ? state.sort : null);

  function fetchPage(query, offset, signal) {
    const captions = els.captions.checked;
    const filters = currentFilters();
    const sort = searchSort();

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
      return api("/search", {
        method: "POST",
        signal,
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({
          text: query.text,
          image_id: null,
          weights: null,
          negative: query.negative,
          k: PAGE_SIZE,
          offset,
          filters,
          captions,
          cutoff: !query.closest,
          ...(sort ? { sort } : {}),
        }),
      });
    }

    if (query.kind === "similar") {
      if (hasFilters()) {
        // /images/{id}/similar has no filters; the general endpoint does.
        return api("/search", {
          method: "POST",
          signal,
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({
            text: null,
            image_id: query.id,
            weights: null,
            negative: [],
            k: PAGE_SIZE,
            offset,
            filters,
            captions,
            cutoff: !query.closest,
            ...(sort ? { sort } : {}),
          }),
        });
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

  // ---------------------------------------------------------------- status & chrome

  function setStatus(text, kind = "") {
    els.status.textContent = text;
    els.status.className = "status" + (kind ? ` ${kind}` : "");
    els.status.title = text;
  }

  function setBusy(busy) {
    document.body.classList.toggle("busy", busy);
    els.results.setAttribute("aria-busy", busy ? "true" : "false");
  }

  function showEmpty(kind) {
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

  function updateFilterChrome() {
    const n = activeFilterCount();
    els.clearFilters.hidden = n === 0;
    els.filtersCount.hidden = n === 0;
    els.filtersCount.textContent = n ? String(n) : "";
    const grouped = isBrowse(state.query) || Boolean(searchSort());
    document.body.classList.toggle("grouped", grouped);
    // One menu: best match / newest / oldest for a search; newest / oldest for the collection.
    const browsing = isBrowse(state.query);
    els.sortTool.hidden = !state.query;
    els.sort.options[0].hidden = browsing;
    els.sort.options[0].disabled = browsing;
    els.sort.value = browsing ? state.browseSort : state.sort;
    els.jumpTool.hidden = !isBrowse(state.query) || state.months.length < 2;
  }

  function updateChip() {
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

  function resetPlaceholder() {
    els.q.placeholder = "Describe a photo… e.g. “dog on a beach at sunset”";
  }

  // ---------------------------------------------------------------- ready / header

  let readyTimer = 0;
  async function refreshReady() {
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

  // ---------------------------------------------------------------- running queries

  function describeQuery(q) {
    if (!q) return "";
    if (q.kind === "browse") return "All photos";
    if (q.kind === "text") return q.raw;
    if (q.kind === "upload") return q.name || "your photo";
    return q.name || `photo #${q.id}`;
  }

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

  function runQuery(query, { history: historyMode = "replace", force = true, start = 0 } = {}) {
    if (!validateFilters()) {
      // keep the query so that fixing the dates re-runs it, but don't send it
      state.gen += 1;
      if (state.controller) state.controller.abort();
      state.controller = null;
      if (state.query && state.query.kind === "upload" && query.kind !== "upload") releasePreview();
      state.query = query;
      state.hits = [];
      state.ids = new Set();
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

    state.gen += 1;
    if (state.controller) state.controller.abort();
    state.controller = null;
    if (state.query && state.query.kind === "upload" && query.kind !== "upload") releasePreview();
    state.query = query;
    state.hits = [];
    state.ids = new Set();
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

  function clearQuery({ history: historyMode = "replace" } = {}) {
    releasePreview();
    resetPlaceholder();
    state.sort = "relevance";
    runQuery({ kind: "browse" }, { history: historyMode, force: false });
    document.title = "pixsearch";
  }

  function releasePreview() {
    if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
    state.previewUrl = null;
  }

  function showSkeleton() {
    const frag = document.createDocumentFragment();
    for (let i = 0; i < 12; i++) frag.append(el("div", { class: "skeleton", "aria-hidden": "true" }));
    els.results.replaceChildren(el("div", { class: "grid" }, frag));
    showEmpty(null);
  }

  async function loadPage() {
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
        state.fresh = false;
        els.results.replaceChildren();
        els.results.classList.remove("stale");
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
        state.fresh = false;
        els.results.replaceChildren();
        els.results.classList.remove("stale");
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

  function maybeLoadMore() {
    if (!state.query || state.done || state.loading || state.errored) return;
    const rect = els.sentinel.getBoundingClientRect();
    if (rect.top < window.innerHeight + PRELOAD_MARGIN_PX) loadPage();
  }

  // ---------------------------------------------------------------- result cards

  const monthOf = (hit) => {
    if (hit.month) return String(hit.month);
    const m = /^(\d{4})-(\d{2})/.exec(String(hit.date || hit.taken_at || ""));
    return m ? `${m[1]}-${m[2]}` : "";
  };

  function monthLabel(month) {
    const m = /^(\d{4})-(\d{2})$/.exec(month || "");
    if (!m) return "No date";
    const d = new Date(Number(m[1]), Number(m[2]) - 1, 1);
    return d.toLocaleDateString(undefined, { year: "numeric", month: "long" });
  }

  /** The grid the next card goes into: one per month when the view is by date. */
  function gridFor(hit, frag) {
    const byDate = isBrowse(state.query) || Boolean(searchSort());
    const month = byDate ? monthOf(hit) : "*";
    if (state.group && state.group.month === month) return state.group.grid;
    const grid = el("div", { class: "grid", role: "list", "aria-label": byDate ? monthLabel(month) : "Search results" });
    if (byDate) {
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

  function appendHits(results) {
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

  function fillJumper() {
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

  function svgIcon(name) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    const paths = {
      similar: ["M4 4h7v7H4z", "M13 13h7v7h-7z", "M15.5 4.5a4 4 0 0 1 4 4", "M8.5 19.5a4 4 0 0 1-4-4"],
      download: ["M12 4v11", "m7 10.5 5 5 5-5", "M5 20h14"],
      open: ["M14 4h6v6", "M20 4l-9 9", "M18 14v5a1 1 0 0 1-1 1H5a1 1 0 0 1-1-1V7a1 1 0 0 1 1-1h5"],
    }[name] || [];
    for (const d of paths) {
      const p = document.createElementNS(ns, "path");
      p.setAttribute("d", d);
      svg.append(p);
    }
    return svg;
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

  function findHit(id) {
    const i = state.hits.findIndex((h) => String(h.id) === String(id));
    return i >= 0 ? { hit: state.hits[i], index: i } : null;
  }

  function moreLikeThis(id, { history: historyMode = "push" } = {}) {
    const found = findHit(id);
    const name = found ? hitName(found.hit) : (state.query && state.query.kind === "similar" && String(state.query.id) === String(id) ? state.query.name : "");
    els.q.value = "";
    typeSearch.cancel();
    runQuery({ kind: "similar", id, name }, { history: historyMode });
  }

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

  // ---------------------------------------------------------------- lightbox

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

  function fmtBytes(n) {
    if (!Number.isFinite(n)) return "";
    if (n < 1024) return `${n} B`;
    const units = ["KB", "MB", "GB"];
    let v = n / 1024;
    let i = 0;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
    return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
  }

  function fmtDateTime(value) {
    const m = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})/.exec(String(value || ""));
    if (!m) return fmtDate(value);
    const d = new Date(Number(m[1]), Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]));
    return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
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

  function openLightbox(index) {
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
    const card = els.results.querySelector(`.hit[data-id="${CSS.escape(String(hit.id))}"]`);
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

  function closeLightbox() {
    if (els.lb.open) els.lb.close();
  }

  els.lb.addEventListener("close", () => {
    document.body.classList.remove("no-scroll");
    els.lbImg.removeAttribute("src");
    els.lbImg.style.width = "";
    els.lbImg.style.height = "";
    const hit = state.hits[state.lbIndex];
    state.lbIndex = -1;
    if (hit) {
      const link = els.results.querySelector(`.hit[data-id="${CSS.escape(String(hit.id))}"] a.thumb`);
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

  // ---------------------------------------------------------------- text input

  function submitText({ force = false, history: historyMode = "replace" } = {}) {
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

  // ---------------------------------------------------------------- filters

  const rerunForFilters = debounce(() => {
    updateFilterChrome();
    if (state.query) runQuery(state.query, { force: false });
  }, FILTER_DEBOUNCE_MS);

  for (const select of [els.camera, els.format, els.minSize]) {
    select.addEventListener("change", () => { updateFilterChrome(); if (state.query) runQuery(state.query, { force: false }); });
  }
  for (const input of [els.after, els.before, els.folder]) {
    input.addEventListener("input", () => { updateFilterChrome(); rerunForFilters(); });
    input.addEventListener("change", () => { rerunForFilters.cancel(); updateFilterChrome(); if (state.query) runQuery(state.query, { force: false }); });
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
  els.showClosest.addEventListener("click", () => {
    if (state.query) runQuery({ ...state.query, closest: true }, { history: "replace" });
  });

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

  els.sort.addEventListener("change", () => {
    if (!state.query) return;
    if (isBrowse(state.query)) {
      state.browseSort = els.sort.value === "date" ? "date" : "-date";
      runQuery(state.query, { force: false });
    } else {
      state.sort = els.sort.value;
      runQuery(state.query, { force: false });
    }
  });
  els.jump.addEventListener("change", () => {
    const month = els.jump.value;
    els.jump.value = "";
    if (month) jumpTo(month);
  });
  els.newer.addEventListener("click", () => runQuery({ kind: "browse" }, { force: true }));

  /** The filter values that exist in the collection, offered in the selects. */
  async function loadFacets() {
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

  function ensureOption(select, value, label) {
    if (!value) return;
    if (![...select.options].some((o) => o.value === value)) select.append(el("option", { value, text: label }));
    select.value = value;
  }

  els.captions.addEventListener("change", () => {
    store.set(CAPTIONS_STORAGE, els.captions.checked ? "true" : "false");
    if (state.query) runQuery(state.query, { force: false });
  });
  els.clearFilters.addEventListener("click", () => {
    for (const input of filterInputs()) input.value = "";
    updateFilterChrome();
    rerunForFilters.cancel();
    if (state.query) runQuery(state.query, { force: false });
  });

  // ---------------------------------------------------------------- image query: picker, drop, paste

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

  // ---------------------------------------------------------------- infinite scroll

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

  // ---------------------------------------------------------------- URL state (shareable, back button)

  function syncUrl(mode) {
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

  function applyUrl() {
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

  window.addEventListener("popstate", () => {
    closeLightbox();
    applyUrl();
  });

  // ---------------------------------------------------------------- start

  // Month headers stick under the top bar where it sticks (not on a phone, where it scrolls).
  const placeHeaders = () => {
    const sticky = getComputedStyle(els.topbar).position === "sticky";
    document.documentElement.style.setProperty("--sticky-top", sticky ? `${els.topbar.offsetHeight}px` : "0px");
  };
  if ("ResizeObserver" in window) new ResizeObserver(placeHeaders).observe(els.topbar);
  window.addEventListener("resize", placeHeaders);
  placeHeaders();

  refreshReady();
  loadFacets();
  applyUrl();
  if (isBrowse(state.query) && !window.matchMedia("(hover: none)").matches) els.q.focus();
})();
