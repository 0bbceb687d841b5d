// The viewer: images rendered by the server at the viewport's size and window; the browser scrolls,
// zooms and pans them. While a window drag is in progress the current image is re-mapped locally (an
// exact linear SVG filter) and the server's render replaces it as soon as it arrives.
import { api, dicomDate, el, personName, startSession, touched } from "/assets/common.js";

const PRESETS = { brain: [40, 80], lung: [-600, 1500], bone: [400, 1800], abdomen: [60, 400], "soft-tissue": [50, 350] };
const PRESET_KEYS = ["brain", "lung", "bone", "abdomen", "soft-tissue"];
const PREFETCH = 6; // slices each side
const SIZE_STEP = 128;
const studyId = location.pathname.split("/")[2];
const $ = (id) => document.getElementById(id);
const image = $("image");
const viewport = $("viewport");

const state = {
  study: null, series: 0, slice: 0, center: 0, width: 1, defaultWindow: null, zoom: 1, panX: 0, panY: 0,
  tool: matchMedia("(pointer: coarse)").matches ? "scroll" : "window", lossless: false, shown: "", firstPainted: false,
};
const loaded = new Map(); // url -> Image (decoded), bounded
let wanted = "";
const failures = new Map(); // src -> failed attempts

function frames() { return state.study ? state.study.series[state.series].frames : []; }

function renderSize() {
  const rect = viewport.getBoundingClientRect();
  const px = Math.max(rect.width, rect.height) * (window.devicePixelRatio || 1);
  return Math.min(2048, Math.max(SIZE_STEP, Math.ceil(px / SIZE_STEP) * SIZE_STEP));
}

function url(index) {
  const [instance, frame] = frames()[index];
  const query = new URLSearchParams({ wc: String(Math.round(state.center * 100) / 100),
    ww: String(Math.round(state.width * 100) / 100), size: String(renderSize()), format: state.lossless ? "png" : "jpeg" });
  return `/securepacs/api/viewer/instances/${instance}/frames/${frame}/rendered?${query}`;
}

function fetchImage(src) {
  if (loaded.has(src)) return loaded.get(src);
  const img = new Image();
  img.src = src;
  const promise = img.decode().then(() => img);
  loaded.set(src, promise);
  if (loaded.size > 400) loaded.delete(loaded.keys().next().value);
  promise.catch(() => loaded.delete(src));
  return promise;
}

// Prefetch: the slices ahead in the direction of travel first, a few behind; at most MAX_IN_FLIGHT at a
// time so the slice asked for next is never queued behind far-away ones on a slow link.
const MAX_IN_FLIGHT = 4;
let inFlight = 0;
let direction = 1;

function pump() {
  const n = frames().length;
  const order = [];
  for (let d = 1; d <= PREFETCH; d++) order.push(state.slice + direction * d);
  for (let d = 1; d <= 2; d++) order.push(state.slice - direction * d);
  for (const i of order) {
    if (inFlight >= MAX_IN_FLIGHT) return;
    if (i < 0 || i >= n) continue;
    const src = url(i);
    if (loaded.has(src)) continue;
    inFlight++;
    fetchImage(src).then((img) => paintIfCloser(i, img), () => {}).finally(() => { inFlight--; pump(); });
  }
}

function paint(index, img) {
  touched();
  image.src = img.src;
  image.dataset.window = `${state.center},${state.width}`;
  image.dataset.src = img.src.slice(location.origin.length);
  image.style.filter = "";
  viewport.dataset.shown = image.dataset.src;
  viewport.dataset.painted = String(index);
  if (!state.firstPainted) {
    state.firstPainted = true;
    performance.mark("securepacs-first-image");
    document.body.dataset.firstImage = String(performance.now());
  }
}

function paintIfCloser(index, img) {
  // While scrolling faster than the link delivers, show each slice that arrives on the way to the one
  // asked for instead of freezing until that one is there.
  // Before the first paint nothing is shown: wait for the slice asked for, so the first image and the
  // slice number beside it always agree.
  const painted = Number(viewport.dataset.painted ?? -1);
  if (painted < 0) return;
  const sameWindow = img.src.endsWith(url(index).slice(url(index).indexOf("?")));
  if (sameWindow && wanted !== img.src && Math.abs(state.slice - index) < Math.abs(state.slice - painted)) {
    paint(index, img);
  }
}

async function show() {
  if (!frames().length) return;
  overlays();
  const index = state.slice;
  const src = url(index);
  wanted = location.origin + src;
  pump();
  try {
    const img = await fetchImage(src);
    if (wanted !== img.src) { paintIfCloser(index, img); return; } // a newer request superseded this one
    paint(index, img);
  } catch {
    // A dropped request on a mobile link: try again twice, then say so.
    const tries = (failures.get(src) || 0) + 1;
    failures.set(src, tries);
    if (tries <= 2) { setTimeout(() => { if (wanted === location.origin + src) show(); }, 400 * tries); return; }
    $("ov-slice").textContent = "Image could not be loaded";
  }
  pump();
}

function goTo(index) {
  const n = frames().length;
  const next = Math.max(0, Math.min(n - 1, index));
  if (next !== state.slice) { direction = next > state.slice ? 1 : -1; state.slice = next; show(); }
}

function applyTransform() {
  image.style.transform = `translate(calc(-50% + ${state.panX}px), calc(-50% + ${state.panY}px)) scale(${state.zoom})`;
  viewport.dataset.zoom = String(state.zoom);
}

function previewWindow(center, width) {
  // The shown image was rendered with window (c0, w0): display d = (x - lo0) / w0, so the new window's
  // display is d * w0/w + (lo0 - lo) / w — exact inside the old window, clipped outside it.
  const [c0, w0] = (image.dataset.window || `${center},${width}`).split(",").map(Number);
  const slope = w0 / width;
  const intercept = ((c0 - w0 / 2) - (center - width / 2)) / width;
  for (const id of ["wl-r", "wl-g", "wl-b"]) {
    $(id).setAttribute("slope", String(slope));
    $(id).setAttribute("intercept", String(intercept));
  }
  image.style.filter = "url(#wl-preview)";
}

function overlays() {
  const n = frames().length;
  const series = state.study.series[state.series];
  $("ov-slice").textContent = `Slice ${state.slice + 1} / ${n} · ${series.modality} ${series.number}`;
  const lossy = series.lossy_source ? " · lossy source" : (state.lossless ? "" : " · lossy preview");
  $("ov-window").textContent = `W ${Math.round(state.width)} L ${Math.round(state.center)} · ${Math.round(state.zoom * 100)}%`;
  $("ov-window").classList.toggle("lossy", Boolean(lossy));
  $("ov-window").dataset.lossy = lossy ? "1" : "0";
  if (lossy) $("ov-window").append(el("span", { text: lossy }));
  $("slice").value = String(state.slice + 1);
  viewport.dataset.slice = String(state.slice);
  viewport.dataset.wc = String(state.center);
  viewport.dataset.ww = String(state.width);
}

function setWindow(center, width, render = true) {
  state.center = center;
  state.width = Math.max(1, width);
  overlays();
  if (render) show(); else previewWindow(state.center, state.width);
}

function preset(name) {
  $("preset").value = name;
  const series = state.study.series[state.series];
  if (PRESETS[name]) setWindow(...PRESETS[name]);
  else if (name === "auto" || !series.window) autoWindow();
  else setWindow(series.window.center, series.window.width);
}

async function autoWindow() {
  // "Auto" asks the server for the instance's own window (tags, or percentiles of the data).
  const [instance, frame] = frames()[state.slice];
  const response = await api(`/securepacs/api/viewer/instances/${instance}/frames/${frame}/rendered?size=16&format=png`);
  const [center, width] = (response.headers.get("X-Window") || "0,1").split(",").map(Number);
  setWindow(center, width);
}

function setTool(tool) {
  state.tool = tool;
  for (const name of ["scroll", "window", "pan"]) $(`tool-${name}`).setAttribute("aria-pressed", String(name === tool));
}

function zoomBy(factor) {
  state.zoom = Math.max(0.25, Math.min(16, state.zoom * factor));
  applyTransform(); overlays();
}

function reset() {
  state.zoom = 1; state.panX = 0; state.panY = 0;
  applyTransform();
  preset("");
}

function selectSeries(index) {
  state.series = index;
  state.slice = Math.floor(frames().length / 2);
  $("slice").max = String(Math.max(1, frames().length));
  $("series").value = String(index);
  const series = state.study.series[index];
  state.defaultWindow = series.window;
  preset($("preset").value && series.modality === "CT" ? $("preset").value : "");
}

// -- pointer input: one pointer drags with the current tool; two pointers pinch-zoom and pan ---------------
const pointers = new Map();
let drag = null;

function onPointerDown(event) {
  viewport.setPointerCapture(event.pointerId);
  pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
  drag = { x: event.clientX, y: event.clientY, center: state.center, width: state.width, slice: state.slice,
    panX: state.panX, panY: state.panY, zoom: state.zoom, distance: pinchDistance(), mid: midpoint() };
}

function pinchDistance() {
  const p = [...pointers.values()];
  return p.length >= 2 ? Math.hypot(p[0].x - p[1].x, p[0].y - p[1].y) : 0;
}

function midpoint() {
  const p = [...pointers.values()];
  return p.length >= 2 ? { x: (p[0].x + p[1].x) / 2, y: (p[0].y + p[1].y) / 2 } : null;
}

function onPointerMove(event) {
  if (!pointers.has(event.pointerId) || !drag) return;
  pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
  if (pointers.size >= 2) {
    const distance = pinchDistance(); const mid = midpoint();
    if (drag.distance && mid && drag.mid) {
      state.zoom = Math.max(0.25, Math.min(16, drag.zoom * distance / drag.distance));
      state.panX = drag.panX + mid.x - drag.mid.x; state.panY = drag.panY + mid.y - drag.mid.y;
      applyTransform(); overlays();
    }
    return;
  }
  const dx = event.clientX - drag.x; const dy = event.clientY - drag.y;
  if (state.tool === "window") {
    // Right: wider window; down: higher level (the usual radiology convention). 2 units per pixel scaled.
    const scale = Math.max(1, drag.width / 256);
    drag.moved = true;
    setWindow(drag.center + dy * scale, drag.width + dx * scale * 2, false);
    clearTimeout(drag.timer);
    drag.timer = setTimeout(show, 250);
  } else if (state.tool === "pan") {
    state.panX = drag.panX + dx; state.panY = drag.panY + dy; applyTransform();
  } else {
    const step = Math.max(4, viewport.clientHeight / Math.max(20, frames().length));
    goTo(drag.slice + Math.round(-dy / step));
  }
}

function onPointerUp(event) {
  pointers.delete(event.pointerId);
  if (drag && drag.moved && pointers.size === 0) { clearTimeout(drag.timer); show(); }
  if (pointers.size === 0) drag = null;
  else drag = { ...drag, distance: pinchDistance(), mid: midpoint(), zoom: state.zoom, panX: state.panX, panY: state.panY };
}

function onWheel(event) {
  event.preventDefault();
  if (event.ctrlKey) { zoomBy(event.deltaY < 0 ? 1.1 : 1 / 1.1); return; }
  goTo(state.slice + (event.deltaY > 0 ? 1 : -1));
}

function onKey(event) {
  if (event.target instanceof HTMLSelectElement || event.target instanceof HTMLInputElement) return;
  if (document.querySelector("dialog[open]")) return;
  const keys = {
    ArrowDown: () => goTo(state.slice + 1), ArrowRight: () => goTo(state.slice + 1),
    ArrowUp: () => goTo(state.slice - 1), ArrowLeft: () => goTo(state.slice - 1),
    PageDown: () => goTo(state.slice + 10), PageUp: () => goTo(state.slice - 10),
    Home: () => goTo(0), End: () => goTo(frames().length - 1),
    "+": () => zoomBy(1.25), "=": () => zoomBy(1.25), "-": () => zoomBy(0.8),
    r: reset, s: () => setTool("scroll"), w: () => setTool("window"), p: () => setTool("pan"),
    l: toggleLossless, i: showMeta, "?": () => $("help").showModal(), 0: () => preset(""),
  };
  const index = "12345".indexOf(event.key);
  const action = index >= 0 ? () => preset(PRESET_KEYS[index]) : keys[event.key];
  if (action) { event.preventDefault(); action(); }
}

function toggleLossless() {
  state.lossless = !state.lossless;
  $("lossless").setAttribute("aria-pressed", String(state.lossless));
  show();
}

async function showMeta() {
  const [instance] = frames()[state.slice];
  const response = await api(`/securepacs/api/viewer/instances/${instance}/metadata`);
  const rows = response.ok ? await response.json() : [];
  $("meta-list").replaceChildren(...rows.flatMap((row) => [el("dt", { text: row.name }), el("dd", { text: row.value })]));
  $("meta").showModal();
}

function header() {
  const { patient, study } = state.study;
  $("ov-patient").textContent = `${personName(patient.PatientName)} · ${patient.PatientID} · ${dicomDate(patient.PatientBirthDate)} ${patient.PatientSex}`;
  $("ov-study").textContent = `${study.StudyDescription || ""} · ${dicomDate(study.StudyDate)}`;
  $("series").replaceChildren(...state.study.series.map((s, i) =>
    el("option", { value: String(i), text: `${s.modality} ${s.number}: ${s.description || "series"} (${s.frames.length})` })));
}

async function start() {
  await startSession();
  const response = await api(`/securepacs/api/viewer/studies/${studyId}`);
  const study = await response.json();
  if (!response.ok) { $("ov-slice").textContent = study.error || `Error ${response.status}`; return; }
  state.study = study;
  header();
  const fromHash = Number(new URLSearchParams(location.hash.slice(1)).get("series"));
  const first = Number.isInteger(fromHash) && study.series[fromHash] ? fromHash
    : Math.max(0, study.series.findIndex((s) => s.frames.length > 0));
  selectSeries(first);
  applyTransform();
  setTool(state.tool);
}

viewport.addEventListener("pointerdown", onPointerDown);
viewport.addEventListener("pointermove", onPointerMove);
viewport.addEventListener("pointerup", onPointerUp);
viewport.addEventListener("pointercancel", onPointerUp);
viewport.addEventListener("wheel", onWheel, { passive: false });
document.addEventListener("keydown", onKey);
$("slice").addEventListener("input", (event) => goTo(Number(event.target.value) - 1));
$("series").addEventListener("change", (event) => selectSeries(Number(event.target.value)));
$("preset").addEventListener("change", (event) => preset(event.target.value));
for (const name of ["scroll", "window", "pan"]) $(`tool-${name}`).addEventListener("click", () => setTool(name));
$("zoom-in").addEventListener("click", () => zoomBy(1.25));
$("zoom-out").addEventListener("click", () => zoomBy(0.8));
$("reset").addEventListener("click", reset);
$("lossless").addEventListener("click", toggleLossless);
$("show-meta").addEventListener("click", showMeta);
$("show-help").addEventListener("click", () => $("help").showModal());
$("meta-close").addEventListener("click", () => $("meta").close());
$("help-close").addEventListener("click", () => $("help").close());
window.addEventListener("resize", () => show());
start();
