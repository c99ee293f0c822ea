// The writing pad of both pages: the served one (served.js reads through /api/predict) and
// the exported one (export/page.js reads in the browser). Strokes, Clear, Undo, an image
// upload shown on the pad, one reading at a time (the latest wins), and the reading shown:
// the number in #number, a box and probability per digit, the 28x28 digit the model saw.
//
// reader: { ready: Promise, readPad(pad) -> Promise<result>, readUpload(upload) ->
// Promise<result> } where upload is {file, image, size} (image: an ImageBitmap, or null
// where the browser cannot decode the file or its header says it is larger than
// MAX_IMAGE_PIXELS, then given in size: {width, height}) and result is {number, digits: [{label, probability,
// box}], input: 28 rows of 28 values 0..255}. A reading that fails throws an Error whose
// message is shown.

const PEN = 16;
const MAX_IMAGE_PIXELS = 4096 * 4096;  // as the server's (serving/preprocess.py)

// Width and height from a PNG's or a JPEG's header, or null: read before anything decodes
// the file, since a small file can hold a huge image (a decompression bomb).
export async function headerSize(file) {
  const b = new Uint8Array(await file.slice(0, 256 * 1024).arrayBuffer());
  const word = (i, n) => { let v = 0; for (let k = 0; k < n; k++) v = v * 256 + b[i + k]; return v; };
  if (b.length >= 24 && b[0] === 0x89 && b[1] === 0x50 && b[2] === 0x4e && b[3] === 0x47) {
    return { width: word(16, 4), height: word(20, 4) };
  }
  if (b.length >= 4 && b[0] === 0xff && b[1] === 0xd8) {
    for (let i = 2; i + 9 < b.length;) {
      if (b[i] !== 0xff) { i++; continue; }
      const marker = b[i + 1];
      if (marker === 0xff) { i++; continue; }
      if (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)) {
        return { width: word(i + 7, 2), height: word(i + 5, 2) };
      }
      if (marker === 0xd8 || (marker >= 0xd0 && marker <= 0xd7) || marker === 0x01) { i += 2; continue; }
      i += 2 + word(i + 2, 2);
    }
  }
  return null;
}

export function startPad(reader) {
  const pad = document.getElementById("pad");
  const ctx = pad.getContext("2d", { willReadFrequently: true });
  const overlay = document.getElementById("boxes").getContext("2d");
  const seen = document.getElementById("seen").getContext("2d");
  const numberLine = document.getElementById("number");
  const digitsLine = document.getElementById("digits");
  const statusLine = document.getElementById("status");

  let strokes = [];     // each a list of points, for Undo
  let uploaded = null;  // {file, image, scale, left, top}: an upload shown on the pad

  function repaint() {
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, pad.width, pad.height);
    if (uploaded && uploaded.image) {
      ctx.drawImage(uploaded.image, uploaded.left, uploaded.top,
                    uploaded.image.width * uploaded.scale, uploaded.image.height * uploaded.scale);
    }
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
    seen.clearRect(0, 0, 28, 28);
    numberLine.textContent = "?";
    numberLine.dataset.number = "";
    digitsLine.textContent = "";
    statusLine.textContent = message || "";
  }

  // A reading's boxes are in the pixels of the image read: `toPad` maps them onto the pad.
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
    const image = seen.createImageData(28, 28);
    result.input.forEach((row, r) => row.forEach((v, c) => {
      const i = 4 * (28 * r + c);
      image.data[i] = image.data[i + 1] = image.data[i + 2] = v;
      image.data[i + 3] = 255;
    }));
    seen.putImageData(image, 0, 0);
    statusLine.textContent = "";
  }

  // #number's data-settled is "yes" once what it shows is the reading of the pad as it is
  // now (no newer change, nothing in flight): what scripts and tests wait for.
  let busy = false, again = false, version = 0;
  function changed() { version += 1; numberLine.dataset.settled = "no"; }

  async function readNow() {
    if (busy) { again = true; return; }  // one reading at a time; the latest wins
    busy = true;
    const sent = version;
    try {
      await reader.ready;
      if (!strokes.length && !uploaded) { showNothing(); return; }
      if (uploaded) {
        const u = uploaded;
        const result = await reader.readUpload(u);
        show(result, ([x0, y0, x1, y1]) => [u.left + x0 * u.scale, u.top + y0 * u.scale,
                                            u.left + x1 * u.scale, u.top + y1 * u.scale]);
      } else {
        show(await reader.readPad(pad), box => box);
      }
    } catch (e) {
      showNothing(e.message || String(e));
    } finally {
      busy = false;
      if (again || sent !== version) { again = false; readNow(); }
      else numberLine.dataset.settled = "yes";
    }
  }

  let timer = null;
  function readSoon() { clearTimeout(timer); timer = setTimeout(readNow, 120); }  // while writing

  let drawing = false;
  function point(event) {
    const box = pad.getBoundingClientRect();
    return { x: (event.clientX - box.left) * pad.width / box.width,
             y: (event.clientY - box.top) * pad.height / box.height };
  }
  pad.addEventListener("pointerdown", event => {
    drawing = true;
    pad.setPointerCapture(event.pointerId);
    uploaded = null;
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
  document.getElementById("upload").addEventListener("change", async event => {
    const file = event.target.files[0];
    event.target.value = "";
    if (!file) return;
    changed();
    let image = null, size = null;
    try { size = await headerSize(file); } catch (e) { size = null; }
    const tooLarge = size !== null && size.width * size.height > MAX_IMAGE_PIXELS;
    if (!tooLarge) {  // a bomb is not decoded here: the reader refuses it by its size
      try { image = await createImageBitmap(file); } catch (e) { image = null; }
    }
    // Shown on the pad, scaled to fit; the file itself is read, at its own resolution.
    const scale = image ? Math.min(pad.width / image.width, pad.height / image.height) : 1;
    uploaded = { file, image, size: tooLarge ? size : null, scale, left: image ? (pad.width - image.width * scale) / 2 : 0,
                 top: image ? (pad.height - image.height * scale) / 2 : 0 };
    strokes = [];
    repaint();
    readNow();
  });

  repaint();
  showNothing(statusLine.textContent);
  reader.ready.then(() => { statusLine.textContent = ""; readNow(); },
                    e => { statusLine.textContent = `could not start: ${e.message || e}`; });
}
