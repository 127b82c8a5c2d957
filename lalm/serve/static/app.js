// lalm web page: attach audio (upload or record), ask, read the streamed answer.
// Audio is decoded in the browser and sent as 16 kHz mono 16-bit WAV (input_audio parts),
// so any format the browser plays works, whatever decoders the server has.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, messages: [], pending: null, recorder: null };

function headers() {
  const h = { "content-type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.authorization = `Bearer ${key}`;
  return h;
}

async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error ? body.error.message : r.statusText);
    state.model = body.data[0].id;
    $("model").textContent = `model: ${state.model}`;
  } catch (e) {
    $("model").textContent = `cannot list models: ${e.message}`;
  }
}

// Float32 mono samples at 16 kHz -> a WAV file's bytes (PCM 16-bit).
function wavBytes(samples) {
  const view = new DataView(new ArrayBuffer(44 + samples.length * 2));
  const text = (at, s) => [...s].forEach((c, i) => view.setUint8(at + i, c.charCodeAt(0)));
  text(0, "RIFF"); view.setUint32(4, 36 + samples.length * 2, true); text(8, "WAVE");
  text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true);
  view.setUint16(22, 1, true); view.setUint32(24, 16000, true); view.setUint32(28, 32000, true);
  view.setUint16(32, 2, true); view.setUint16(34, 16, true);
  text(36, "data"); view.setUint32(40, samples.length * 2, true);
  samples.forEach((x, i) => view.setInt16(44 + 2 * i, Math.max(-1, Math.min(1, x)) * 32767, true));
  return new Uint8Array(view.buffer);
}

function base64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

async function attach(blob, label) {
  $("clip").textContent = `decoding ${label}…`;
  try {
    const decoded = await new AudioContext().decodeAudioData(await blob.arrayBuffer());
    const frames = Math.max(1, Math.ceil(decoded.duration * 16000));
    const offline = new OfflineAudioContext(1, frames, 16000);
    const source = offline.createBufferSource();
    source.buffer = decoded;
    source.connect(offline.destination);
    source.start();
    const wav = wavBytes((await offline.startRendering()).getChannelData(0));
    state.pending = { type: "input_audio", input_audio: { data: base64(wav), format: "wav" } };
    $("clip").textContent = `${label} (${decoded.duration.toFixed(1)} s) attached`;
    $("player").src = URL.createObjectURL(new Blob([wav], { type: "audio/wav" }));
    $("player").hidden = false;
  } catch (e) {
    state.pending = null;
    $("clip").textContent = `cannot decode ${label}: ${e.message}`;
  }
}

async function toggleRecording() {
  const button = $("record");
  if (state.recorder) { state.recorder.stop(); return; }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (e) {
    $("clip").textContent = `no microphone: ${e.message}`;
    return;
  }
  const chunks = [];
  const recorder = new MediaRecorder(stream);
  recorder.ondataavailable = (e) => chunks.push(e.data);
  recorder.onstop = () => {
    stream.getTracks().forEach((t) => t.stop());
    state.recorder = null;
    button.textContent = "Record";
    button.classList.remove("recording");
    attach(new Blob(chunks, { type: recorder.mimeType }), "recording");
  };
  recorder.start();
  state.recorder = recorder;
  button.textContent = "Stop";
  button.classList.add("recording");
}

function addEntry(role, text) {
  const li = document.createElement("li");
  li.className = role;
  li.textContent = text;
  $("log").appendChild(li);
  li.scrollIntoView({ block: "end" });
  return li;
}

async function ask(event) {
  event.preventDefault();
  const question = $("question").value.trim();
  if (!question && !state.pending) return;
  const content = [];
  if (state.pending) content.push(state.pending);
  if (question) content.push({ type: "text", text: question });
  addEntry("user", (state.pending ? "[audio] " : "") + question);
  state.messages.push({ role: "user", content });
  state.pending = null;
  $("clip").textContent = "no audio attached";
  $("question").value = "";
  $("send").disabled = true;
  const answer = addEntry("assistant streaming", "");
  const started = performance.now();
  try {
    const r = await fetch("/v1/chat/completions", {
      method: "POST", headers: headers(),
      body: JSON.stringify({ model: state.model, messages: state.messages, stream: true }),
    });
    if (!r.ok) {
      const body = await r.json().catch(() => ({}));
      throw new Error(body.error ? body.error.message : `HTTP ${r.status}`);
    }
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      const events = buffer.split("\n\n");
      buffer = events.pop();
      for (const e of events) {
        const data = e.replace(/^data: /, "");
        if (data === "[DONE]") continue;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        const delta = chunk.choices.length ? chunk.choices[0].delta.content : null;
        if (delta) answer.textContent += delta;
      }
    }
    state.messages.push({ role: "assistant", content: answer.textContent });
    $("status").textContent = `answered in ${((performance.now() - started) / 1000).toFixed(2)} s`;
  } catch (e) {
    state.messages.pop();
    answer.className = "error";
    answer.textContent = `error: ${e.message}`;
  } finally {
    answer.classList.remove("streaming");
    answer.dataset.done = "true";
    $("send").disabled = false;
  }
}

$("file").addEventListener("change", (e) => {
  const file = e.target.files[0];
  if (file) attach(file, file.name);
});
$("record").addEventListener("click", toggleRecording);
$("ask").addEventListener("submit", ask);
$("clear").addEventListener("click", () => {
  state.messages = [];
  $("log").replaceChildren();
  $("status").textContent = "";
});
$("api-key").addEventListener("change", loadModel);
loadModel();
