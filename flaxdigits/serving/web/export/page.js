// The exported page: the pad of the served page (pad.js), with the number read in the
// browser (reading.js, onnxruntime-web) instead of by flaxdigits' server.
import * as ort from "./ort.wasm.bundle.min.mjs";
import { startPad } from "./pad.js";
import { BadInput, IMAGE_SIDE, MAX_IMAGE_PIXELS, MIN_IMAGE_SIDE, grayFromRGBA, loadReader } from "./reading.js";

// Single-threaded: threads need a cross-origin isolated page, which a plain static host
// (python -m http.server) does not serve; spare cores run classify-worker.js instead.
ort.env.wasm.numThreads = 1;
const started = performance.now();

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
// Loaded, then read once on a number written here: the first reading compiles the models'
// kernels and reading.js's code, several times slower than the next ones, so it is done
// before the page says it is ready, not on the user's first stroke.
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

// An image -> its grayscale pixels as the server decodes them (PNG or JPEG, EXIF
// orientation applied by the browser), or a BadInput saying why not.
function grayOfBitmap(bitmap) {
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
  return grayFromRGBA(c.getImageData(0, 0, width, height).data, height, width);
}

async function grayOfFile(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (e) {
    throw new BadInput(400, "not a readable PNG or JPEG image");
  }
  return { gray: grayOfBitmap(bitmap), bitmap };
}

// A reading as the API answers it: the most confident digit's 28x28 input, 0..255.
function answer(result) {
  const top = result.digits.reduce((a, b) => (b.probability > a.probability ? b : a));
  const input = [];
  for (let r = 0; r < IMAGE_SIDE; r++) {
    input.push(Array.from(top.image.d.subarray(r * IMAGE_SIDE, (r + 1) * IMAGE_SIDE), v => Math.round(v * 255)));
  }
  return { ...result, input };
}

async function timed(read) {
  const begun = performance.now();
  const result = answer(await read());
  window.flaxdigits.lastMs = performance.now() - begun;
  return result;
}

// What scripts, tests and benchmarks use.
window.flaxdigits = { reader, started, lastMs: null, grayOfFile,
                      readGray: async gray => (await reader).read(gray) };
reader.then(() => { window.flaxdigits.loadedMs = performance.now() - started; },
            e => { window.flaxdigits.error = String(e); });

startPad({
  ready: reader,
  readPad: pad => timed(async () => {
    const pixels = pad.getContext("2d").getImageData(0, 0, pad.width, pad.height);
    return (await reader).read(grayFromRGBA(pixels.data, pad.height, pad.width));
  }),
  readUpload: ({ image, size }) => timed(async () => {
    if (size) {
      throw new BadInput(413, `image is ${size.width}x${size.height} pixels; at most ` +
                              `${MAX_IMAGE_PIXELS.toLocaleString("en")} pixels are accepted`);
    }
    if (!image) throw new BadInput(400, "not a readable PNG or JPEG image");
    return (await reader).read(grayOfBitmap(image));
  }),
});
