// Reading a number in the browser: a port of flaxdigits/serving/preprocess.py (the
// MNIST-style preparation) and flaxdigits/serving/reading.py (segmentation by recognition,
// weighed against the line reader). The two are one logic: tests/test_export_page.py runs
// both on the same images in Chromium and requires the same numbers and boxes. Read the
// Python for the why of each step; the comments here are about porting.
//
// Images are {h, w, d}: d a Float32Array of h * w values, row by row. Where NumPy computes
// in float32 (the ink, thresholds of the ink against its brightest), Math.fround does here;
// where it computes in float64 (costs, paths, centres of mass), plain numbers do.
// Sums are added in NumPy's order where the last bit matters (pairwiseSum). What cannot be
// bit-identical: the models' probabilities (onnxruntime-web against XLA, about 1e-6 apart),
// which can only change a reading at a near tie.

export const IMAGE_SIDE = 28;
export const FIT_BOX = 20, MNIST_CENTRE = 14.0, WORK_BOX = 60;
export const THIN_STROKE = 0.12, THICKENED_STROKE = 0.16;
export const MIN_INK_PIXELS = 8, MIN_IMAGE_SIDE = 8;
export const INK_LEVEL = 0.2;
export const MAX_IMAGE_PIXELS = 4096 * 4096;
export const LINE_STRIP = 24, LINE_INK = 20, LINE_MARGIN = 4, LINE_THIN_STROKE = 2.5;
export const MAX_DIGITS = 32, WORK_SIDE = 1200, LINE_HEIGHT = 96;
const SPECK_SIDE = 0.2, FRAGMENT_HEIGHT = 0.5, FRAGMENT_REACH = 0.35, MAX_DIGIT_WIDTH = 1.3;
const FLAT_CROSSINGS = 0.15, MIN_CUT_STEP = 0.12, UNCUT_WIDTH = 1.05, MAX_SLICE_WIDTH = 0.3;
const JOIN_GAP = 0.3, PATH_REACH = 0.2, PATH_TURN = 0.05, FRAME = 4;
export const LINE_BUCKETS = [32, 48, 64, 128, 192, 256, 384, 512, 768, 1024];
export const COSTS = { digit: 0.0, cut: 0.25, join: 1.0, narrow_cut: 1.0, wide: 3.0,
                       wide_from: 1.0, short: 3.0, short_from: 0.55, skip: 6.0 };
export const LINE_WEIGHTS = { line: 3.0, unsegmented: 2.0, relabel: 0.5 };
export const LINE_SHIFTS = [0, -1, 1], LOWEST_LOG_PROB = -80.0;

const f32 = Math.fround;
const INK_LEVEL_32 = f32(INK_LEVEL);

// A refusal, as the API's 4xx: `status` and a one-line message.
export class BadInput extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// Python's round(): halves to even.
export function pyRound(x) {
  return Math.abs(x % 1) === 0.5 ? 2 * Math.round(x / 2) : Math.round(x);
}

function image(h, w) { return { h, w, d: new Float32Array(h * w) }; }

function maxOf(d) {
  let m = -Infinity;
  for (let i = 0; i < d.length; i++) if (d[i] > m) m = d[i];
  return m;
}

// NumPy's median: the mean of the middle two of an even count.
function median(values) {
  const s = Float32Array.from(values).sort();  // a copy: the caller's order is kept
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : f32((s[n / 2 - 1] + s[n / 2]) / 2);
}

// NumPy's sum of a contiguous array (pairwise_sum in its loops): eight running sums per
// block of up to 128 values, blocks halved recursively. `round` rounds each addition to
// the array's dtype (Math.fround for float32).
function pairwiseSum(a, start, n, round) {
  if (n < 8) {
    let r = 0;
    for (let i = start; i < start + n; i++) r = round(r + a[i]);
    return r;
  }
  if (n <= 128) {
    const r = Array.from(a.subarray(start, start + 8), v => round(v));
    let i = 8;
    for (; i < n - (n % 8); i += 8) for (let j = 0; j < 8; j++) r[j] = round(r[j] + a[start + i + j]);
    let res = round(round(round(r[0] + r[1]) + round(r[2] + r[3])) +
                    round(round(r[4] + r[5]) + round(r[6] + r[7])));
    for (; i < n; i++) res = round(res + a[start + i]);
    return res;
  }
  let half = Math.trunc(n / 2);
  half -= half % 8;
  return round(pairwiseSum(a, start, half, round) + pairwiseSum(a, start + half, n - half, round));
}

// ---------------------------------------------------------------------------------------
// Pillow's resampling of float images (src/libImaging/Resample.c, mode F): coefficients in
// double, a horizontal pass then a vertical one, each output stored as float32.

const FILTERS = {
  box: { support: 0.5, f: x => (x > -0.5 && x <= 0.5 ? 1.0 : 0.0) },
  bilinear: { support: 1.0, f: x => { x = Math.abs(x); return x < 1.0 ? 1.0 - x : 0.0; } },
};

function coefficients(inSize, outSize, filter) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = filter.support * filterscale;
  const out = [];
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    const k = new Float64Array(Math.max(0, xmax));
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) { k[x] = filter.f((x + xmin - center + 0.5) * ss); ww += k[x]; }
    if (ww !== 0.0) for (let x = 0; x < xmax; x++) k[x] /= ww;
    out.push({ xmin, k });
  }
  return out;
}

export function resize(img, width, height, filterName) {
  const filter = FILTERS[filterName];
  if (width === img.w && height === img.h) return { h: img.h, w: img.w, d: img.d.slice() };
  const vert = coefficients(img.h, height, filter);
  let src = img;
  if (width !== img.w) {
    // Only the rows the vertical pass reads (Pillow's ybox_first .. ybox_last).
    const first = vert[0].xmin, last = vert[height - 1].xmin + vert[height - 1].k.length;
    const horiz = coefficients(img.w, width, filter);
    const tmp = image(last - first, width);
    for (let y = 0; y < tmp.h; y++) {
      const row = (y + first) * img.w;
      for (let xx = 0; xx < width; xx++) {
        const { xmin, k } = horiz[xx];
        let ss = 0.0;
        for (let x = 0; x < k.length; x++) ss += img.d[row + x + xmin] * k[x];
        tmp.d[y * width + xx] = ss;
      }
    }
    for (const c of vert) c.xmin -= first;
    src = tmp;
  }
  if (height === img.h) return src;
  const out = image(height, src.w);
  for (let yy = 0; yy < height; yy++) {
    const { xmin, k } = vert[yy];
    for (let xx = 0; xx < src.w; xx++) {
      let ss = 0.0;
      for (let y = 0; y < k.length; y++) ss += src.d[(y + xmin) * src.w + xx] * k[y];
      out.d[yy * src.w + xx] = ss;
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// scipy.ndimage's operations, as reading.py calls them

// label(mask, structure=ones((3, 3))): 8-connected components, numbered 1.. in the order
// of each one's first pixel in a row-by-row scan (scipy's order).
export function label8(mask, h, w) {
  const labels = new Int32Array(h * w);
  const stack = new Int32Array(h * w);
  let count = 0;
  for (let start = 0; start < h * w; start++) {
    if (!mask[start] || labels[start]) continue;
    count += 1;
    labels[start] = count;
    let top = 0;
    stack[top++] = start;
    while (top) {
      const i = stack[--top], y = (i / w) | 0, x = i - y * w;
      for (let dy = -1; dy <= 1; dy++) {
        const yy = y + dy;
        if (yy < 0 || yy >= h) continue;
        for (let dx = -1; dx <= 1; dx++) {
          const xx = x + dx;
          if (xx < 0 || xx >= w) continue;
          const j = yy * w + xx;
          if (mask[j] && !labels[j]) { labels[j] = count; stack[top++] = j; }
        }
      }
    }
  }
  return { labels, count };
}

// find_objects and the areas (np.bincount) of each label: [{y0, y1, x0, x1, area}], 1-based.
function objects(labels, count, h, w) {
  const boxes = [];
  for (let k = 0; k < count; k++) boxes.push({ y0: h, y1: 0, x0: w, x1: 0, area: 0 });
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const l = labels[y * w + x];
      if (!l) continue;
      const b = boxes[l - 1];
      b.area += 1;
      if (y < b.y0) b.y0 = y; if (y + 1 > b.y1) b.y1 = y + 1;
      if (x < b.x0) b.x0 = x; if (x + 1 > b.x1) b.x1 = x + 1;
    }
  }
  return boxes;
}

// distance_transform_edt(mask): each pixel's distance to the nearest 0 (exact: squared
// integer distances by two passes of the lower envelope of parabolas, then a square root).
export function edt(mask, h, w) {
  const INF = 1e20;
  const f = new Float64Array(h * w);
  for (let i = 0; i < h * w; i++) f[i] = mask[i] ? INF : 0;
  const n = Math.max(h, w);
  const line = new Float64Array(n), out = new Float64Array(n);
  const v = new Int32Array(n), z = new Float64Array(n + 1);
  function pass(len) {  // Felzenszwalb and Huttenlocher's 1-D squared distance
    let k = 0;
    v[0] = 0; z[0] = -Infinity; z[1] = Infinity;
    for (let q = 1; q < len; q++) {
      let s = ((line[q] + q * q) - (line[v[k]] + v[k] * v[k])) / (2 * q - 2 * v[k]);
      while (s <= z[k]) {
        k--;
        s = ((line[q] + q * q) - (line[v[k]] + v[k] * v[k])) / (2 * q - 2 * v[k]);
      }
      k++; v[k] = q; z[k] = s; z[k + 1] = Infinity;
    }
    k = 0;
    for (let q = 0; q < len; q++) {
      while (z[k + 1] < q) k++;
      out[q] = (q - v[k]) * (q - v[k]) + line[v[k]];
    }
  }
  for (let x = 0; x < w; x++) {
    for (let y = 0; y < h; y++) line[y] = f[y * w + x];
    pass(h);
    for (let y = 0; y < h; y++) f[y * w + x] = out[y];
  }
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) line[x] = f[y * w + x];
    pass(w);
    for (let x = 0; x < w; x++) f[y * w + x] = Math.sqrt(out[x]);
  }
  return f;
}

// The stroke width: twice the 95th percentile (np.percentile's linear interpolation,
// preprocess._percentile_95) of the inked pixels' distance to paper.
function strokeWidth(inked, h, w) {
  const dist = edt(inked, h, w);
  let n = 0;
  for (let i = 0; i < h * w; i++) if (inked[i]) n++;
  const values = new Float64Array(n);
  for (let i = 0, k = 0; i < h * w; i++) if (inked[i]) values[k++] = dist[i];
  values.sort();
  const at = 0.95 * (n - 1), lo = Math.floor(at), hi = Math.ceil(at);
  return 2 * (values[lo] + (values[hi] - values[lo]) * (at - lo));
}

// grey_dilation(x, footprint=...) with scipy's default 'reflect' edges.
function greyDilation(img, footprint, reach) {
  const { h, w } = img, d = img.d, out = image(h, w);
  const reflect = (i, n) => (i < 0 ? -i - 1 : i >= n ? 2 * n - i - 1 : i);
  const size = 2 * reach + 1, offsets = [];
  for (let dy = -reach; dy <= reach; dy++) {
    for (let dx = -reach; dx <= reach; dx++) {
      if (footprint[(dy + reach) * size + dx + reach]) offsets.push(dy, dx, dy * w + dx);
    }
  }
  for (let y = 0; y < h; y++) {
    const inside = y >= reach && y < h - reach;
    for (let x = 0; x < w; x++) {
      let m = -Infinity;
      if (inside && x >= reach && x < w - reach) {  // no edge within reach: plain offsets
        const i = y * w + x;
        for (let k = 2; k < offsets.length; k += 3) if (d[i + offsets[k]] > m) m = d[i + offsets[k]];
      } else {
        for (let k = 0; k < offsets.length; k += 3) {
          const v = d[reflect(y + offsets[k], h) * w + reflect(x + offsets[k + 1], w)];
          if (v > m) m = v;
        }
      }
      out.d[y * w + x] = m;
    }
  }
  return out;
}

// binary_dilation(mask): the cross structure, zero outside.
function binaryDilation(mask, h, w) {
  const out = new Uint8Array(h * w);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const i = y * w + x;
      out[i] = mask[i] || (y > 0 && mask[i - w]) || (y + 1 < h && mask[i + w]) ||
               (x > 0 && mask[i - 1]) || (x + 1 < w && mask[i + 1]) ? 1 : 0;
    }
  }
  return out;
}

function crop(img, y0, y1, x0, x1) {
  const out = image(y1 - y0, x1 - x0);
  for (let y = y0; y < y1; y++) out.d.set(img.d.subarray(y * img.w + x0, y * img.w + x1), (y - y0) * out.w);
  return out;
}

function nonzero(img) {  // img > 0 (ink is never negative)
  const mask = new Uint8Array(img.d.length);
  for (let i = 0; i < img.d.length; i++) mask[i] = img.d[i] > 0 ? 1 : 0;
  return mask;
}

function inkedOf(img) {
  const level = f32(INK_LEVEL_32 * maxOf(img.d));
  const inked = new Uint8Array(img.d.length);
  for (let i = 0; i < img.d.length; i++) inked[i] = img.d[i] > level ? 1 : 0;
  return inked;
}

// ---------------------------------------------------------------------------------------
// preprocess.py

// Pillow's convert("L") of RGBA pixels (ImageData), transparent pixels on white paper
// first (decode_image's alpha_composite; canvas pixels are not premultiplied).
export function grayFromRGBA(rgba, h, w) {
  const out = image(h, w);
  for (let i = 0; i < h * w; i++) {
    let r = rgba[4 * i], g = rgba[4 * i + 1], b = rgba[4 * i + 2];
    const a = rgba[4 * i + 3];
    if (a !== 255) {
      r = Math.round((r * a + 255 * (255 - a)) / 255);
      g = Math.round((g * a + 255 * (255 - a)) / 255);
      b = Math.round((b * a + 255 * (255 - a)) / 255);
    }
    out.d[i] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
  }
  return out;
}

export function inkOnDark(gray) {
  const { h, w } = gray;
  const x = { h, w, d: Float32Array.from(gray.d) }, d = x.d;
  const border = new Float32Array(2 * w + 2 * h);
  for (let c = 0; c < w; c++) { border[c] = d[c]; border[w + c] = d[(h - 1) * w + c]; }
  for (let r = 0; r < h; r++) { border[2 * w + r] = d[r * w]; border[2 * w + h + r] = d[r * w + w - 1]; }
  let paper = median(border);
  if (paper > 127) {
    for (let i = 0; i < d.length; i++) d[i] = f32(255.0 - d[i]);
    for (let i = 0; i < border.length; i++) border[i] = f32(255.0 - border[i]);
    paper = median(border);
  }
  let top = 0;
  for (let i = 0; i < d.length; i++) {
    const v = f32(d[i] - paper);
    d[i] = v > 0 ? v : 0.0;
    if (d[i] > top) top = d[i];
  }
  if (top < 32) throw new BadInput(422, "no digit found: the image is blank");
  const level = f32(INK_LEVEL_32 * top);
  let inked = 0;
  for (let i = 0; i < d.length; i++) if (d[i] > level) inked++;
  if (inked < MIN_INK_PIXELS) {
    throw new BadInput(422, `no digit found: fewer than ${MIN_INK_PIXELS} pixels of ink`);
  }
  return x;
}

// [x0, y0, x1, y1] of the inked pixels (x1, y1 exclusive); null where there are none.
function boxOf(mask, h, w) {
  let x0 = w, y0 = h, x1 = 0, y1 = 0;
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (!mask[y * w + x]) continue;
      if (x < x0) x0 = x; if (x + 1 > x1) x1 = x + 1;
      if (y < y0) y0 = y; if (y + 1 > y1) y1 = y + 1;
    }
  }
  return x1 ? [x0, y0, x1, y1] : null;
}

function fit(x, box) {
  const factor = box / Math.max(x.h, x.w);
  return resize(x, Math.max(1, pyRound(x.w * factor)), Math.max(1, pyRound(x.h * factor)),
                "bilinear");
}

export function mnistBox(ink) {
  let [x0, y0, x1, y1] = boxOf(inkedOf(ink), ink.h, ink.w);
  let x = fit(crop(ink, y0, y1, x0, x1), WORK_BOX);
  const width = strokeWidth(inkedOf(x), x.h, x.w);
  if (width < THIN_STROKE * WORK_BOX) {
    const radius = (THICKENED_STROKE * WORK_BOX - width) / 2;
    const reach = Math.ceil(radius), size = 2 * reach + 1;
    const disc = new Uint8Array(size * size);
    for (let dy = -reach; dy <= reach; dy++) {
      for (let dx = -reach; dx <= reach; dx++) {
        disc[(dy + reach) * size + dx + reach] = dy * dy + dx * dx <= radius * radius ? 1 : 0;
      }
    }
    const padded = image(x.h + 2 * reach, x.w + 2 * reach);
    for (let r = 0; r < x.h; r++) padded.d.set(x.d.subarray(r * x.w, (r + 1) * x.w), (r + reach) * padded.w + reach);
    x = greyDilation(padded, disc, reach);
  }
  const fitted = fit(x, FIT_BOX);
  for (let i = 0; i < fitted.d.length; i++) if (fitted.d[i] < 0) fitted.d[i] = 0;
  // The centre of mass as NumPy sums it (pairwise): at an exact half pixel the last bit
  // decides which way the digit is shifted.
  const n = fitted.d.length, byRow = new Float64Array(n), byCol = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    byRow[i] = Math.trunc(i / fitted.w) * fitted.d[i];
    byCol[i] = (i % fitted.w) * fitted.d[i];
  }
  const mass = pairwiseSum(fitted.d, 0, n, f32);  // a float32 array sums in float32
  const rowMass = pairwiseSum(byRow, 0, n, x => x), colMass = pairwiseSum(byCol, 0, n, x => x);
  const top = Math.trunc(pyRound(MNIST_CENTRE - rowMass / mass));
  const left = Math.trunc(pyRound(MNIST_CENTRE - colMass / mass));
  const out = image(IMAGE_SIDE, IMAGE_SIDE);
  const r0 = Math.max(top, 0), c0 = Math.max(left, 0);
  const r1 = Math.min(top + fitted.h, IMAGE_SIDE), c1 = Math.min(left + fitted.w, IMAGE_SIDE);
  for (let r = r0; r < r1; r++) {
    for (let c = c0; c < c1; c++) out.d[r * IMAGE_SIDE + c] = fitted.d[(r - top) * fitted.w + c - left];
  }
  const peak = maxOf(out.d);
  for (let i = 0; i < out.d.length; i++) out.d[i] = f32(out.d[i] / peak);
  return out;
}

export function lineStrip(ink) {
  const [x0, y0, x1, y1] = boxOf(inkedOf(ink), ink.h, ink.w);
  const x = crop(ink, y0, y1, x0, x1);
  const width = Math.max(1, pyRound(x.w * LINE_INK / x.h));
  const small = resize(x, width, LINE_INK, x.h > LINE_INK ? "box" : "bilinear");
  const outW = Math.ceil((width + 2 * LINE_MARGIN) / 4) * 4;
  let out = image(LINE_STRIP, outW);
  const top = Math.trunc((LINE_STRIP - LINE_INK) / 2);
  for (let r = 0; r < LINE_INK; r++) {
    for (let c = 0; c < width; c++) {
      out.d[(top + r) * outW + LINE_MARGIN + c] = Math.max(small.d[r * width + c], 0.0);
    }
  }
  const peak = f32(Math.max(maxOf(out.d), 1e-6));
  for (let i = 0; i < out.d.length; i++) out.d[i] = f32(out.d[i] / peak);
  const inked = new Uint8Array(out.d.length);
  let any = false;
  for (let i = 0; i < out.d.length; i++) if ((inked[i] = out.d[i] > INK_LEVEL_32 ? 1 : 0)) any = true;
  if (any && strokeWidth(inked, out.h, out.w) < LINE_THIN_STROKE) {
    out = greyDilation(out, Uint8Array.from([0, 1, 0, 1, 1, 1, 0, 1, 0]), 1);
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// reading.py: 1-2. parts

function shrunk(ink, factor) {
  if (factor >= 1.0) return [ink, 1.0];
  return [resize(ink, Math.max(1, pyRound(ink.w * factor)), Math.max(1, pyRound(ink.h * factor)),
                 "box"), factor];
}

function digitSized(area, width, height) {
  return area >= MIN_INK_PIXELS && Math.max(width, height) >= MIN_IMAGE_SIDE;
}

function tallestMark(ink) {
  const { labels, count } = label8(inkedOf(ink), ink.h, ink.w);
  let tallest = 1;
  for (const b of objects(labels, count, ink.h, ink.w)) {
    if (digitSized(b.area, b.x1 - b.x0, b.y1 - b.y0)) tallest = Math.max(tallest, b.y1 - b.y0);
  }
  return tallest;
}

function parts(ink) {
  const { h, w } = ink;
  const { labels, count } = label8(inkedOf(ink), h, w);
  const comps = objects(labels, count, h, w).map((b, i) => ({ ...b, label: i + 1 }));
  for (const c of comps) {
    c.w = c.x1 - c.x0; c.h = c.y1 - c.y0; c.flat = false;
    if (c.w >= 3 * c.h) {
      const ph = c.h + 2, pw = c.w + 2, own = new Uint8Array(ph * pw);
      for (let y = 0; y < c.h; y++) {
        for (let x = 0; x < c.w; x++) own[(y + 1) * pw + x + 1] = labels[(c.y0 + y) * w + c.x0 + x] === c.label ? 1 : 0;
      }
      const thick = 2 * maxOf(edt(own, ph, pw));
      let columns = 0, again = 0;
      for (let x = 0; x < pw; x++) {
        let runs = 0;
        for (let y = 1; y < ph; y++) if (own[y * pw + x] && !own[(y - 1) * pw + x]) runs++;
        if (runs) columns++;
        if (runs >= 2) again++;
      }
      c.flat = c.h <= 3 * thick + 2 && again / Math.max(1, columns) < FLAT_CROSSINGS;
    }
  }
  const solid = comps.filter(c => !c.flat && digitSized(c.area, c.w, c.h));
  if (!solid.length) throw new BadInput(422, "no digits found: only specks or lines of ink");
  const height = Math.max(...solid.map(c => c.h));
  const biggest = Math.max(...solid.map(c => c.area));
  const overlap = (a, b) => Math.min(a.x1, b.x1) - Math.max(a.x0, b.x0);
  const kept = [];
  for (const c of comps) {
    if (c.flat) {
      const over = solid.filter(d => overlap(c, d) > 0.3 * Math.min(c.w, d.w));
      if (over.length === 1 && c.w <= MAX_DIGIT_WIDTH * height) kept.push(c);
    } else if ((Math.max(c.w, c.h) < SPECK_SIDE * height && c.area < 0.05 * biggest) ||
               !digitSized(c.area, c.w, c.h)) {
      continue;
    } else {
      kept.push(c);
    }
  }
  if (kept.length > 4 * MAX_DIGITS) {
    throw new BadInput(422, `too many separate marks (${kept.length}) to be one number: at ` +
                            `most ${MAX_DIGITS} digits are read`);
  }
  const group = kept.map((_, i) => i);
  const find = i => { while (group[i] !== i) { group[i] = group[group[i]]; i = group[i]; } return i; };
  for (let i = 0; i < kept.length; i++) {
    for (let j = i + 1; j < kept.length; j++) {
      if (overlap(kept[i], kept[j]) >= 0.6 * Math.min(kept[i].w, kept[j].w)) group[find(i)] = find(j);
    }
  }
  for (let i = 0; i < kept.length; i++) {
    const a = kept[i];
    const members = kept.filter((_, k) => find(k) === find(i));
    const top = Math.min(...members.map(c => c.y0)), bottom = Math.max(...members.map(c => c.y1));
    if (bottom - top >= FRAGMENT_HEIGHT * height) continue;
    let best = null;  // Python's min over (gap, j): the smallest gap, then the first j
    for (let j = 0; j < kept.length; j++) {
      if (find(j) === find(i)) continue;
      const b = kept[j], gap = Math.max(b.x0 - a.x1, a.x0 - b.x1, 0);
      if (best === null || gap < best[0]) best = [gap, j];
    }
    if (best !== null && best[0] <= FRAGMENT_REACH * height) group[find(i)] = find(best[1]);
  }
  const roots = [...new Set(kept.map((_, i) => find(i)))].sort((a, b) => a - b);
  const out = [];
  for (const root of roots) {
    const members = kept.filter((_, k) => find(k) === root);
    const x0 = Math.min(...members.map(c => c.x0)), y0 = Math.min(...members.map(c => c.y0));
    const x1 = Math.max(...members.map(c => c.x1)), y1 = Math.max(...members.map(c => c.y1));
    const pw = x1 - x0, ph = y1 - y0, ids = new Set(members.map(c => c.label));
    const own = new Uint8Array(ph * pw);
    for (let y = 0; y < ph; y++) for (let x = 0; x < pw; x++) own[y * pw + x] = ids.has(labels[(y0 + y) * w + x0 + x]) ? 1 : 0;
    const grown = binaryDilation(own, ph, pw);
    const partInk = image(ph, pw);
    for (let y = 0; y < ph; y++) {
      for (let x = 0; x < pw; x++) {
        const v = ink.d[(y0 + y) * w + x0 + x];
        partInk.d[y * pw + x] = grown[y * pw + x] && v > 0 ? v : 0.0;
      }
    }
    out.push({ x0, y0, x1, y1, width: pw, height: ph, ink: partInk });
  }
  out.sort((a, b) => (a.x0 + a.x1) / 2 - (b.x0 + b.x1) / 2);  // stable, as Python's
  if (out.length > MAX_DIGITS) {
    throw new BadInput(422, `${out.length} separate marks: a number of at most ${MAX_DIGITS} ` +
                            `digits is read`);
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// 3. slices

function inkCount(part, left, right) {  // inked pixels with left[y] <= x < right[y]
  let n = 0;
  for (let y = 0; y < part.height; y++) {
    for (let x = Math.max(0, left[y]); x < Math.min(part.width, right[y]); x++) {
      if (part.ink.d[y * part.width + x] > 0) n++;
    }
  }
  return n;
}

function paths(part, columns, height) {
  if (!columns.length) return [];
  const reach = Math.max(1, Math.trunc(PATH_REACH * height));
  const J = 2 * reach + 1, K = columns.length, H = part.height, W = part.width;
  const at = [];
  for (const c of columns) at.push(Array.from({ length: J }, (_, j) => Math.min(Math.max(c + j - reach, 0), W - 1)));
  const turn = Array.from({ length: J }, (_, j) => PATH_TURN * 0.2 * Math.abs(j - reach));
  const cost = (y, k, j) => (part.ink.d[y * W + at[k][j]] > 0 ? 1 : 0) + turn[j];
  const steps = new Int8Array(H * K * J);
  let total = [];
  for (let k = 0; k < K; k++) total.push(Float64Array.from({ length: J }, (_, j) => cost(0, k, j)));
  for (let y = 1; y < H; y++) {
    const next = [];
    for (let k = 0; k < K; k++) {
      const t = total[k], n = new Float64Array(J);
      for (let j = 0; j < J; j++) {
        // argmin over (from j-1, j, j+1), the first on ties (NumPy's argmin)
        const options = [j > 0 ? t[j - 1] + PATH_TURN : 1e9 + PATH_TURN, t[j],
                         j + 1 < J ? t[j + 1] + PATH_TURN : 1e9 + PATH_TURN];
        let best = 0;
        if (options[1] < options[best]) best = 1;
        if (options[2] < options[best]) best = 2;
        steps[(y * K + k) * J + j] = best - 1;
        n[j] = cost(y, k, j) + options[best];
      }
      next.push(n);
    }
    total = next;
  }
  const found = [];
  for (let k = 0; k < K; k++) {
    let j = 0;
    for (let q = 1; q < J; q++) if (total[k][q] < total[k][j]) j = q;
    const path = new Int32Array(H);
    for (let y = H - 1; y >= 0; y--) { path[y] = at[k][j]; j += steps[(y * K + k) * J + j]; }
    found.push(path);
  }
  for (let k = 1; k < K; k++) for (let y = 0; y < H; y++) found[k][y] = Math.max(found[k][y], found[k - 1][y]);
  const kept = [];
  let previous = new Int32Array(H);
  for (const p of found) {
    if (inkCount(part, previous, p) >= MIN_INK_PIXELS) { kept.push(p); previous = p; }
  }
  const last = new Int32Array(H).fill(W);
  while (kept.length && inkCount(part, kept[kept.length - 1], last) < MIN_INK_PIXELS) kept.pop();
  return kept;
}

function cuts(part, height) {
  if (part.width < UNCUT_WIDTH * height) return [];
  const W = part.width, raw = new Float32Array(W);
  for (let y = 0; y < part.height; y++) for (let x = 0; x < W; x++) if (part.ink.d[y * W + x] > 0) raw[x] += 1;
  const third = 1 / 3, profile = new Float64Array(W);  // np.convolve(p, ones(3) / 3, "same")
  for (let c = 0; c < W; c++) {
    profile[c] = (c > 0 ? raw[c - 1] * third : 0) + raw[c] * third + (c + 1 < W ? raw[c + 1] * third : 0);
  }
  const step = Math.max(2, Math.trunc(MIN_CUT_STEP * height));
  const margin = Math.max(2, Math.trunc(0.15 * height));
  const top = maxOf(profile);
  const found = [];
  for (let c = margin; c < W - margin; c++) {
    let low = Infinity;
    for (let q = Math.max(0, c - step); q < Math.min(W, c + step + 1); q++) low = Math.min(low, profile[q]);
    if (profile[c] <= low + 1e-6 && profile[c] < 0.6 * top) {
      if (!found.length || c - found[found.length - 1] >= step) found.push(c);
    }
  }
  const edges = [0, ...found, W], widest = Math.max(2, Math.trunc(MAX_SLICE_WIDTH * height));
  const all = [];
  for (let e = 0; e + 1 < edges.length; e++) {
    const lo = edges[e], hi = edges[e + 1], extra = Math.ceil((hi - lo) / widest) - 1;
    for (let k = 0; k < extra; k++) all.push(lo + pyRound((k + 1) * (hi - lo) / (extra + 1)));
    all.push(hi);
  }
  return [...new Set(all.filter(c => c > 0 && c < W))].sort((a, b) => a - b);
}

function slices(part, height) {
  const edges = [new Int32Array(part.height), ...paths(part, cuts(part, height), height),
                 new Int32Array(part.height).fill(part.width)];
  const out = [];
  for (let k = 0; k + 1 < edges.length; k++) {
    const left = edges[k], right = edges[k + 1];
    out.push({ part, left, right, lo: Math.min(...left), hi: Math.max(...right) });
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// 4. segments

function segments(all, height) {
  const out = [];
  for (let first = 0; first < all.length; first++) {
    for (let last = first + 1; last <= all.length; last++) {
      const run = all.slice(first, last);
      const x0 = Math.min(...run.map(s => s.part.x0 + s.lo));
      const x1 = Math.max(...run.map(s => s.part.x0 + s.hi));
      if (last - first > 1 && x1 - x0 > MAX_DIGIT_WIDTH * height) break;
      let apart = false;
      for (let k = 0; k + 1 < run.length; k++) {
        if (run[k + 1].part !== run[k].part && run[k + 1].part.x0 - run[k].part.x1 > JOIN_GAP * height) apart = true;
      }
      if (apart) break;
      const s = segment(run, first, last, height);
      if (s !== null) out.push(s);
    }
  }
  return out;
}

function segment(run, first, last, height) {
  const y0 = Math.min(...run.map(s => s.part.y0)), y1 = Math.max(...run.map(s => s.part.y1));
  const x0 = Math.min(...run.map(s => s.part.x0 + s.lo)), x1 = Math.max(...run.map(s => s.part.x0 + s.hi));
  const canvas = image(y1 - y0, x1 - x0);
  const cd = canvas.d, cw = canvas.w;
  for (const s of run) {
    const top = s.part.y0 - y0, shift = s.part.x0 - x0, pw = s.part.width;
    const ink = s.part.ink.d, lefts = s.left, rights = s.right;
    for (let y = 0; y < s.part.height; y++) {
      const row = (top + y) * cw + shift, from = y * pw;
      const end = Math.min(s.hi, rights[y]);
      for (let c = Math.max(s.lo, lefts[y]); c < end; c++) {
        const v = ink[from + c];
        if (v > cd[row + c]) cd[row + c] = v;
      }
    }
  }
  const cutLeft = Math.max(...run[0].left) > 0;
  const end = run[run.length - 1];
  const cutRight = Math.min(...end.right) < end.part.width;
  if (cutLeft || cutRight) {
    const { labels, count } = label8(nonzero(canvas), canvas.h, canvas.w);
    if (count > 1) {
      const areas = new Float64Array(count + 1);
      for (const l of labels) areas[l] += 1;
      let inked = 0;
      for (let k = 1; k <= count; k++) inked += areas[k];
      const edge = new Set();
      for (const [cut, s, boundary] of [[cutLeft, run[0], run[0].left],
                                        [cutRight, end, end.right.map(v => v - 1)]]) {
        if (!cut) continue;
        for (let y = 0; y < s.part.height; y++) {
          const r = y + s.part.y0 - y0;
          const c = Math.min(Math.max(boundary[y] + s.part.x0 - x0, 0), canvas.w - 1);
          edge.add(labels[r * canvas.w + c]);
        }
      }
      const drop = new Set([...edge].filter(k => k !== 0 && areas[k] < 0.15 * inked));
      if (drop.size) for (let i = 0; i < labels.length; i++) if (drop.has(labels[i])) canvas.d[i] = 0.0;
    }
  }
  const mask = nonzero(canvas);
  let inked = 0;
  for (const v of mask) inked += v;
  if (inked < MIN_INK_PIXELS) return null;
  const [bx0, by0, bx1, by1] = boxOf(mask, canvas.h, canvas.w);
  const inkHeight = by1 - by0, inkWidth = bx1 - bx0;
  const narrowCuts = (cutLeft && run[0].part.width <= MAX_DIGIT_WIDTH * height ? 1 : 0) +
                     (cutRight && end.part.width <= MAX_DIGIT_WIDTH * height ? 1 : 0);
  let joins = 0;
  for (let k = 0; k + 1 < run.length; k++) if (run[k + 1].part !== run[k].part) joins++;
  return { first, last, box: [x0 + bx0, y0 + by0, x0 + bx1, y0 + by1], image: mnistBox(canvas),
           aspect: inkWidth / inkHeight, rel_height: inkHeight, cuts: (cutLeft ? 1 : 0) + (cutRight ? 1 : 0),
           narrow_cuts: narrowCuts, joins };
}

// ---------------------------------------------------------------------------------------
// 5. the least-cost partition

function costOf(costs, probability, s, height) {
  return (-Math.log(Math.max(probability, 1e-9)) + costs.digit + costs.cut * s.cuts / 2
          + costs.narrow_cut * s.narrow_cuts / 2 + costs.join * s.joins
          + costs.wide * Math.max(0.0, s.aspect - costs.wide_from)
          + costs.short * Math.max(0.0, costs.short_from - s.rel_height / height));
}

function argmax(p) { let k = 0; for (let i = 1; i < p.length; i++) if (p[i] > p[k]) k = i; return k; }

function bestPartition(found, costs, number = null) {
  const count = found.slices, states = number === null ? 1 : number.length + 1;
  const best = Array.from({ length: count + 1 }, () => new Float64Array(states).fill(Infinity));
  const back = Array.from({ length: count + 1 }, () => new Int32Array(states).fill(-1));
  best[0][0] = 0.0;
  const byFirst = new Map();
  found.segments.forEach((s, index) => {
    if (!byFirst.has(s.first)) byFirst.set(s.first, []);
    byFirst.get(s.first).push(index);
  });
  for (let first = 0; first < count; first++) {
    for (let k = 0; k < states; k++) {
      if (!Number.isFinite(best[first][k])) continue;
      if (best[first][k] + costs.skip < best[first + 1][k]) {
        best[first + 1][k] = best[first][k] + costs.skip; back[first + 1][k] = -1;
      }
      if (number !== null && k === number.length) continue;
      const after = number === null ? 0 : k + 1;
      for (const index of byFirst.get(first) || []) {
        const s = found.segments[index], p = found.probabilities[index];
        const probability = number === null ? Math.max(...p) : p[Number(number[k])];
        const cost = best[first][k] + costOf(costs, probability, s, found.height);
        if (cost < best[s.last][after]) { best[s.last][after] = cost; back[s.last][after] = index; }
      }
    }
  }
  let k = states - 1;
  const total = best[count][k];
  if (!Number.isFinite(total)) return null;
  const path = [];
  let at = count;
  while (at > 0) {
    const index = back[at][k];
    if (index < 0) { at -= 1; continue; }
    path.push(index);
    at = found.segments[index].first;
    k = number === null ? 0 : k - 1;
  }
  if (!path.length) {
    if (number !== null) return null;
    throw new BadInput(422, "no digits found: the marks are too faint or too small");
  }
  return [path.reverse(), total];
}

// ---------------------------------------------------------------------------------------
// 6. the line reader

export function ctcGreedy(labels) {
  let out = "", previous = 0;
  for (const label of labels) {
    if (label !== previous && label !== 0) out += String(label - 1);
    previous = label;
  }
  return out;
}

function logaddexp(x, y) {  // NumPy's npy_logaddexp
  if (x === y) return x + Math.LN2;
  const t = x - y;
  if (t > 0) return x + Math.log1p(Math.exp(-t));
  if (t <= 0) return y + Math.log1p(Math.exp(t));
  return NaN;
}

// logProbs: frames arrays of 11 log-probabilities.
export function ctcNll(logProbs, number) {
  const ext = [0];
  for (const d of number) ext.push(Number(d) + 1, 0);
  const skip = ext.map((e, i) => i >= 2 && e !== 0 && e !== ext[i - 2]);
  let alpha = ext.map(() => -Infinity);
  alpha[0] = logProbs[0][0];
  if (ext.length > 1) alpha[1] = logProbs[0][ext[1]];
  for (let t = 1; t < logProbs.length; t++) {
    alpha = ext.map((e, i) => {
      const stay = logaddexp(alpha[i], i > 0 ? alpha[i - 1] : -Infinity);
      const jump = skip[i] ? alpha[i - 2] : -Infinity;
      return logaddexp(stay, jump) + logProbs[t][e];
    });
  }
  const end = ext.length > 1 ? logaddexp(alpha[alpha.length - 1], alpha[alpha.length - 2])
                             : alpha[alpha.length - 1];
  return Number.isFinite(end) ? -end : Infinity;
}

function imageBox(found, [x0, y0, x1, y1]) {
  return [Math.trunc(x0 / found.scale), Math.trunc(y0 / found.scale),
          Math.ceil(x1 / found.scale), Math.ceil(y1 / found.scale)];
}

function readingOf(found, path, number = null) {
  const digits = path.map((index, k) => {
    const p = found.probabilities[index];
    const label = number === null ? argmax(p) : Number(number[k]);
    const s = found.segments[index];
    return { label, probability: p[label], box: imageBox(found, s.box), image: s.image, probabilities: p };
  });
  return { number: digits.map(d => d.label).join(""), digits };
}

async function frameReading(found, frames, number, classify) {
  const labels = frames.logProbs.map(argmax), runs = [];
  let previous = 0;
  labels.forEach((label, t) => {
    if (label !== 0 && label !== previous) runs.push([t, t]);
    else if (label !== 0) runs[runs.length - 1][1] = t;
    previous = label;
  });
  const column = strip => pyRound(frames.x0 + (strip - LINE_MARGIN) / frames.factor);
  const width = found.ink.w;
  const edges = [0];
  for (let k = 0; k + 1 < runs.length; k++) edges.push(column(FRAME * (runs[k][1] + 1 + runs[k + 1][0]) / 2));
  edges.push(width);
  const clipped = edges.map(e => Math.min(Math.max(e, 0), width));
  const digits = [];
  runs.forEach(([first, last], k) => {
    const label = Number(number[k]), lo = clipped[k], hi = Math.max(clipped[k + 1], clipped[k] + 1);
    const part = crop(found.ink, 0, found.ink.h, lo, Math.min(hi, width));
    const box = boxOf(nonzero(part), part.h, part.w);
    if (box) {
      const [cx0, cy0, cx1, cy1] = box;
      digits.push({ label, box: imageBox(found, [lo + cx0, cy0, lo + cx1, cy1]),
                    image: mnistBox(crop(part, cy0, cy1, cx0, cx1)), first, last });
    } else {
      digits.push({ label, box: imageBox(found, [lo, 0, hi, found.ink.h]),
                    image: image(IMAGE_SIDE, IMAGE_SIDE), first, last });
    }
  });
  let probabilities;
  if (classify) {
    probabilities = await classify(digits.map(d => d.image));
  } else {
    probabilities = digits.map(({ label, first, last }) => {
      let peak = first;
      for (let t = first; t <= last; t++) if (frames.logProbs[t][label + 1] > frames.logProbs[peak][label + 1]) peak = t;
      const p = frames.logProbs[peak].slice(1).map(Math.exp), sum = p.reduce((a, b) => a + b, 0);
      return p.map(v => f32(v / sum));
    });
  }
  return { number, digits: digits.map((d, k) => ({ label: d.label, probability: probabilities[k][d.label],
                                                   box: d.box, image: d.image, probabilities: probabilities[k] })) };
}

// ---------------------------------------------------------------------------------------
// The whole reading

function marks(gray) {
  let ink = inkOnDark(gray), scale, more;
  [ink, scale] = shrunk(ink, WORK_SIDE / Math.max(ink.h, ink.w));
  [ink, more] = shrunk(ink, LINE_HEIGHT / tallestMark(ink));
  scale *= more;
  const found = parts(ink);
  const height = Math.max(...found.map(p => p.height));
  const all = found.flatMap(p => slices(p, height));
  if (all.length > 4 * MAX_DIGITS) {
    throw new BadInput(422, `too many marks to be one number: at most ${MAX_DIGITS} digits are read`);
  }
  const canvas = image(ink.h, ink.w);
  for (const p of found) {
    for (let y = 0; y < p.height; y++) {
      for (let x = 0; x < p.width; x++) {
        const i = (p.y0 + y) * ink.w + p.x0 + x;
        canvas.d[i] = Math.max(canvas.d[i], p.ink.d[y * p.width + x]);
      }
    }
  }
  return { parts: found, slices: all, height, scale, ink: canvas };
}

function candidatesOf(m) {
  const segs = segments(m.slices, m.height);
  if (!segs.length) throw new BadInput(422, "no digits found: the marks are too faint or too small");
  return { segments: segs, probabilities: null, slices: m.slices.length, height: m.height, scale: m.scale, ink: m.ink };
}

export function unclassifiedCandidates(gray) {
  return candidatesOf(marks(gray));
}

// Python's reading.LONE_SURE: a lone cut mark that both readers read as the same one digit.
const LONE_SURE = 0.5;

async function sureLoneDigit(m, frames, classify) {
  if (frames === null || m.parts.length !== 1 || m.slices.length < 2) return null;
  const whole = segment(m.slices, 0, m.slices.length, m.height);
  if (whole === null) return null;
  const probabilities = await classify([whole.image]);
  const label = argmax(probabilities[0]);
  if (probabilities[0][label] < f32(LONE_SURE) || ctcGreedy(frames.logProbs.map(argmax)) !== String(label)) return null;
  const found = { segments: [whole], probabilities, slices: m.slices.length, height: m.height, scale: m.scale, ink: m.ink };
  return readingOf(found, [0]);
}

function rolled(strip, shift) {  // np.roll(strip, shift, axis=1)
  const out = image(strip.h, strip.w);
  for (let r = 0; r < strip.h; r++) {
    for (let c = 0; c < strip.w; c++) {
      out.d[r * strip.w + (((c + shift) % strip.w) + strip.w) % strip.w] = strip.d[r * strip.w + c];
    }
  }
  return out;
}

// reading.py's _frames: a line of more than one slice is read at each of LINE_SHIFTS, and
// the frames' probabilities averaged (in float32, as NumPy averages them).
async function lineLogProbs(line, strip, slices) {
  const first = await line(strip);
  if (first === null || slices <= 1) return first;
  const all = [first];
  for (const shift of LINE_SHIFTS.slice(1)) all.push(await line(rolled(strip, shift)));
  return first.map((frame, t) => frame.map((_, k) => {
    let sum = 0;
    for (const lp of all) sum = f32(sum + f32(Math.exp(Math.max(lp[t][k], LOWEST_LOG_PROB))));
    return f32(Math.log(f32(sum / all.length)));
  }));
}

// classify: async (list of 28x28 images) -> list of 10 probabilities each.
// line: async (strip) -> frames (arrays of 11 log-probabilities), or null where too wide.
export async function read(gray, classify, line = null, costs = COSTS, weights = LINE_WEIGHTS) {
  const m = marks(gray);
  let frames = null;
  if (line !== null) {
    const [x0, y0, , y1] = boxOf(inkedOf(m.ink), m.ink.h, m.ink.w);
    const logProbs = await lineLogProbs(line, lineStrip(m.ink), m.slices.length);
    if (logProbs !== null) frames = { logProbs, x0, factor: LINE_INK / (y1 - y0) };
  }
  const sure = await sureLoneDigit(m, frames, classify);
  if (sure !== null) return sure;
  const found = candidatesOf(m);
  found.probabilities = await classify(found.segments.map(s => s.image));
  const [path, cost] = bestPartition(found, costs);
  const segmented = readingOf(found, path);
  if (frames === null) return segmented;
  const number = ctcGreedy(frames.logProbs.map(argmax));
  if (!number || number === segmented.number || number.length > MAX_DIGITS) return segmented;
  const constrained = bestPartition(found, costs, number);
  let lineWeight = weights.line, lineReading, lineCost;
  if (constrained !== null) {
    lineReading = readingOf(found, constrained[0], number);
    lineCost = constrained[1];
    if (constrained[0].length === path.length && constrained[0].every((v, i) => v === path[i])) {
      lineWeight = weights.relabel;
    }
  } else {
    lineReading = await frameReading(found, frames, number, classify);
    lineCost = weights.unsegmented + costs.cut * (number.length - 1) +
               lineReading.digits.reduce((sum, d) => sum - Math.log(Math.max(d.probability, 1e-9)) + costs.digit, 0);
  }
  if (cost + lineWeight * ctcNll(frames.logProbs, segmented.number) <=
      lineCost + lineWeight * ctcNll(frames.logProbs, number)) {
    return segmented;
  }
  return lineReading;
}

// ---------------------------------------------------------------------------------------
// The models, through onnxruntime-web (`ort`): the exported model.onnx and line_reader.onnx.

// helpers: runners of model.onnx elsewhere (page.js's workers, each `run(images, count)` ->
// a Promise of the probabilities, Float32Array): a batch of at least SPLIT_FROM candidates
// is split between them and this thread's session. Each digit's probabilities are its own
// whatever the batch (the models have no cross-batch statistics at inference).
const SPLIT_FROM = 6;

export async function loadReader(ort, folder = ".", helpers = []) {
  const options = { executionProviders: ["wasm"] };
  const model = await ort.InferenceSession.create(`${folder}/model.onnx`, options);
  let lineModel = null;
  try {
    lineModel = await ort.InferenceSession.create(`${folder}/line_reader.onnx`, options);
  } catch (e) {
    lineModel = null;  // a model without a line reader: segmentation alone, as in Python
  }
  async function here(data, count) {
    const result = await model.run({ images: new ort.Tensor("float32", data, [count, IMAGE_SIDE, IMAGE_SIDE, 1]) });
    return result.probabilities.data;
  }
  async function classify(images) {
    const side = IMAGE_SIDE * IMAGE_SIDE, out = [];
    const runners = images.length >= SPLIT_FROM ? [here, ...helpers.map(h => h.run)] : [here];
    const share = Math.ceil(images.length / runners.length);
    const parts = [];
    for (let k = 0; k * share < images.length; k++) {
      const chunk = images.slice(k * share, (k + 1) * share);
      const data = new Float32Array(chunk.length * side);
      chunk.forEach((img, i) => data.set(img.d, i * side));
      parts.push([runners[k], data, chunk.length]);
    }
    // The helpers' batches are sent first: they compute while this thread computes its own.
    const results = await Promise.all(parts.slice(1).map(([run, data, n]) => run(data, n))
      .concat([parts[0][0](parts[0][1], parts[0][2])]));
    const ordered = [results[results.length - 1], ...results.slice(0, -1)];
    ordered.forEach((p, k) => {
      for (let i = 0; i < parts[k][2]; i++) out.push(Array.from(p.subarray(10 * i, 10 * i + 10)));
    });
    return out;
  }
  async function line(strip) {
    // Padded to the widths Python's reader compiles (reading.LINE_BUCKETS): the padding's
    // columns shape the last frames, so the same padding reads the same frames.
    const width = strip.w;
    if (width > LINE_BUCKETS[LINE_BUCKETS.length - 1]) return null;
    const padded = LINE_BUCKETS.find(b => b >= width);
    const data = new Float32Array(LINE_STRIP * padded);
    for (let r = 0; r < LINE_STRIP; r++) data.set(strip.d.subarray(r * width, (r + 1) * width), r * padded);
    const result = await lineModel.run({ strips: new ort.Tensor("float32", data, [1, LINE_STRIP, padded, 1]) });
    const lp = result.log_probabilities.data, frames = [];
    for (let t = 0; t < width / FRAME; t++) frames.push(Array.from(lp.subarray(11 * t, 11 * t + 11)));
    return frames;
  }
  return { classify, line: lineModel ? line : null,
           read: gray => read(gray, classify, lineModel ? line : null) };
}
