// The station display board: subscribes over MQTT-over-WebSocket to its station's display topic and to the
// broadcaster's status, and draws what the payload says. It follows the rules of docs/mqtt.md: "information
// unavailable" when the broadcaster is offline, when a batch run's status is past its valid_until, when there is
// no display payload, or when its valid_until has passed (a 3.1.1 broker does not expire retained messages, so
// the payload's own field is the rule).
import { MqttClient, topicSegment } from "./mqtt.js";

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "style") Object.assign(node.style, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

function stationFromUrl() {
  const fromQuery = new URLSearchParams(location.search).get("station");
  if (fromQuery) return fromQuery;
  const match = location.pathname.match(/^\/display\/(.+)$/);
  return match ? decodeURIComponent(match[1]) : null;
}

const STATUS_CLASS = { normal: "ok", delayed: "warn", partly_suspended: "bad", suspended: "bad" };
// Contract v1.2: `level` says "changes" (a detour, a moved stop: trains still run) where `status` stays "normal".
// A payload from an older broadcaster has no level: its status alone decides.
function lineClass(entry) {
  if (entry.level === "changes") return "warn";
  return STATUS_CLASS[entry.status] || "warn";
}
const TREND = { rising: "↑", falling: "↓", steady: "" };
const CROWDING_CLASS = {
  EMPTY: "ok", MANY_SEATS_AVAILABLE: "ok", FEW_SEATS_AVAILABLE: "ok", STANDING_ROOM_ONLY: "warn",
  CRUSHED_STANDING_ROOM_ONLY: "bad", FULL: "bad", NOT_ACCEPTING_PASSENGERS: "bad",
};

const state = { config: null, station: null, display: null, status: null, link: "connecting" };

function text(obj, lang) {
  if (!obj) return "";
  return obj[lang] || obj.en || Object.values(obj)[0] || "";
}

function timeIn(zone, iso, withSeconds = false) {
  const options = { hour: "2-digit", minute: "2-digit", hourCycle: "h23", timeZone: zone };
  if (withSeconds) options.second = "2-digit";
  return new Intl.DateTimeFormat("en-GB", options).format(iso ? new Date(iso) : new Date());
}

function unavailableReason() {
  if (state.link !== "connected") return ["正在连接信息服务", "Connecting to the information service"];
  if (!state.status) return ["等待广播服务", "Waiting for the broadcaster"];
  if (state.status.status !== "online") return ["广播服务离线", "The broadcaster is offline"];
  // Contract v1.2: a batch run (`once` from cron) that ended cleanly stays "online" until its valid_until.
  const batchUntil = state.status.valid_until ? Date.parse(state.status.valid_until) : NaN;
  if (!Number.isNaN(batchUntil) && batchUntil <= Date.now()) return ["定时更新已过期", "The last scheduled update has expired"];
  if (!state.display) return ["暂无本站数据", "No data for this station yet"];
  const until = state.display.valid_until ? Date.parse(state.display.valid_until) : NaN;
  if (!Number.isNaN(until) && until <= Date.now()) return ["数据已过期", "The data has expired"];
  return null;
}

function lineBadge(line) {
  const color = line.color ? "#" + line.color : "#555";
  return el("span", { class: "badge", style: { background: color } }, line.short_name || line.id);
}

function renderHeader() {
  const station = state.station;
  const names = (state.display && state.display.station.names) || (station && station.names) || {};
  $("station-zh").textContent = names.zh || (station ? station.id : "");
  $("station-en").textContent = names.en || "";
  const badges = $("badges");
  badges.replaceChildren(...((station && station.lines) || []).map(lineBadge));
  const zone = state.config ? state.config.timezone : undefined;
  $("clock-time").textContent = timeIn(zone);
  $("clock-date").textContent = new Intl.DateTimeFormat("zh-CN", { month: "long", day: "numeric", weekday: "short", timeZone: zone }).format(new Date());
}

function renderLines(display) {
  $("lines").replaceChildren(...display.lines.map((entry) => el("li", {
    class: "line " + lineClass(entry), "data-testid": "line-status",
    "data-line": entry.line.id, "data-status": entry.status, "data-level": entry.level || "",
  },
    lineBadge(entry.line),
    el("div", { class: "line-name" }, el("div", { lang: "zh" }, text(entry.line.names, "zh")), el("div", { lang: "en" }, text(entry.line.names, "en"))),
    el("div", { class: "line-status" }, el("div", { lang: "zh" }, text(entry.status_text, "zh")), el("div", { lang: "en" }, text(entry.status_text, "en"))),
  )));
}

function renderCrowding(display) {
  const c = display.crowding;
  if (!c) {
    $("crowding").replaceChildren(el("div", { class: "muted" }, "暂无数据 No reading"));
    return;
  }
  const pct = c.percentage === null || c.percentage === undefined ? null : c.percentage;
  const width = pct === null ? 0 : Math.min(100, pct);
  $("crowding").replaceChildren(el("div", { class: "crowd " + (CROWDING_CLASS[c.level] || "warn"), "data-level": c.level },
    el("div", { class: "crowd-text" },
      el("div", { lang: "zh" }, text(c.level_text, "zh"), " ", TREND[c.trend] || ""),
      el("div", { lang: "en" }, text(c.level_text, "en"))),
    el("div", { class: "bar" }, el("div", { class: "fill", style: { width: width + "%" } })),
    el("div", { class: "pct" }, pct === null ? "" : pct + "%"),
  ));
}

function renderAlerts(display) {
  if (!display.alerts.length) {
    $("alerts").replaceChildren(el("li", { class: "none" }, el("span", { lang: "zh" }, "暂无"), " ", el("span", { lang: "en" }, "None")));
    return;
  }
  $("alerts").replaceChildren(...display.alerts.map((alert) => el("li", {
    class: "alert " + (alert.emergency ? "emergency" : (alert.severity || "").toLowerCase()),
    "data-testid": "alert", "data-alert": alert.alert_id,
  },
    el("div", { lang: "zh" }, text(alert.header, "zh")),
    el("div", { lang: "en" }, text(alert.header, "en")),
  )));
}

function render() {
  renderHeader();
  const board = $("board");
  const reason = unavailableReason();
  const zone = state.config ? state.config.timezone : undefined;
  $("link-text").textContent = state.link === "connected" ? "已连接 connected" : "未连接 not connected";
  $("link").className = "link " + (state.link === "connected" ? "up" : "down");
  if (reason) {
    board.dataset.state = "unavailable";
    $("content").hidden = true;
    $("unavailable").hidden = false;
    $("unavailable-why").textContent = reason[0] + " · " + reason[1];
    $("updated").textContent = "";
    return;
  }
  board.dataset.state = "ok";
  $("content").hidden = false;
  $("unavailable").hidden = true;
  const display = state.display;
  renderLines(display);
  renderCrowding(display);
  renderAlerts(display);
  $("updated").textContent = "更新 Updated " + timeIn(zone, display.issued_at, true);
}

function showPicker(config) {
  $("board").hidden = true;
  $("picker").hidden = false;
  $("picker-list").replaceChildren(...config.stations.map((s) => el("li", {},
    el("a", { href: "/display/" + encodeURIComponent(s.id) }, ...s.lines.map(lineBadge), " ", text(s.names, "zh"), " ", text(s.names, "en")))));
}

async function main() {
  const config = await (await fetch("/api/config")).json();
  state.config = config;
  const id = stationFromUrl();
  if (!id) {
    showPicker(config);
    return;
  }
  state.station = config.stations.find((s) => s.id === id) || { id, names: { zh: id }, lines: [] };
  const displayTopic = `${config.topic_prefix}/v1/stations/${topicSegment(id)}/display`;
  const statusTopic = config.status_topic;
  const decoder = new TextDecoder();
  const client = new MqttClient(`ws://${location.hostname}:${config.mqtt_ws_port}/`, {
    topics: [displayTopic, statusTopic],
    onState: (link) => {
      state.link = link;
      if (link !== "connected") { state.status = null; state.display = null; } // retained state comes again
      render();
    },
    onMessage: (topic, bytes) => {
      let payload = null;
      if (bytes.length) {
        try { payload = JSON.parse(decoder.decode(bytes)); } catch (error) { payload = null; }
      }
      if (topic === statusTopic) state.status = payload;
      else if (topic === displayTopic) {
        if (!payload || !state.display || (payload.seq || 0) >= (state.display.seq || 0)) state.display = payload;
      }
      render();
    },
  });
  client.start();
  render();
  setInterval(render, 1000); // the clock, and valid_until passing with no new message
}

main();
