// The operator dashboard: polls /api/status once a second and offers the scenario's controls.
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "style") Object.assign(node.style, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

async function post(path, body) {
  const response = await fetch(path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  return response.json();
}

function badge(line) {
  return el("span", { class: "badge", style: { background: line.color ? "#" + line.color : "#555" } }, line.short_name || line.id);
}

function ago(iso) {
  if (!iso) return "never";
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  return s < 60 ? s + " s ago" : Math.round(s / 60) + " min ago";
}

let running = true;
let lastStatus = null;

function renderScenario(s) {
  $("sim-time").textContent = s.time;
  $("sim-speed").textContent = (s.paused ? "paused" : s.speed + "× real time");
  $("pause").textContent = s.paused ? "Resume" : "Pause";
  $("story-now").textContent = s.now ? `${s.now.at} ${s.now.text.zh} · ${s.now.text.en}` : "";
  $("story-next").textContent = s.next ? `${s.next.at} ${s.next.text.zh} · ${s.next.text.en}` : "(loops back to the start)";
  const select = $("speed");
  if (document.activeElement !== select) select.value = String(s.speed);
  if (!$("milestones").childElementCount) {
    $("milestones").replaceChildren(...s.milestones.map((m) => el("li", {},
      el("button", { type: "button", class: "link", onclick: () => post("/api/scenario", { at: m.at }).then(refresh) }, m.at),
      ` ${m.text.zh} · ${m.text.en}`)));
  }
}

function renderFeeds(feeds) {
  $("feeds").replaceChildren(...feeds.map((f) => el("tr", {},
    el("td", {}, f.name), el("td", {}, f.kind),
    el("td", {}, el("span", { class: "chip " + (f.healthy ? "ok" : "bad") }, f.healthy ? "healthy" : (f.consecutive_failures ? `failing ×${f.consecutive_failures}` : "waiting"))),
    el("td", {}, f.age_s === null ? "–" : `${f.age_s} s (max ${f.max_age_s} s)`),
    el("td", { class: "error" }, f.last_error || ""))));
}

function renderOutbox(channels) {
  $("outbox").replaceChildren(...channels.map((c) => el("tr", {},
    el("td", {}, c.name), el("td", {}, c.kind), el("td", { "data-channel": c.name }, String(c.pending)),
    el("td", {}, String(c.sent)), el("td", { class: c.parked ? "error" : "" }, String(c.parked)))));
}

function renderChannels(channels) {
  $("channels").replaceChildren(...channels.map((c) => el("div", { class: "channel" },
    el("h3", {}, c.name, " ", el("small", {}, c.kind)),
    c.posts.length ? el("ol", { class: "posts" }, ...c.posts.map((p) => el("li", {},
      el("div", { class: "meta" }, new Date(p.sent_at).toLocaleTimeString(), " · ", p.kind, " · ", p.notice_id),
      ...p.texts.map((t) => el("div", { class: "text" },
        el("pre", { lang: t.language }, t.text),
        el("div", { class: "counts" }, el("span", { class: "lang" }, t.language),
          ...t.counts.map((n) => el("span", { class: "chip " + (n.fits ? "ok" : "bad"), title: n.fits ? "fits" : "too long: the channel would shorten or split it" },
            `${n.platform} ${n.count}/${n.limit}`)))))))) : el("p", { class: "muted" }, "nothing posted yet"))));
}

let stationsDrawn = false;

async function renderStatic() {
  const config = await (await fetch("/api/config")).json();
  $("stations").replaceChildren(...config.stations.map((s) => el("a", { href: "/display/" + encodeURIComponent(s.id), class: "station" },
    el("span", { class: "badges" }, ...s.lines.map(badge)), el("span", {}, s.names.zh), el("small", {}, s.names.en))));
  const host = location.hostname;
  $("commuter-link").href = `${location.protocol}//${host}:${config.commuter_port}/`;
  const rows = [
    ["MQTT over TCP (3.1.1)", `mqtt://${host}:${config.mqtt_tcp_port}`],
    ["MQTT over WebSocket", `ws://${host}:${config.mqtt_ws_port}/`],
    ["one station's screen", `${config.topic_prefix}/v1/stations/{station}/display`],
    ["broadcaster online/offline", config.status_topic],
    ["everything", `${config.topic_prefix}/v1/#`],
    ["try it", `mosquitto_sub -h ${host} -p ${config.mqtt_tcp_port} -v -t '${config.topic_prefix}/v1/#'`],
    ["Atom timeline", `${location.origin}/timeline.atom`],
  ];
  $("connect").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, el("code", {}, v))]));
  stationsDrawn = true;
}

async function refresh() {
  try {
    const status = await (await fetch("/api/status")).json();
    lastStatus = status;
    running = status.broadcaster.running;
    const chip = $("bc-state");
    chip.textContent = !running ? "broadcaster stopped" : (status.broadcaster.mqtt_connected ? "broadcaster online" : "broadcaster connecting");
    chip.className = "chip " + (!running ? "bad" : (status.broadcaster.mqtt_connected ? "ok" : "warn"));
    $("bc-toggle").textContent = running ? "Stop broadcaster" : "Start broadcaster";
    renderScenario(status.scenario);
    renderFeeds(status.feeds);
    renderOutbox(status.channels);
    renderChannels(status.channels);
    if (!stationsDrawn) await renderStatic();
  } catch (error) {
    $("bc-state").textContent = "demo not reachable";
    $("bc-state").className = "chip bad";
  }
}

$("bc-toggle").addEventListener("click", async () => {
  $("bc-toggle").disabled = true;
  try { await post("/api/broadcaster", { running: !running }); } finally { $("bc-toggle").disabled = false; }
  refresh();
});
$("pause").addEventListener("click", () => post("/api/scenario", { paused: !(lastStatus && lastStatus.scenario.paused) }).then(refresh));
$("speed").addEventListener("change", (event) => post("/api/scenario", { speed: Number(event.target.value) }).then(refresh));

refresh();
setInterval(refresh, 1000);
