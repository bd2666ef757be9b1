// The kiosk page: consent, camera (or a file), style, progress from the job's event stream, the result.
// Plain JavaScript, no build step. Nothing is stored: no cookies, no localStorage; "Start over" (or walking
// away) forgets the photo and the portrait, and the server is told to forget the job.
"use strict";

const IDLE_SECONDS = 120; // on the result or error screen, then the page starts over by itself
// A kiosk operator may preset these job fields in the page's address, e.g. /?steps=8&width=768&height=768
const PRESET_FIELDS = ["prompt", "negative_prompt", "seed", "steps", "guidance", "ip_scale", "identitynet_scale",
  "width", "height", "sampler", "decoder"];

const $ = (id) => document.getElementById(id);
const page = {
  token: null, // from the address's #token=... (never sent in a URL, never stored)
  stream: null, // the camera's MediaStream
  photo: null, // Blob of the captured or chosen photo
  jobId: null,
  abort: null, // AbortController of the running requests
  resultUrl: null,
  idleTimer: null,
  ready: false,
};

function readToken() {
  const match = location.hash.match(/token=([^&]+)/);
  if (match) {
    page.token = decodeURIComponent(match[1]);
    history.replaceState(null, "", location.pathname + location.search);
  }
}

function api(path, init = {}) {
  const headers = new Headers(init.headers || {});
  if (page.token) headers.set("Authorization", `Bearer ${page.token}`);
  return fetch(path, { ...init, headers, cache: "no-store" });
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.message) return body.message;
  } catch (_) { /* not JSON */ }
  return `The server answered ${response.status}.`;
}

function show(step) {
  for (const section of document.querySelectorAll("main > section")) section.hidden = section.id !== `step-${step}`;
  const title = document.querySelector(`#step-${step} h2`);
  if (title) title.focus();
  armIdleTimer();
}

// On the result and error screens, the page starts over by itself when nobody touches it for a while.
function armIdleTimer() {
  clearTimeout(page.idleTimer);
  if (!$("step-result").hidden || !$("step-error").hidden) page.idleTimer = setTimeout(startOver, IDLE_SECONDS * 1000);
}

function setStatus(text) { $("status").textContent = text; }

// -- readiness and styles

async function waitUntilReady() {
  for (;;) {
    try {
      const response = await fetch("/readyz", { cache: "no-store" });
      const body = await response.json();
      if (response.ok && body.ready) {
        page.ready = true;
        setStatus("");
        updateCreateButton();
        return;
      }
      setStatus(`Getting ready: ${body.detail || "loading"}…`);
    } catch (_) {
      setStatus("Waiting for the server…");
    }
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

async function loadStyles() {
  const list = $("style-list");
  const response = await api("/v1/styles");
  if (!response.ok) {
    setStatus(await errorMessage(response));
    return;
  }
  const { styles } = await response.json();
  list.replaceChildren();
  styles.forEach((style, index) => {
    const label = document.createElement("label");
    const input = document.createElement("input");
    input.type = "radio";
    input.name = "style";
    input.value = style.name;
    input.checked = index === 0;
    label.append(input, document.createTextNode(style.label));
    list.append(label);
  });
}

// -- consent and camera

function onConsentChange() { $("consent-continue").disabled = !$("consent-box").checked; }

async function startCamera() {
  const message = $("camera-message");
  message.hidden = true;
  $("capture").hidden = false;
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    cameraUnavailable("This browser offers no camera here.");
    return;
  }
  try {
    page.stream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 1280 }, height: { ideal: 960 }, facingMode: "user" },
      audio: false,
    });
    $("preview").srcObject = page.stream;
  } catch (error) {
    cameraUnavailable(`No camera available (${error.name}).`);
  }
}

function cameraUnavailable(reason) {
  const message = $("camera-message");
  message.textContent = `${reason} Choose a photo instead.`;
  message.hidden = false;
  $("capture").hidden = true;
}

function stopCamera() {
  if (page.stream) page.stream.getTracks().forEach((track) => track.stop());
  page.stream = null;
  $("preview").srcObject = null;
}

function showSnapshot(visible) {
  $("snapshot").hidden = !visible;
  $("preview").hidden = visible;
  $("retake").hidden = !visible || !page.stream;
  $("capture").hidden = visible || !page.stream;
}

function capture() {
  const video = $("preview");
  if (!video.videoWidth) return;
  const canvas = $("snapshot");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  canvas.toBlob((blob) => {
    page.photo = blob;
    showSnapshot(true);
    updateCreateButton();
    $("create").focus();
  }, "image/jpeg", 0.92);
}

async function chooseFile(event) {
  const file = event.target.files[0];
  if (!file) return;
  page.photo = file;
  const canvas = $("snapshot");
  try {
    const bitmap = await createImageBitmap(file);
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
    canvas.getContext("2d").drawImage(bitmap, 0, 0);
    bitmap.close();
  } catch (_) {
    canvas.width = canvas.height = 0; // the server will say what is wrong with it
  }
  showSnapshot(true);
  updateCreateButton();
  $("create").focus();
}

function retake() {
  page.photo = null;
  showSnapshot(false);
  updateCreateButton();
}

function updateCreateButton() { $("create").disabled = !(page.photo && page.ready); }

// -- the job

async function createPortrait() {
  if (!page.photo) return;
  page.abort = new AbortController();
  $("progress").value = 0;
  $("progress").max = 1;
  $("progress-text").textContent = "Sending your photo…";
  show("progress");
  const form = new FormData();
  form.append("face", page.photo, page.photo.name || "photo.jpg");
  const style = document.querySelector("input[name=style]:checked");
  if (style) form.append("style", style.value);
  const preset = new URLSearchParams(location.search);
  for (const name of PRESET_FIELDS) if (preset.has(name)) form.append(name, preset.get(name));
  try {
    const response = await api("/v1/jobs", { method: "POST", body: form, signal: page.abort.signal });
    if (!response.ok) {
      let text = await errorMessage(response);
      if (response.status === 429) text = `The booth is busy. Please try again in ${response.headers.get("Retry-After") || "a few"} seconds.`;
      showError(text);
      return;
    }
    const job = await response.json();
    page.jobId = job.id;
    await followJob(job.id);
  } catch (error) {
    if (error.name !== "AbortError") showError("The connection to the server was lost. Please try again.");
  }
}

async function followJob(jobId) {
  const response = await api(`/v1/jobs/${jobId}/events`, { signal: page.abort.signal });
  if (!response.ok) {
    showError(await errorMessage(response));
    return;
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
      const event = parseEvent(block);
      if (event && (await onEvent(jobId, event))) return;
    }
  }
  showError("The server stopped reporting on your portrait. Please try again.");
}

function parseEvent(block) {
  let kind = "message";
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (line.startsWith(":")) continue; // keep-alive comment
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") kind = value;
    if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  return { kind, data: JSON.parse(data.join("\n")) };
}

// Returns true when the job is over.
async function onEvent(jobId, event) {
  const progress = $("progress");
  const text = $("progress-text");
  switch (event.kind) {
    case "queued":
      text.textContent = event.data.queue_position > 1
        ? `Waiting in line: ${event.data.queue_position - 1} ahead of you…` : "You are next…";
      return false;
    case "started":
      progress.max = event.data.total;
      progress.value = 0;
      text.textContent = "Starting…";
      return false;
    case "step":
      progress.max = event.data.total;
      progress.value = event.data.step;
      text.textContent = `Step ${event.data.step} of ${event.data.total}`;
      return false;
    case "done":
      progress.value = progress.max;
      text.textContent = "Done.";
      await showResult(jobId);
      return true;
    case "error":
      showError(event.data.message || "The portrait could not be made.");
      forgetJob();
      return true;
    case "cancelled":
      forgetJob();
      return true;
    default:
      return false;
  }
}

async function showResult(jobId) {
  const response = await api(`/v1/jobs/${jobId}/image`, { signal: page.abort.signal });
  if (!response.ok) {
    showError(await errorMessage(response));
    return;
  }
  const blob = await response.blob();
  forgetJob(); // downloaded: the server keeps nothing from here on
  page.resultUrl = URL.createObjectURL(blob);
  const image = $("result");
  await new Promise((resolve) => {
    image.onload = resolve;
    image.onerror = resolve;
    image.src = page.resultUrl;
  });
  $("download").href = page.resultUrl;
  show("result");
}

function forgetJob() {
  if (!page.jobId) return;
  const jobId = page.jobId;
  page.jobId = null;
  api(`/v1/jobs/${jobId}`, { method: "DELETE", keepalive: true }).catch(() => {});
}

function showError(message) {
  $("error-message").textContent = message;
  show("error");
}

function cancelJob() {
  if (page.abort) page.abort.abort();
  forgetJob();
  show("capture");
}

function tryAgain() {
  show("capture");
  updateCreateButton();
}

// Forget everything: the job on the server, the photo, the portrait, the consent.
function startOver() {
  if (page.abort) page.abort.abort();
  page.abort = null;
  forgetJob();
  stopCamera();
  if (page.resultUrl) URL.revokeObjectURL(page.resultUrl);
  page.resultUrl = null;
  page.photo = null;
  $("result").removeAttribute("src");
  $("download").removeAttribute("href");
  const canvas = $("snapshot");
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
  canvas.width = canvas.height = 0;
  $("upload").value = "";
  $("consent-box").checked = false;
  onConsentChange();
  $("progress").value = 0;
  $("progress-text").textContent = "";
  $("error-message").textContent = "";
  showSnapshot(false);
  updateCreateButton();
  const first = document.querySelector("input[name=style]");
  if (first) first.checked = true;
  show("consent");
}

function init() {
  readToken();
  $("consent-box").addEventListener("change", onConsentChange);
  $("consent-continue").addEventListener("click", () => { show("capture"); startCamera(); });
  $("capture").addEventListener("click", capture);
  $("retake").addEventListener("click", retake);
  $("upload").addEventListener("change", chooseFile);
  $("create").addEventListener("click", createPortrait);
  $("cancel").addEventListener("click", cancelJob);
  $("try-again").addEventListener("click", tryAgain);
  for (const button of document.querySelectorAll(".start-over")) button.addEventListener("click", startOver);
  document.addEventListener("pointerdown", armIdleTimer);
  document.addEventListener("keydown", armIdleTimer);
  loadStyles().catch(() => setStatus("Could not load the styles."));
  waitUntilReady();
}

init();
