// firstmile's dashboard: the world map of entry servers and live broadcasts, and the latest
// assignments, from GET /v1/admin/dashboard every 2 s (see crates/director/src/dashboard.rs).
// The admin token comes from the URL fragment (#token=…, never sent to a server) or a form, and
// lives in this tab's sessionStorage only.
(function () {
  "use strict";
  const W = 960, H = 500;
  const projection = d3.geoNaturalEarth1().fitExtent([[8, 8], [W - 8, H - 8]], { type: "Sphere" });
  const geoPath = d3.geoPath(projection);
  const SVG = "http://www.w3.org/2000/svg"; // the XML namespace: a name, never fetched
  const $ = (id) => document.getElementById(id);
  const el = (tag, attrs, text) => {
    const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };

  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("token")) {
    sessionStorage.setItem("firstmile-admin", hash.get("token"));
    history.replaceState(null, "", location.pathname);
  }
  let token = sessionStorage.getItem("firstmile-admin");

  $("login").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token").value;
    sessionStorage.setItem("firstmile-admin", token);
    $("login").hidden = true;
    refresh();
  });

  fetch("/dashboard/vendor/countries-110m.json")
    .then((r) => r.json())
    .then((world) => {
      const land = topojson.feature(world, world.objects.countries);
      const g = $("land");
      g.appendChild(el("svg:path", { d: geoPath({ type: "Sphere" }), class: "sphere", fill: "#0b1a2a" }));
      for (const f of land.features) g.appendChild(el("svg:path", { d: geoPath(f) }));
    });

  function serverClass(s) {
    if (s.health !== "healthy") return "unhealthy";
    if (s.state !== "ready" || s.admin_drained || s.disk !== "ok") return "draining";
    const share = Math.max(
      s.capacity.streams ? s.load.streams / s.capacity.streams : 0,
      s.capacity.mbps ? s.load.mbps / s.capacity.mbps : 0,
      s.load.cpu || 0
    );
    return share > 0.8 ? "busy" : "healthy";
  }

  function line(a, b, cls, stream) {
    const d = geoPath({ type: "LineString", coordinates: [[a.lon, a.lat], [b.lon, b.lat]] });
    return d ? el("svg:path", { d, class: "path " + cls, "data-stream": stream }) : null;
  }

  function draw(data) {
    const byId = new Map(data.servers.map((s) => [s.id, s]));
    const servers = $("servers"), paths = $("paths");
    servers.replaceChildren();
    paths.replaceChildren();
    for (const s of data.servers) {
      const [x, y] = projection([s.location.lon, s.location.lat]);
      const g = el("svg:g", { "data-server": s.id });
      const c = el("svg:circle", { cx: x, cy: y, r: 5 + Math.min(6, s.load.streams), class: "server " + serverClass(s) });
      c.appendChild(el("svg:title", {}, `${s.id} (${s.pop}) ${s.city}: ${s.load.streams} streams, ${s.load.mbps.toFixed(1)} Mbit/s, cpu ${(s.load.cpu * 100).toFixed(0)} %, ${s.state}, disk ${s.disk}, ${s.health}`));
      g.appendChild(c);
      g.appendChild(el("svg:text", { x: x + 8, y: y + 3, class: "server-label" }, s.id));
      servers.appendChild(g);
    }
    for (const b of data.streams) {
      const p = b.primary && byId.get(b.primary), k = b.backup && byId.get(b.backup);
      const from = b.device || (p && k ? p.location : null);
      if (from && b.device) {
        const [x, y] = projection([from.lon, from.lat]);
        paths.appendChild(el("svg:circle", { cx: x, cy: y, r: 2.5, class: "device", "data-stream": b.stream }));
      }
      if (p && from) { const l = line(from, p.location, "primary", b.stream); if (l) paths.appendChild(l); }
      if (k && from) { const l = line(b.device ? from : p.location, k.location, "backup", b.stream); if (l) paths.appendChild(l); }
    }
    const live = data.streams.filter((s) => s.live).length;
    const healthy = data.servers.filter((s) => s.health === "healthy").length;
    $("summary").textContent = `${data.servers.length} entry servers (${healthy} healthy) · ${data.streams.length} broadcasts (${live} live)`;
    $("updated").textContent = "updated " + new Date(data.generated_at * 1000).toLocaleTimeString();

    const tbody = $("server-table").querySelector("tbody");
    tbody.replaceChildren(...data.servers.map((s) => {
      const tr = el("tr", { "data-server": s.id });
      for (const t of [s.id, s.city, `${s.load.streams}/${s.capacity.streams} · ${s.load.mbps.toFixed(0)} Mbit/s`, `${s.state}${s.admin_drained ? " (drained)" : ""}, ${s.health}${s.disk !== "ok" ? ", disk " + s.disk : ""}`]) tr.appendChild(el("td", {}, t));
      return tr;
    }));
    $("stream-list").replaceChildren(...data.streams.map((b) =>
      el("li", { "data-stream": b.stream }, `${b.stream} · ${b.live ? "live" : "starting"} · ${b.primary || "-"} + ${b.backup || "-"}`)));
    $("assignment-list").replaceChildren(...data.assignments.slice(0, 30).map((a) => {
      const li = el("li", {});
      const pick = (c, role) => c ? `${role} ${c.server_id} ${c.rtt_ms.toFixed(1)} ms (${c.rtt_source}, from ${c.scored_from})` : `${role} none`;
      li.appendChild(el("div", {}, `${a.stream}: typed “${a.typed || "nothing"}”, IP ${a.ip}`));
      li.appendChild(el("div", { class: "why" }, pick(a.primary, "primary") + " · " + pick(a.backup, "backup")));
      return li;
    }));
    document.body.dataset.drawn = String(Date.now());
  }

  async function refresh() {
    if (!token) { $("login").hidden = false; return; }
    try {
      const r = await fetch("/v1/admin/dashboard", { headers: { Authorization: "Bearer " + token } });
      if (r.status === 401) {
        $("login-error").textContent = "that admin token was refused";
        $("login").hidden = false;
        token = null;
        sessionStorage.removeItem("firstmile-admin");
        return;
      }
      if (!r.ok) throw new Error("HTTP " + r.status);
      draw(await r.json());
    } catch (e) {
      $("updated").textContent = "update failed: " + e.message;
    }
  }
  refresh();
  setInterval(() => { if (token) refresh(); }, 2000);
})();
