// One viewer trial of bench/browser.sh, in headless Chromium: play `src` with hls.js
// (kind=hls) or mpegts.js (kind=flv), then read the publisher's wall clock off every frame shown
// and POST the figures to /result.
//
// The publisher (ffmpeg, bench/browser.sh) draws BITS black/white boxes of BOX px across the top
// of each frame: bit k of floor(capture time in ms since the Unix epoch / UNIT_MS). A frame's
// glass-to-glass delay is the time it is shown (requestVideoFrameCallback's expected display
// time, on the same machine's clock) minus that. Time to first frame: from the moment the page
// hands the URL to the player to the first frame shown.
"use strict";
const BITS = 20, BOX = 32, UNIT_MS = 10, WRAP = 2 ** BITS * UNIT_MS;
const q = new URLSearchParams(location.search);
const kind = q.get("kind"), src = q.get("src"), label = q.get("label") || src;
const seconds = Number(q.get("seconds") || 20);
const video = document.getElementById("v");
const ctx = document.getElementById("c").getContext("2d", { willReadFrequently: true });
const errors = [];
const delays = [];
let started = 0, first = null, stalls = 0, decodeFailures = 0, done = false;

function readClock() {
  // The strip, scaled to the canvas; sample the middle of each box.
  const sx = video.videoWidth / 640, sy = video.videoHeight / 360;
  ctx.drawImage(video, 0, 0, 640 * sx, 32 * sy, 0, 0, 640, 32);
  const px = ctx.getImageData(0, 0, 640, 32).data;
  let v = 0;
  for (let k = 0; k < BITS; k++) {
    const x = k * BOX + BOX / 2, y = BOX / 2, i = (y * 640 + x) * 4;
    const lum = 0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2];
    if (lum > 128) v += 2 ** k;
  }
  return v * UNIT_MS;
}

function onFrame(shownAt) {
  if (done) return;
  const captured = readClock();
  const delay = ((shownAt - captured) % WRAP + WRAP) % WRAP;
  if (delay > 60000) { decodeFailures++; return; } // a misread box: not a delay
  if (first === null) first = shownAt - started;
  delays.push(delay);
}

function loop() {
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
    const cb = (_now, meta) => {
      onFrame(performance.timeOrigin + meta.expectedDisplayTime);
      video.requestVideoFrameCallback(cb);
    };
    video.requestVideoFrameCallback(cb);
  } else {
    let last = -1;
    setInterval(() => {
      if (video.currentTime !== last && video.readyState >= 2) {
        last = video.currentTime;
        onFrame(Date.now());
      }
    }, 10);
  }
}

function pct(a, p) {
  if (!a.length) return null;
  const s = [...a].sort((x, y) => x - y);
  return s[Math.min(s.length - 1, Math.floor(p * s.length))];
}

async function finish() {
  done = true;
  const last = delays.slice(Math.floor(delays.length / 4)); // after the player settled
  const r = {
    label, kind, src, seconds,
    ttff_ms: first === null ? null : Math.round(first),
    frames: delays.length, misread: decodeFailures, stalls,
    delay_p50_ms: pct(last, 0.5), delay_p95_ms: pct(last, 0.95),
    delay_min_ms: last.length ? Math.min(...last) : null,
    errors: errors.slice(0, 5),
  };
  document.getElementById("out").textContent = JSON.stringify(r, null, 1);
  await fetch("/result", { method: "POST", body: JSON.stringify(r) });
}

video.addEventListener("waiting", () => { if (first !== null) stalls++; });
started = performance.timeOrigin + performance.now();
if (kind === "hls") {
  // hls.js defaults (lowLatencyMode is on by default: it plays LL-HLS parts when offered).
  const hls = new Hls();
  hls.on(Hls.Events.ERROR, (_e, d) => { if (d.fatal) errors.push(`${d.type}: ${d.details}`); });
  hls.loadSource(src);
  hls.attachMedia(video);
} else {
  // mpegts.js as low-delay HTTP-FLV pages set it up: no stash buffer, chase the live edge.
  const p = mpegts.createPlayer({ type: "flv", isLive: true, url: src },
    { enableStashBuffer: false, liveBufferLatencyChasing: true });
  p.on(mpegts.Events.ERROR, (t, d) => errors.push(`${t}: ${d}`));
  p.attachMediaElement(video);
  p.load();
}
video.play().catch((e) => errors.push(`play: ${e}`));
loop();
setTimeout(finish, seconds * 1000);
