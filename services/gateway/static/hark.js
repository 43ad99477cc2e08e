// hark's web page: microphone -> AudioWorklet (16 kHz Int16, 100 ms frames) -> /ws -> replies.
"use strict";

const FRAME_SAMPLES = 1600; // 100 ms at 16 kHz
const $ = (id) => document.getElementById(id);
let ws = null, ctx = null, stream = null, node = null;
const count = { sent: 0, acks: 0, finals: 0 };

function setState(text) { $("state").textContent = text; }
function bump(name) { count[name] += 1; $(name).textContent = String(count[name]); }
function addItem(list, text) {
  const li = document.createElement("li");
  li.textContent = text;
  $(list).appendChild(li);
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
      $("session").textContent = msg.session_id;
      setState("streaming");
      break;
    case "received":
      bump("acks");
      break;
    case "transcript":
      if (msg.final) {
        bump("finals");
        $("partial").textContent = "";
        addItem("transcripts", msg.text);
      } else {
        $("partial").textContent = msg.text;
      }
      break;
    case "error":
      addItem("errors", `${msg.code}: ${msg.error}`);
      break;
    case "closed":
      setState("closed");
      break;
  }
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
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    ws = new WebSocket(`${scheme}://${location.host}/ws?encoding=pcm_s16le&sample_rate=16000`);
    ws.binaryType = "arraybuffer";
    ws.onmessage = onReply;
    ws.onclose = (e) => { setState(e.code === 1000 ? "closed" : `disconnected (${e.code} ${e.reason})`); teardown(); };
    ws.onerror = () => addItem("errors", "connection error");
    node.port.onmessage = (e) => {
      if (ws && ws.readyState === WebSocket.OPEN) { ws.send(e.data); bump("sent"); }
    };
    ctx.createMediaStreamSource(stream).connect(node);
    $("stop").disabled = false;
    setState("connecting");
  } catch (err) {
    addItem("errors", `microphone: ${err.message || err}`);
    setState("idle");
    teardown();
  }
}

function stop() {
  $("stop").disabled = true;
  setState("closing");
  if (node) node.port.onmessage = null; // no audio after close
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: "close" }));
}

function teardown() {
  if (stream) stream.getTracks().forEach((t) => t.stop());
  if (ctx) ctx.close();
  stream = ctx = node = null;
  $("start").disabled = false;
  $("stop").disabled = true;
}

$("start").addEventListener("click", start);
$("stop").addEventListener("click", stop);
