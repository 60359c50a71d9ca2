// Small helpers with no knowledge of the page: DOM building, timing, storage, formatting, parsing.

/** A new element: attrs "class" and "text" set className and textContent; false/null skip. */
export function el(tag, attrs = {}, ...children) {
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

/** One of the page's line icons (similar, download, open). */
export function svgIcon(name) {
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

export const debounce = (fn, ms) => {
  let timer = 0;
  const wrapped = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
};

/** localStorage that never throws (private mode etc.: the setting lives in memory only). */
export const store = {
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

export const fileName = (path) => (path ? String(path).split(/[\\/]/).pop() : "") || "";
export const dirName = (path) => {
  const p = String(path || "");
  const i = Math.max(p.lastIndexOf("/"), p.lastIndexOf("\\"));
  return i > 0 ? p.slice(0, i) : "";
};
export const fmtInt = (n) => (Number.isFinite(n) ? n.toLocaleString() : "?");
export const fmtScore = (s) => (typeof s === "number" && Number.isFinite(s) ? s.toFixed(3) : "–");

export function fmtDate(value) {
  if (!value) return "";
  const m = /^(\d{4})-(\d{2})-(\d{2})/.exec(String(value));
  if (!m) return String(value);
  const d = new Date(Number(m[1]), Number(m[2]) - 1, Number(m[3]));
  if (Number.isNaN(d.getTime())) return String(value);
  return d.toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });
}

export function fmtBytes(n) {
  if (!Number.isFinite(n)) return "";
  if (n < 1024) return `${n} B`;
  const units = ["KB", "MB", "GB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

export function fmtDateTime(value) {
  const m = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2})/.exec(String(value || ""));
  if (!m) return fmtDate(value);
  const d = new Date(Number(m[1]), Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]));
  return d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function monthLabel(month) {
  const m = /^(\d{4})-(\d{2})$/.exec(month || "");
  if (!m) return "No date";
  const d = new Date(Number(m[1]), Number(m[2]) - 1, 1);
  return d.toLocaleDateString(undefined, { year: "numeric", month: "long" });
}

export function isImageFile(file) {
  if (!file) return false;
  if (file.type && file.type.startsWith("image/")) return true;
  return /\.(jpe?g|png|gif|webp|bmp|tiff?|heic|heif|avif)$/i.test(file.name || "");
}

/** "beach -people -"red car"" → {text: "beach", negative: ["people", "red car"]} */
export function parseText(raw) {
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
