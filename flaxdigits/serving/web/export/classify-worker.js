// A second runner of model.onnx for the exported page (page.js starts one per spare core):
// onnxruntime-web's threads need a cross-origin isolated page, which a plain static host
// does not serve, so a batch of candidates is split between the page and these workers.
import * as ort from "./ort.wasm.bundle.min.mjs";

ort.env.wasm.numThreads = 1;
let session = null;

onmessage = async event => {
  const { id, url, images, count } = event.data;
  try {
    if (url) {
      session = await ort.InferenceSession.create(url, { executionProviders: ["wasm"] });
      postMessage({ id });
      return;
    }
    const result = await session.run({ images: new ort.Tensor("float32", images, [count, 28, 28, 1]) });
    const probabilities = result.probabilities.data;
    postMessage({ id, probabilities }, [probabilities.buffer]);
  } catch (e) {
    postMessage({ id, error: String(e) });
  }
};
