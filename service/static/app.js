// The flowserve playground: plain ES module, no build step, talks only to this server.
const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "flowserve-api-key";

const state = {
  models: [],          // GET /models entries
  defaultModel: null,
  samples: [],         // base64 PNGs of the last Sample-tab grid
  drawn: false,        // has the pad anything on it?
};

// ---- API ---------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

async function api(path, body) {
  const headers = {};
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) headers["X-API-Key"] = key;
  const init = { method: body === undefined ? "GET" : "POST", headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "network", `cannot reach the server (${err.message})`, null);
  }
  if (response.ok) return response.json();
  let code = "http_error";
  let message = response.statusText || "request failed";
  try {
    const payload = await response.json();
    if (payload && payload.error) ({ code, message } = payload.error);
  } catch {
    // not JSON (a proxy's error page, say): keep the status text
  }
  throw new ApiError(response.status, code, message, response.headers.get("Retry-After"));
}

function describe(err) {
  if (!(err instanceof ApiError)) return `Error: ${err.message || err}.`;
  if (err.status === 0) return `Network error: ${err.message}.`;
  if (err.status === 503 || err.status === 429) {
    const wait = err.retryAfter ? ` Try again in ${err.retryAfter} s.` : " Try again in a moment.";
    const what = err.code === "overloaded" ? "The server is overloaded" : "The server is not ready";
    return `${what} (${err.status}): ${err.message}.${wait}`;
  }
  if (err.status === 401) return `Not authorised (401): ${err.message}. Enter the API key.`;
  if (err.status >= 500) return `Server error (${err.status} ${err.code}): ${err.message}.`;
  return `Request rejected (${err.status} ${err.code}): ${err.message}.`;
}

function showError(err) {
  const box = $("message");
  box.textContent = describe(err);
  box.hidden = false;
  if (err instanceof ApiError && err.status === 401) askForKey();
}

function clearError() {
  $("message").hidden = true;
  $("message").textContent = "";
}

async function busy(button, work) {
  button.disabled = true;
  button.setAttribute("aria-busy", "true");
  try {
    clearError();
    await work();
  } catch (err) {
    showError(err);
  } finally {
    button.disabled = false;
    button.removeAttribute("aria-busy");
  }
}

function timingsText(t) {
  return `queue ${t.queue_ms.toFixed(1)} ms · inference ${t.inference_ms.toFixed(1)} ms · ` +
    `total ${t.total_ms.toFixed(1)} ms`;
}

function pngImage(b64, alt) {
  const img = document.createElement("img");
  img.src = `data:image/png;base64,${b64}`;
  img.alt = alt;
  return img;
}

// ---- API key and models ------------------------------------------------------------------------
function askForKey() {
  $("app").hidden = true;
  $("key-form").hidden = false;
  $("api-key").focus();
}

async function loadModels() {
  let list;
  try {
    list = await api("/models");
  } catch (err) {
    showError(err);
    return;
  }
  clearError();
  state.models = list.models;
  state.defaultModel = list.default;
  const select = $("model");
  select.replaceChildren();
  for (const m of list.models) {
    const option = document.createElement("option");
    option.value = m.name;
    option.textContent = `${m.name} (${m.architecture})`;
    option.selected = m.name === list.default;
    select.append(option);
  }
  showModelInfo();
  $("key-form").hidden = true;
  $("app").hidden = false;
}

function currentModel() {
  return $("model").value;
}

function showModelInfo() {
  const m = state.models.find((x) => x.name === currentModel());
  if (!m) {
    $("model-info").textContent = "";
    return;
  }
  const bpd = m.test_bits_per_dim == null ? "n/a" : m.test_bits_per_dim.toFixed(3);
  $("model-info").textContent =
    `${m.architecture} · ${m.num_parameters.toLocaleString("en")} parameters · test ${bpd} bits/dim · ` +
    `sampling on ${m.backend.sample}, scoring on ${m.backend.logprob}`;
}

// ---- tabs --------------------------------------------------------------------------------------
function selectTab(tab) {
  for (const t of document.querySelectorAll('[role="tab"]')) {
    const on = t === tab;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
    $(t.getAttribute("aria-controls")).hidden = !on;
  }
  tab.focus();
}

function setUpTabs() {
  const tabs = [...document.querySelectorAll('[role="tab"]')];
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => selectTab(tab));
    tab.addEventListener("keydown", (event) => {
      const step = { ArrowRight: 1, ArrowLeft: -1 }[event.key];
      if (step) selectTab(tabs[(i + step + tabs.length) % tabs.length]);
      if (event.key === "Home") selectTab(tabs[0]);
      if (event.key === "End") selectTab(tabs[tabs.length - 1]);
    });
  });
}

// ---- Sample ------------------------------------------------------------------------------------
function newSeed() {
  return Math.floor(Math.random() * 2 ** 31);
}

async function sample() {
  const n = Number($("num-samples").value);
  $("grid").replaceChildren();
  $("sample-timings").textContent = "sampling…";
  const body = {
    model: currentModel(),
    num_samples: n,
    temperature: Number($("temperature").value),
    seed: Number($("seed").value),
    format: "png",
  };
  try {
    const result = await api("/sample", body);
    state.samples = result.images;
    $("grid").replaceChildren(...result.images.map((b64, i) => pngImage(b64, `sample ${i + 1}`)));
    $("sample-timings").textContent = `${result.model}, seed ${result.seed}: ${timingsText(result.timings)}`;
    refreshSources();
  } catch (err) {
    $("sample-timings").textContent = "";
    throw err;
  }
}

// ---- Score: drawing pad, preview, upload -------------------------------------------------------
function imageShape() {
  const m = state.models.find((x) => x.name === currentModel()) || state.models[0];
  return m ? m.image_shape : [1, 28, 28];
}

function clearPad() {
  const pad = $("pad").getContext("2d");
  pad.fillStyle = "#000";
  pad.fillRect(0, 0, $("pad").width, $("pad").height);
  const preview = $("preview").getContext("2d");
  preview.fillStyle = "#000";
  preview.fillRect(0, 0, $("preview").width, $("preview").height);
  state.drawn = false;
}

function updatePreview() {
  const preview = $("preview").getContext("2d");
  preview.imageSmoothingEnabled = true;
  preview.imageSmoothingQuality = "high";
  preview.fillStyle = "#000";
  preview.fillRect(0, 0, $("preview").width, $("preview").height);
  preview.drawImage($("pad"), 0, 0, $("preview").width, $("preview").height);
}

// The scored pixels: the preview as nested arrays, (H, W) for grey models or (H, W, C) for colour.
function previewPixels() {
  const [channels, h, w] = imageShape();
  const data = $("preview").getContext("2d").getImageData(0, 0, w, h).data;
  const rows = [];
  for (let y = 0; y < h; y++) {
    const row = [];
    for (let x = 0; x < w; x++) {
      const i = 4 * (y * w + x);
      if (channels === 1) row.push(Math.round(0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2]));
      else row.push([data[i], data[i + 1], data[i + 2]]);
    }
    rows.push(row);
  }
  return rows;
}

function setUpPad() {
  const canvas = $("pad");
  const ctx = canvas.getContext("2d");
  let last = null;
  const point = (event) => {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * canvas.width / box.width, (event.clientY - box.top) * canvas.height / box.height];
  };
  const stroke = (from, to) => {
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = 22;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(...from);
    ctx.lineTo(...to);
    ctx.stroke();
  };
  canvas.addEventListener("pointerdown", (event) => {
    canvas.setPointerCapture(event.pointerId);
    last = point(event);
    stroke(last, last);
    state.drawn = true;
  });
  canvas.addEventListener("pointermove", (event) => {
    if (!last) return;
    const next = point(event);
    stroke(last, next);
    last = next;
  });
  const end = () => {
    if (!last) return;
    last = null;
    updatePreview();
    refreshSources();
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);
  canvas.addEventListener("dragover", (event) => {
    event.preventDefault();
    canvas.classList.add("dragover");
  });
  canvas.addEventListener("dragleave", () => canvas.classList.remove("dragover"));
  canvas.addEventListener("drop", (event) => {
    event.preventDefault();
    canvas.classList.remove("dragover");
    const file = event.dataTransfer.files[0];
    if (file) loadFile(file);
  });
  canvas.addEventListener("keydown", (event) => {
    if (event.key === "Delete" || event.key === "Backspace") clearPad();
  });
  $("upload").addEventListener("change", () => {
    const file = $("upload").files[0];
    if (file) loadFile(file);
  });
  $("clear").addEventListener("click", () => {
    clearPad();
    refreshSources();
  });
  clearPad();
}

// An uploaded or dropped image goes straight into the preview (scaled to the model's size), and is
// shown enlarged on the pad so that strokes can be added to it.
async function loadFile(file) {
  try {
    clearError();
    const bitmap = await createImageBitmap(file);
    clearPad();
    const preview = $("preview").getContext("2d");
    preview.imageSmoothingEnabled = true;
    preview.drawImage(bitmap, 0, 0, $("preview").width, $("preview").height);
    const pad = $("pad").getContext("2d");
    pad.imageSmoothingEnabled = false;
    pad.drawImage($("preview"), 0, 0, $("pad").width, $("pad").height);
    state.drawn = true;
    refreshSources();
  } catch (err) {
    showError(new Error(`cannot read ${file.name} as an image (use a PNG, JPEG, GIF or WebP file)`));
  }
}

function scoreCell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

// Percentile among the model's test images and the out-of-distribution verdict (docs/math.md §8); a model
// without reference statistics says so instead.
function oodCells(r, ood) {
  if (!ood) return [scoreCell("n/a", "percentile"), scoreCell("no statistics", "ood")];
  const percentile = scoreCell(`${r.log_prob_percentile.toFixed(1)}%`, "percentile");
  const s = r.ood_score === null ? "∞" : r.ood_score.toFixed(0);
  const verdict = scoreCell(`${r.is_outlier ? "outlier" : "in distribution"} (${s})`, "ood");
  verdict.classList.add(r.is_outlier ? "outlier" : "inlier");
  return [percentile, verdict];
}

async function score() {
  const k = Math.max(1, Math.min(64, Number($("k-samples").value) || 1));
  $("k-header").textContent = `bits/dim, K = ${k}`;
  const pixels = previewPixels();
  const tbody = document.querySelector("#scores tbody");
  tbody.replaceChildren();
  $("scores-wrap").hidden = false;
  const rows = await Promise.all(
    state.models.map(async (m) => {
      const tr = document.createElement("tr");
      tr.dataset.model = m.name;
      const th = document.createElement("th");
      th.scope = "row";
      th.textContent = m.name;
      tr.append(th);
      try {
        const ood = Boolean(m.ood && m.ood.available);
        const [one, many] = await Promise.all([
          api("/logprob", ood ? { model: m.name, images: [pixels], ood } : { model: m.name, images: [pixels] }),
          k > 1 ? api("/logprob", { model: m.name, images: [pixels], dequantization_samples: k }) : null,
        ]);
        const r = one.results[0];
        tr.append(scoreCell(r.bits_per_dim.toFixed(4), "bpd"), ...oodCells(r, ood));
        tr.append(
          scoreCell(r.log_prob.toFixed(2), "logp"),
          scoreCell(many ? many.results[0].bits_per_dim.toFixed(4) : "same", "bpd-k"),
        );
        return [tr, null];
      } catch (err) {
        const td = scoreCell(describe(err), "error");
        td.colSpan = 5;
        tr.append(td);
        return [tr, err];
      }
    }),
  );
  tbody.replaceChildren(...rows.map(([tr]) => tr));
  const failed = rows.find(([, err]) => err);
  if (failed) showError(failed[1]);
}

// ---- Interpolate -------------------------------------------------------------------------------
function refreshSources() {
  for (const which of ["start", "end"]) {
    const select = $(`${which}-source`);
    const previous = select.value;
    const options = [["seed", "a random sample (seed)"]];
    if (state.drawn) options.push(["drawing", "your drawing (Score tab)"]);
    state.samples.forEach((_, i) => options.push([`sample:${i}`, `Sample tab image ${i + 1}`]));
    select.replaceChildren(
      ...options.map(([value, label]) => {
        const option = document.createElement("option");
        option.value = value;
        option.textContent = label;
        return option;
      }),
    );
    if (options.some(([value]) => value === previous)) select.value = previous;
    showSeed(which);
  }
}

function showSeed(which) {
  $(`${which}-seed`).closest("label").hidden = $(`${which}-source`).value !== "seed";
}

function endpoint(which) {
  const source = $(`${which}-source`).value;
  if (source === "drawing") return { image: previewPixels() };
  if (source.startsWith("sample:")) return { image: state.samples[Number(source.slice(7))] };
  return { seed: Number($(`${which}-seed`).value), temperature: Number($("temperature").value) };
}

async function interpolate() {
  $("strip").replaceChildren();
  $("interp-timings").textContent = "interpolating…";
  const body = {
    model: currentModel(),
    start: endpoint("start"),
    end: endpoint("end"),
    steps: Number($("steps").value),
    method: $("method").value,
    format: "png",
  };
  try {
    const result = await api("/interpolate", body);
    $("strip").replaceChildren(
      ...result.images.map((b64, i) => {
        const figure = document.createElement("figure");
        const caption = document.createElement("figcaption");
        caption.textContent = `t = ${result.t[i].toFixed(2)}`;
        figure.append(pngImage(b64, `step ${i + 1} of ${result.steps}, t = ${result.t[i].toFixed(2)}`), caption);
        return figure;
      }),
    );
    $("interp-timings").textContent = `${result.model}, ${result.method}: ${timingsText(result.timings)}`;
  } catch (err) {
    $("interp-timings").textContent = "";
    throw err;
  }
}

// ---- wiring ------------------------------------------------------------------------------------
function main() {
  setUpTabs();
  setUpPad();
  refreshSources();
  $("model").addEventListener("change", showModelInfo);
  $("temperature").addEventListener("input", () => {
    $("temperature-value").textContent = Number($("temperature").value).toFixed(2);
  });
  $("new-seed").addEventListener("click", () => {
    $("seed").value = newSeed();
  });
  $("sample-form").addEventListener("submit", (event) => {
    event.preventDefault();
    busy($("sample-button"), sample);
  });
  $("score-button").addEventListener("click", () => busy($("score-button"), score));
  $("interp-form").addEventListener("submit", (event) => {
    event.preventDefault();
    busy($("interpolate-button"), interpolate);
  });
  for (const which of ["start", "end"]) {
    $(`${which}-source`).addEventListener("change", () => showSeed(which));
  }
  $("key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORAGE, $("api-key").value);
    $("api-key").value = "";
    await loadModels();
  });
  loadModels();
}

main();
