// The player of /watch/{stream}: hls.js (vendored, served by the entry server) where Media
// Source Extensions exist, the browser's own HLS otherwise. Nothing is loaded from elsewhere.
// window.firstmile exposes what the page shows (and what the browser tests read).
(function () {
  'use strict';
  const parts = location.pathname.split('/');
  const id = decodeURIComponent(parts[parts.length - 1] || '');
  const params = new URLSearchParams(location.search);
  const mode = params.get('mode') === 'classic' ? 'classic' : 'll';
  const engineWanted = params.get('engine') || 'auto';
  const q = new URLSearchParams();
  for (const k of ['token', 'broadcast']) {
    if (params.get(k)) q.set(k, params.get(k));
  }
  const qs = q.toString() ? '?' + q.toString() : '';
  const src = '/hls/' + encodeURIComponent(id) + '/' + (mode === 'classic' ? 'classic' : 'index') + '.m3u8' + qs;
  const video = document.getElementById('video');
  const $ = (x) => document.getElementById(x);
  const state = (window.firstmile = {
    stream: id, mode: mode, src: src, engine: null, errors: [], fatal: [],
    latency: null, delay: null, path: null, started: null,
  });
  $('title').textContent = id;
  for (const a of ['classic', 'll']) {
    const u = new URLSearchParams(params);
    u.set('mode', a);
    $(a).href = '?' + u.toString();
  }
  video.muted = true;
  const play = () => { video.play().catch(() => {}); };
  video.addEventListener('canplay', play);
  video.addEventListener('playing', () => { if (state.started === null) state.started = performance.now(); });

  let hls = null;
  function startHlsJs() {
    state.engine = 'hls.js ' + Hls.version + (mode === 'classic' ? ' (HLS)' : ' (LL-HLS)');
    hls = new Hls({ lowLatencyMode: mode !== 'classic', backBufferLength: 30 });
    hls.on(Hls.Events.ERROR, function (_e, d) {
      const entry = { type: d.type, details: d.details, fatal: !!d.fatal, at: Date.now() };
      state.errors.push(entry);
      if (state.errors.length > 200) state.errors.shift();
      if (!d.fatal) return;
      state.fatal.push(entry);
      $('status').textContent = 'recovering from ' + d.details;
      if (d.type === Hls.ErrorTypes.MEDIA_ERROR) {
        hls.recoverMediaError();
      } else {
        // Not live yet (503 + Retry-After), or the node went away: try again shortly.
        setTimeout(function () { hls.destroy(); startHlsJs(); }, 2000);
      }
    });
    hls.loadSource(src);
    hls.attachMedia(video);
  }
  if (engineWanted !== 'native' && window.Hls && Hls.isSupported()) {
    startHlsJs();
  } else if (video.canPlayType('application/vnd.apple.mpegurl')) {
    state.engine = 'native HLS';
    video.src = src;
  } else {
    state.engine = 'none: this browser plays neither HLS nor Media Source Extensions';
  }
  $('engine').textContent = state.engine;

  setInterval(function () {
    if (hls) {
      state.latency = hls.latency;
      const date = hls.playingDate;
      state.delay = date ? (Date.now() - date.getTime()) / 1000 : null;
    } else if (video.getStartDate && !isNaN(video.getStartDate().getTime())) {
      state.delay = (Date.now() - video.getStartDate().getTime()) / 1000 - video.currentTime;
    }
    const f = (x) => (x === null || x === undefined || isNaN(x) ? '–' : x.toFixed(2) + ' s');
    $('delay').textContent = f(state.delay) + ' since the entry server got it · ' + f(state.latency) + ' behind the live edge';
    if (!video.paused && video.readyState > 2) $('status').textContent = 'playing, t = ' + video.currentTime.toFixed(1) + ' s';
  }, 500);

  function showPath() {
    fetch('/v1/streams/' + encodeURIComponent(id) + '/path' + qs)
      .then((r) => (r.ok ? r.json() : null))
      .then(function (p) {
        state.path = p;
        if (!p) return;
        let t;
        if (p.source === 'ingest') {
          t = p.server_id + ' ingests this broadcast' + (p.role ? ' (' + p.role + ' path)' : '');
        } else {
          t = p.server_id + ' relays it from ' + p.upstreams.map(function (u) {
            return u.server_id + ' (' + u.role + (u.city ? ', ' + u.city : '') + ', ' + (u.reachable ? 'receiving' : 'unreachable') + ')';
          }).join(' and ');
        }
        $('path').textContent = t;
      })
      .catch(function () {});
  }
  showPath();
  setInterval(showPath, 2000);
})();
