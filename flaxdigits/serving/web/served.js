// The served page: the pad (pad.js), read by flaxdigits' server through POST /api/predict.
import { startPad } from "./pad.js";

async function post(body, type) {
  let response;
  try {
    response = await fetch("/api/predict", { method: "POST", headers: { "Content-Type": type }, body });
  } catch (e) {
    throw new Error(`server unreachable: ${e}`);
  }
  const result = await response.json();
  if (!response.ok) throw new Error(result.error || `error ${response.status}`);
  return result;
}

startPad({
  ready: Promise.resolve(),
  readPad: pad => new Promise(resolve => pad.toBlob(resolve, "image/png"))
    .then(blob => post(blob, "image/png")),
  // The file as it is (the server decodes it, and says why where it cannot).
  readUpload: ({ file }) => post(file, ["image/png", "image/jpeg"].includes(file.type)
    ? file.type : file.type || "application/octet-stream"),
});
