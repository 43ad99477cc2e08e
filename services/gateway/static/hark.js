// hark's web page: microphone -> AudioWorklet (16 kHz Int16, 100 ms frames) or MediaRecorder
// (Opus, 100 ms pieces) -> /ws -> replies.
"use strict";

const FRAME_SAMPLES = 1600; // 100 ms at 16 kHz
const MAX_PENDING = 600; // 60 s of audio kept while the connection is down
const RETRY_FOR_MS = 60000;
const $ = (id) => document.getElementById(id);
let ws = null, ctx = null, stream = null, node = null;
const count = { sent: 0, acks: 0, finals: 0 };
// What a resume needs: the session's credentials, the last final seen, and every
// frame not yet acked (sent or not), numbered as the server will number them.
let session = null, lastFinal = 0, sentSeq = 0, pending = [];
let stopping = false, retryDelay = 200, retryUntil = 0;
let live = false; // a greeting came on this connection: frames may go out
let analyser = null, levelData = null; // the input level meter
let finals = []; // {seq, text, start, end}: what the downloads hold, in order
// Opus: a MediaRecorder per connection (a container is decoded from its start, so a
// resumed session gets a new stream), its pieces sent in the order it made them.
const OPUS_TYPES = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus"];
let recorder = null, opusType = null, made = Promise.resolve();
let fresh = true; // nothing of this recorder's stream has been sent yet

function setState(text) { $("state").textContent = text; }
function bump(name) { count[name] += 1; $(name).textContent = String(count[name]); }
function addItem(list, text) {
  const li = document.createElement("li");
  li.textContent = text;
  $(list).appendChild(li);
  return li;
}

// Runs in the audio thread: resample to 16 kHz, convert to Int16, post 100 ms frames.
const WORKLET = `
class Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.step = sampleRate / 16000;
    this.pos = 0;
    this.frame = new Int16Array(${FRAME_SAMPLES});
    this.fill = 0;
  }
  process(inputs) {
    const input = inputs[0] && inputs[0][0];
    if (!input) return true;
    for (; this.pos < input.length; this.pos += this.step) {
      const i = Math.floor(this.pos), frac = this.pos - i;
      const next = i + 1 < input.length ? input[i + 1] : input[i];
      const s = Math.max(-1, Math.min(1, input[i] + (next - input[i]) * frac));
      this.frame[this.fill++] = s < 0 ? s * 0x8000 : s * 0x7fff;
      if (this.fill === this.frame.length) {
        this.port.postMessage(this.frame.buffer, [this.frame.buffer]);
        this.frame = new Int16Array(${FRAME_SAMPLES});
        this.fill = 0;
      }
    }
    this.pos -= input.length;
    return true;
  }
}
registerProcessor("hark-capture", Capture);
`;

function onReply(event) {
  const msg = JSON.parse(event.data);
  switch (msg.status) {
    case "ready":
      session = { id: msg.session_id, token: msg.resume_token };
      $("session").textContent = msg.session_id;
      $("actor").textContent = msg.actor;
      $("heard").textContent = msg.language === "auto" ? "detecting" : (msg.language || "default");
      $("language").disabled = true; // fixed for the session
      addItem("notes", `connected: session ${msg.session_id.slice(0, 8)}… on ${msg.actor}, ` +
        `${msg.sample_rate} Hz ${msg.encoding}`);
      live = true;
      retryUntil = 0;
      // A new session after one that was lost (bad_resume) needs a stream from its start.
      if (opusType && !fresh) { pending = []; sentSeq = 0; record(); }
      pending.forEach((f) => { ws.send(f.buf); fresh = false; }); // captured while connecting
      setState("streaming");
      break;
    case "resumed":
      if (opusType) { // the rest of the old stream cannot be decoded alone: a new one
        const lost = pending.filter((f) => f.seq > msg.last_seq).length;
        if (lost) addItem("errors", `resumed: ${lost} Opus piece(s) not acked are lost (PCM keeps them)`);
        pending = [];
        sentSeq = msg.last_seq;
        record();
      }
      // The server holds every frame up to last_seq; the rest go again, renumbered in order.
      pending = pending.filter((f) => f.seq > msg.last_seq);
      pending.forEach((f, i) => { f.seq = msg.last_seq + 1 + i; ws.send(f.buf); });
      sentSeq = msg.last_seq + pending.length;
      live = true;
      retryDelay = 200;
      retryUntil = 0;
      setState("streaming");
      addItem("notes", `resumed after seq ${msg.last_seq}, ${msg.replayed} final(s) replayed`);
      break;
    case "received":
      bump("acks");
      while (pending.length && pending[0].seq <= msg.seq) pending.shift();
      break;
    case "transcript":
      if (msg.language) $("heard").textContent = `${msg.language} (detected)`;
      if (msg.final) {
        bump("finals");
        lastFinal = Math.max(lastFinal, msg.seq);
        $("partial").textContent = "";
        addItem("transcripts", msg.text).dataset.seq = String(msg.seq);
        // Times from the final where the engine gives them, else from its chunk (100 ms).
        finals.push({ seq: msg.seq, text: msg.text,
          start: msg.start ?? (msg.seq - 1) * 0.1, end: msg.end ?? msg.seq * 0.1 });
        ["save-txt", "save-srt", "save-vtt"].forEach((id) => { $(id).disabled = false; });
      } else {
        $("partial").textContent = msg.text;
      }
      break;
    case "error":
      addItem("errors", `${msg.code}: ${msg.error}`);
      if (msg.code === "bad_resume") session = null; // the next connection starts afresh
      break;
    case "closed":
      setState("closed");
      showSummary(msg);
      break;
  }
}

// The close's summary, where a person sees it: whether every chunk got its final, and
// if not, which ones did not and why.
function showSummary(msg) {
  const box = $("summary");
  const counts = `${msg.chunks} chunks, ${msg.finals} finals`;
  if (msg.complete) {
    box.textContent = `Closed: ${counts}, transcript complete.`;
    box.className = "summary";
  } else {
    const seqs = (msg.missing_seqs || []).join("-") || "?";
    box.textContent = `Closed, transcript INCOMPLETE: ${counts}; no final for chunks ` +
      `${seqs} (${msg.why || "no reason given"}).`;
    box.className = "summary incomplete";
  }
  box.hidden = false;
}

async function start() {
  $("start").disabled = true;
  setState("asking for the microphone");
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
    });
    ctx = new AudioContext();
    session = null; lastFinal = 0; sentSeq = 0; pending = []; stopping = false;
    $("summary").hidden = true;
    const source = ctx.createMediaStreamSource(stream);
    opusType = $("send").value === "opus" ? OPUS_TYPES.find((t) => MediaRecorder.isTypeSupported(t)) : null;
    if (!opusType) { // PCM: the worklet makes the frames
      const url = URL.createObjectURL(new Blob([WORKLET], { type: "application/javascript" }));
      await ctx.audioWorklet.addModule(url);
      node = new AudioWorkletNode(ctx, "hark-capture");
      node.port.onmessage = (e) => onFrame(e.data);
      source.connect(node);
    }
    $("send").disabled = true;
    if (opusType) record(); // from now: what it makes while connecting waits in pending
    analyser = ctx.createAnalyser();
    analyser.fftSize = 1024;
    levelData = new Float32Array(analyser.fftSize);
    source.connect(analyser);
    requestAnimationFrame(showLevel);
    finals = [];
    ["save-txt", "save-srt", "save-vtt"].forEach((id) => { $(id).disabled = true; });
    $("stop").disabled = false;
    connect();
  } catch (err) {
    addItem("errors", `microphone: ${err.message || err}`);
    setState("idle");
    teardown();
  }
}

// A frame of audio: kept until acked (resent after a resume), sent when connected.
function onFrame(buf) {
  pending.push({ seq: ++sentSeq, buf });
  bump("sent");
  if (pending.length > MAX_PENDING) {
    pending.shift();
    addItem("errors", "connection down too long: oldest audio dropped");
  }
  if (live && ws.readyState === WebSocket.OPEN) { ws.send(buf); fresh = false; }
}

// Opus: a new recorder, its pieces every 100 ms; what an older one made is dropped.
function record() {
  if (recorder) { recorder.ondataavailable = null; if (recorder.state !== "inactive") recorder.stop(); }
  recorder = new MediaRecorder(stream, { mimeType: opusType, audioBitsPerSecond: 32000 });
  fresh = true;
  const mine = recorder;
  recorder.ondataavailable = (e) => {
    if (!e.data.size) return;
    made = made.then(() => e.data.arrayBuffer()).then((buf) => { if (recorder === mine) onFrame(buf); });
  };
  recorder.start(100);
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const params = new URLSearchParams(opusType
    ? { encoding: opusType.includes("webm") ? "webm" : "ogg" }
    : { encoding: "pcm_s16le", sample_rate: "16000" });
  const language = $("language").value;
  if (language) params.set("language", language); // else the server's HARK_LANGUAGE
  if (session) {
    params.set("session_id", session.id);
    params.set("resume_token", session.token);
    params.set("last_final", String(lastFinal));
  }
  setState(session ? "reconnecting" : "connecting");
  live = false;
  ws = new WebSocket(`${scheme}://${location.host}/ws?${params}`);
  ws.binaryType = "arraybuffer";
  ws.onmessage = onReply;
  ws.onclose = onClose;
}

function onClose(e) {
  live = false;
  if (stopping || e.code === 1000) {
    setState("closed");
    teardown();
    return;
  }
  // Lost without a close from us (gateway restart, network): resume while the mic runs.
  const now = Date.now();
  if (!retryUntil) retryUntil = now + RETRY_FOR_MS;
  if (now > retryUntil) {
    setState(`disconnected (${e.code} ${e.reason})`);
    teardown();
    return;
  }
  setState(`reconnecting (${e.code})`);
  setTimeout(connect, retryDelay);
  retryDelay = Math.min(retryDelay * 2, 5000);
}

function stop() {
  $("stop").disabled = true;
  stopping = true;
  setState("closing");
  if (node) node.port.onmessage = null; // no audio after close
  const close = () => {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "close" }));
    else { setState("closed"); teardown(); }
  };
  if (recorder && recorder.state !== "inactive") {
    recorder.onstop = () => made.then(close); // its last piece goes first
    recorder.stop();
  } else close();
}

// Is the microphone working? The input's RMS level, redrawn with the screen.
function showLevel() {
  if (!analyser) { $("level").value = 0; return; }
  analyser.getFloatTimeDomainData(levelData);
  let sum = 0;
  for (const s of levelData) sum += s * s;
  $("level").value = Math.min(1, Math.sqrt(sum / levelData.length) * 4);
  requestAnimationFrame(showLevel);
}

function stamp(seconds, sep) {
  const ms = Math.round(seconds * 1000);
  const pad = (n, w) => String(n).padStart(w, "0");
  return `${pad(Math.floor(ms / 3600000), 2)}:${pad(Math.floor(ms / 60000) % 60, 2)}:` +
    `${pad(Math.floor(ms / 1000) % 60, 2)}${sep}${pad(ms % 1000, 3)}`;
}

function transcriptAs(kind) {
  if (kind === "txt") return finals.map((f) => f.text).join("\n") + "\n";
  const cues = finals.map((f, i) => {
    const sep = kind === "srt" ? "," : ".";
    const head = kind === "srt" ? `${i + 1}\n` : "";
    return `${head}${stamp(f.start, sep)} --> ${stamp(f.end, sep)}\n${f.text}\n`;
  });
  return (kind === "vtt" ? "WEBVTT\n\n" : "") + cues.join("\n");
}

function save(kind) {
  const types = { txt: "text/plain", srt: "application/x-subrip", vtt: "text/vtt" };
  const blob = new Blob([transcriptAs(kind)], { type: `${types[kind]};charset=utf-8` });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = `transcript-${session ? session.id.slice(0, 8) : "hark"}.${kind}`;
  a.click();
  URL.revokeObjectURL(a.href);
}

function teardown() {
  if (recorder && recorder.state !== "inactive") recorder.stop();
  recorder = null;
  if (stream) stream.getTracks().forEach((t) => t.stop());
  if (ctx) ctx.close();
  stream = ctx = node = analyser = null;
  retryUntil = 0;
  retryDelay = 200;
  $("start").disabled = false;
  $("stop").disabled = true;
  $("language").disabled = false;
  $("send").disabled = false;
}

$("start").addEventListener("click", start);
if (!window.MediaRecorder || !OPUS_TYPES.some((t) => MediaRecorder.isTypeSupported(t))) {
  $("send").querySelector("option[value=opus]").disabled = true; // this browser records no Opus
}
$("stop").addEventListener("click", stop);
["txt", "srt", "vtt"].forEach((kind) => $(`save-${kind}`).addEventListener("click", () => save(kind)));
