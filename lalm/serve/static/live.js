// lalm web page, live-microphone mode: the microphone streams to /v1/realtime (OpenAI's
// realtime transcription events) as 16 kHz PCM16 in 100-ms chunks; transcripts appear as the
// server's deltas arrive, one line per segment, final when its "completed" event comes.
"use strict";

const live = { ws: null, context: null, stream: null, items: new Map(), sent: 0, completed: 0 };
const RATE = 16000;
const CHUNK = RATE / 10;

// Streaming linear-interpolation resampler: Float32 blocks at `from` Hz -> `to` Hz. `t` is the
// next output sample's position in the current block; position -1 is the previous block's last.
function resampler(from, to) {
  const step = from / to;
  let t = 0;
  let last = 0;
  return (block) => {
    const out = [];
    for (; t < block.length - 1; t += step) {
      const i = Math.floor(t);
      const a = i < 0 ? last : block[i];
      out.push(a + (block[i + 1] - a) * (t - i));
    }
    t -= block.length;
    last = block[block.length - 1];
    return Float32Array.from(out);
  };
}

function pcm16Base64(samples) {
  const view = new DataView(new ArrayBuffer(samples.length * 2));
  samples.forEach((x, i) => view.setInt16(2 * i, Math.max(-1, Math.min(1, x)) * 32767, true));
  return base64(new Uint8Array(view.buffer));
}

function liveLine(item) {
  let li = live.items.get(item);
  if (!li) {
    li = document.createElement("li");
    li.className = "transcript streaming";
    li.dataset.item = item;
    $("live-log").appendChild(li);
    live.items.set(item, li);
  }
  return li;
}

function onEvent(message) {
  const e = JSON.parse(message.data);
  if (e.type === "input_audio_buffer.speech_started") {
    liveLine(e.item_id);
    $("live-status").textContent = "hearing speech…";
  } else if (e.type === "input_audio_buffer.committed") {
    liveLine(e.item_id);
  } else if (e.type === "conversation.item.input_audio_transcription.delta") {
    liveLine(e.item_id).textContent += e.delta;
  } else if (e.type === "conversation.item.input_audio_transcription.completed") {
    const li = liveLine(e.item_id);
    li.textContent = e.transcript;
    li.classList.remove("streaming");
    li.dataset.done = "true";
    live.completed += 1;
    $("live-status").textContent = `${live.completed} segment(s) transcribed`;
  } else if (e.type === "conversation.item.input_audio_transcription.failed") {
    const li = liveLine(e.item_id);
    li.className = "error";
    li.textContent = `error: ${e.error.message}`;
  } else if (e.type === "error") {
    // the final commit sent on stop finds nothing left when the server's VAD already took it
    if (!live.ws && e.error.code === "input_audio_buffer_commit_empty") return;
    $("live-status").textContent = `error: ${e.error.message}`;
  }
}

async function startLive() {
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1 } });
  } catch (e) {
    $("live-status").textContent = `no microphone: ${e.message}`;
    return;
  }
  const key = $("api-key").value.trim();
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const protocols = ["realtime"].concat(key ? [`openai-insecure-api-key.${key}`] : []);
  const ws = new WebSocket(`${scheme}//${location.host}/v1/realtime?intent=transcription`,
                           protocols);
  ws.onmessage = onEvent;
  ws.onclose = () => { if (live.ws === ws) stopLive(); };
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; })
    .catch(() => { $("live-status").textContent = "cannot open the realtime connection"; });
  if (ws.readyState !== WebSocket.OPEN) { stream.getTracks().forEach((t) => t.stop()); return; }
  const context = new AudioContext();
  await context.audioWorklet.addModule("/static/capture-worklet.js");
  const source = context.createMediaStreamSource(stream);
  const node = new AudioWorkletNode(context, "capture");
  const resample = resampler(context.sampleRate, RATE);
  let pending = new Float32Array(0);
  node.port.onmessage = (m) => {
    const fresh = resample(m.data);
    const joined = new Float32Array(pending.length + fresh.length);
    joined.set(pending);
    joined.set(fresh, pending.length);
    let at = 0;
    for (; joined.length - at >= CHUNK; at += CHUNK) {
      if (ws.readyState !== WebSocket.OPEN) return;
      ws.send(JSON.stringify({ type: "input_audio_buffer.append",
                               audio: pcm16Base64(joined.subarray(at, at + CHUNK)) }));
      live.sent += 1;
    }
    pending = joined.slice(at);
  };
  source.connect(node);
  Object.assign(live, { ws, context, stream });
  $("live").textContent = "Stop live";
  $("live").classList.add("recording");
  $("live-status").textContent = "listening…";
}

function stopLive() {
  const { ws, context, stream } = live;
  Object.assign(live, { ws: null, context: null, stream: null });
  if (stream) stream.getTracks().forEach((t) => t.stop());
  if (context) context.close();
  if (ws && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify({ type: "input_audio_buffer.commit" }));  // the last words
    setTimeout(() => ws.close(), 10000);  // time for their transcript
  }
  $("live").textContent = "Live";
  $("live").classList.remove("recording");
}

$("live").addEventListener("click", () => (live.ws ? stopLive() : startLive()));
