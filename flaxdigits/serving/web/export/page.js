// The exported page: the pad, uploads and the reading's display, with the number read in
// the browser (reading.js, onnxruntime-web) instead of by flaxdigits' server. The pad
// behaves as the served page's (flaxdigits/serving/web/index.html).
import * as ort from "./ort.wasm.bundle.min.mjs";
import { BadInput, MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE, grayFromRGBA, loadReader } from "./reading.js";

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d", { willReadFrequently: true });
const overlay = document.getElementById("boxes").getContext("2d");
const numberLine = document.getElementById("number");
const digitsLine = document.getElementById("digits");
const statusLine = document.getElementById("status");
const PEN = 16;

// Single-threaded: threads need a cross-origin isolated page, which a plain static host
// (python -m http.server) does not serve.
ort.env.wasm.numThreads = 1;
const started = performance.now();
// Loaded, then read once on a number written here: the first reading compiles the models'
// kernels and reading.js's code, several times slower than the next ones, so it is done
// before the page says it is ready, not on the user's first stroke.
// One more runner of the classifier per spare core (classify-worker.js), at most 3.
function helper() {
  const worker = new Worker("classify-worker.js", { type: "module" });
  const waiting = new Map();
  let next = 0;
  worker.onmessage = ({ data }) => {
    const { resolve, reject } = waiting.get(data.id);
    waiting.delete(data.id);
    if (data.error) reject(new Error(data.error)); else resolve(data.probabilities);
  };
  const ask = (message, transfer = []) => new Promise((resolve, reject) => {
    const id = next++;
    waiting.set(id, { resolve, reject });
    worker.postMessage({ id, ...message }, transfer);
  });
  const loaded = ask({ url: new URL("model.onnx", location.href).href });
  return loaded.then(() => ({ run: (images, count) => ask({ images, count }, [images.buffer]) }));
}
const spare = Math.min(3, (navigator.hardwareConcurrency || 1) - 1);
const helpers = Promise.all(Array.from({ length: spare }, helper)).catch(() => []);
const reader = helpers.then(h => loadReader(ort, ".", h)).then(async r => {
  const canvas = new OffscreenCanvas(420, 160);
  const c = canvas.getContext("2d", { willReadFrequently: true });
  c.fillStyle = "#fff"; c.fillRect(0, 0, 420, 160);
  c.fillStyle = "#000"; c.font = "bold 120px sans-serif"; c.fillText("2026", 20, 130);
  const gray = grayFromRGBA(c.getImageData(0, 0, 420, 160).data, 160, 420);
  for (let k = 0; k < 3; k++) {
    try { await r.read(gray); } catch (e) { /* no font here: the warm-up is skipped */ }
  }
  return r;
});
// What scripts and tests use: the reader, and the time of the last reading.
window.flaxdigits = { reader, started, lastMs: null, readGray: async gray => (await reader).read(gray) };

let strokes = [];
let uploaded = null;  // {gray, image, scale, left, top}: an upload is read at its own size

function repaint() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  if (uploaded) ctx.drawImage(uploaded.image, uploaded.left, uploaded.top,
                              uploaded.image.width * uploaded.scale, uploaded.image.height * uploaded.scale);
  ctx.strokeStyle = ctx.fillStyle = "#000";
  ctx.lineWidth = PEN; ctx.lineCap = "round"; ctx.lineJoin = "round";
  for (const stroke of strokes) {
    ctx.beginPath(); ctx.arc(stroke[0].x, stroke[0].y, PEN / 2, 0, 2 * Math.PI); ctx.fill();
    ctx.beginPath(); ctx.moveTo(stroke[0].x, stroke[0].y);
    for (const p of stroke.slice(1)) ctx.lineTo(p.x, p.y);
    ctx.stroke();
  }
}

function showNothing(message) {
  overlay.clearRect(0, 0, pad.width, pad.height);
  numberLine.textContent = "?";
  numberLine.dataset.number = "";
  digitsLine.textContent = "";
  statusLine.textContent = message || "";
}

function show(result, toPad) {
  numberLine.textContent = result.number;
  numberLine.dataset.number = result.number;
  digitsLine.textContent = "";
  overlay.clearRect(0, 0, pad.width, pad.height);
  overlay.lineWidth = 2; overlay.font = "bold 16px system-ui, sans-serif";
  for (const d of result.digits) {
    const [x0, y0, x1, y1] = toPad(d.box);
    overlay.strokeStyle = overlay.fillStyle = d.probability > 0.8 ? "#1b9e4b" : "#d07a00";
    overlay.strokeRect(x0, y0, x1 - x0, y1 - y0);
    overlay.fillText(`${d.label} ${(100 * d.probability).toFixed(0)}%`, x0, Math.max(14, y0 - 4));
    const span = document.createElement("span");
    span.innerHTML = `<b>${d.label}</b> ${(100 * d.probability).toFixed(1)}%`;
    digitsLine.append(span);
  }
  numberLine.dataset.boxes = JSON.stringify(result.digits.map(d => d.box));
  statusLine.textContent = "";
}

// data-settled is "yes" once #number shows the reading of the pad as it is now.
let busy = false, again = false, version = 0;
function changed() { version += 1; numberLine.dataset.settled = "no"; }

async function readNow() {
  if (busy) { again = true; return; }
  busy = true;
  const sent = version;
  try {
    const r = await reader;
    if (!strokes.length && !uploaded) { showNothing(); return; }
    const begun = performance.now();
    let result, toPad = box => box;
    if (uploaded) {
      const u = uploaded;
      result = await r.read(u.gray);
      toPad = ([x0, y0, x1, y1]) => [u.left + x0 * u.scale, u.top + y0 * u.scale,
                                     u.left + x1 * u.scale, u.top + y1 * u.scale];
    } else {
      const pixels = ctx.getImageData(0, 0, pad.width, pad.height);
      result = await r.read(grayFromRGBA(pixels.data, pad.height, pad.width));
    }
    window.flaxdigits.lastMs = performance.now() - begun;
    show(result, toPad);
  } catch (e) {
    showNothing(e instanceof BadInput ? e.message : `could not read it: ${e}`);
  } finally {
    busy = false;
    if (again || sent !== version) { again = false; readNow(); }
    else numberLine.dataset.settled = "yes";
  }
}

let timer = null;
function readSoon() { clearTimeout(timer); timer = setTimeout(readNow, 120); }

let drawing = false;
function point(event) {
  const box = pad.getBoundingClientRect();
  return { x: (event.clientX - box.left) * pad.width / box.width,
           y: (event.clientY - box.top) * pad.height / box.height };
}
pad.addEventListener("pointerdown", event => {
  drawing = true;
  pad.setPointerCapture(event.pointerId);
  if (uploaded) { uploaded = null; }
  strokes.push([point(event)]);
  changed(); repaint();
});
pad.addEventListener("pointermove", event => {
  if (!drawing) return;
  strokes[strokes.length - 1].push(point(event));
  changed(); repaint(); readSoon();
});
function stop() { if (drawing) { drawing = false; clearTimeout(timer); readNow(); } }
pad.addEventListener("pointerup", stop);
pad.addEventListener("pointercancel", stop);

document.getElementById("clear").addEventListener("click", () => {
  strokes = []; uploaded = null; changed(); repaint(); readNow();
});
document.getElementById("undo").addEventListener("click", () => {
  if (strokes.length) strokes.pop(); else uploaded = null;
  changed(); repaint(); readNow();
});

// An image file -> its grayscale pixels, as the server decodes them (PNG or JPEG, EXIF
// orientation applied by the browser), or a BadInput saying why not.
export async function grayOfFile(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (e) {
    throw new BadInput(400, `not a readable PNG or JPEG image (${file.name || "upload"})`);
  }
  const { width, height } = bitmap;
  if (Math.min(width, height) < MIN_IMAGE_SIDE) {
    throw new BadInput(422, `no digit found: a ${width}x${height} image is too small to hold one`);
  }
  if (width * height > MAX_IMAGE_PIXELS) {
    throw new BadInput(413, `image is ${width}x${height} pixels; at most ${MAX_IMAGE_PIXELS.toLocaleString("en")} pixels are accepted`);
  }
  const canvas = new OffscreenCanvas(width, height);
  const c = canvas.getContext("2d", { willReadFrequently: true });
  c.drawImage(bitmap, 0, 0);
  return { gray: grayFromRGBA(c.getImageData(0, 0, width, height).data, height, width), bitmap };
}
window.flaxdigits.grayOfFile = grayOfFile;

document.getElementById("upload").addEventListener("change", async event => {
  const file = event.target.files[0];
  event.target.value = "";
  if (!file) return;
  changed();
  try {
    const { gray, bitmap } = await grayOfFile(file);
    const scale = Math.min(pad.width / bitmap.width, pad.height / bitmap.height);
    uploaded = { gray, image: bitmap, scale, left: (pad.width - bitmap.width * scale) / 2,
                 top: (pad.height - bitmap.height * scale) / 2 };
    strokes = [];
    repaint();
    readNow();
  } catch (e) {
    uploaded = null; repaint();
    showNothing(e.message);
    numberLine.dataset.settled = "yes";
  }
});

repaint();
reader.then(() => {
  window.flaxdigits.loadedMs = performance.now() - started;
  statusLine.textContent = "";
  numberLine.dataset.settled = "yes";
}, e => {
  window.flaxdigits.error = String(e);
  statusLine.textContent = `the model could not be loaded: ${e}`;
});
