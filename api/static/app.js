// pixsearch web UI: plain ES2020 modules, no framework, no build step, no external resources.
// This entry wires the parts in js/ together and starts the page.
import { initKeyPrompt } from "./js/api.js";
import { initBrowse } from "./js/browse.js";
import { refreshReady } from "./js/chrome.js";
import { els } from "./js/dom.js";
import { initFilters, loadFacets } from "./js/filters.js";
import { initGrid, initMonthHeaders } from "./js/grid.js";
import { initLightbox } from "./js/lightbox.js";
import { initInfiniteScroll } from "./js/query.js";
import { initSearch } from "./js/search.js";
import { isBrowse, state } from "./js/state.js";
import { applyUrl, initUrl } from "./js/url.js";

initGrid();
initLightbox();
initKeyPrompt();
initSearch();
initFilters();
initBrowse();
initInfiniteScroll();
initUrl();
initMonthHeaders();

refreshReady();
loadFacets();
applyUrl();
if (isBrowse(state.query) && !window.matchMedia("(hover: none)").matches) els.q.focus();
