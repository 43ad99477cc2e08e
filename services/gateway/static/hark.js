// hark's web page: microphone -> AudioWorklet (16 kHz Int16, 100 ms frames) -> /ws -> replies.
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
      live = true;
      retryUntil = 0;
      pending.forEach((f) => ws.send(f.buf)); // captured while connecting
      setState("streaming");
      break;
    case "resumed":
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
      if (msg.final) {
        bump("finals");
        lastFinal = Math.max(lastFinal, msg.seq);
        $("partial").textContent = "";
        addItem("transcripts", msg.text).dataset.seq = String(msg.seq);
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
    const url = URL.createObjectURL(new Blob([WORKLET], { type: "application/javascript" }));
    await ctx.audioWorklet.addModule(url);
    node = new AudioWorkletNode(ctx, "hark-capture");
    session = null; lastFinal = 0; sentSeq = 0; pending = []; stopping = false;
    $("summary").hidden = true;
    node.port.onmessage = (e) => {
      pending.push({ seq: ++sentSeq, buf: e.data });
      bump("sent");
      if (pending.length > MAX_PENDING) {
        pending.shift();
        addItem("errors", "connection down too long: oldest audio dropped");
      }
      if (live && ws.readyState === WebSocket.OPEN) ws.send(e.data);
    };
    ctx.createMediaStreamSource(stream).connect(node);
    $("stop").disabled = false;
    connect();
  } catch (err) {
    addItem("errors", `microphone: ${err.message || err}`);
    setState("idle");
    teardown();
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const params = new URLSearchParams({ encoding: "pcm_s16le", sample_rate: "16000" });
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
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "close" }));
  else { setState("closed"); teardown(); }
}

function teardown() {
  if (stream) stream.getTracks().forEach((t) => t.stop());
  if (ctx) ctx.close();
  stream = ctx = node = null;
  retryUntil = 0;
  retryDelay = 200;
  $("start").disabled = false;
  $("stop").disabled = true;
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
