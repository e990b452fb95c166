// The commuter page (docs/commuters.md): the rider picks lines and stations (kept in this browser only), sees
// each pick's status and the alerts touching it live over MQTT over WebSocket, and gets a browser notification for
// a new or updated alert on a pick, within the hours and days the rider chose for it.
//
// The page subscribes only to its picks' topics (docs/mqtt.md) and the broadcaster's status. The rules it follows:
// - a payload past its `valid_until` is unknown, whatever the broker still holds ("Freshness" in docs/mqtt.md);
// - an empty retained payload on an alert topic removes that alert;
// - an alert notifies once per version: the retained replay after a (re)subscription and the broadcaster's
//   re-publishing after its own reconnect bring the same version again, which is not news.

import { MqttClient, topicSegment } from "./mqtt.js";
import { cleanWindow, inWindow } from "./window.js";

const PICKS_KEY = "commuter.picks.v1";
const LANG_KEY = "commuter.lang";
const CHECK_FRESHNESS_MS = 1000;

const TEXT = {
  pick: { zh: "关注线路和车站", en: "Follow lines and stations" },
  line: { zh: "线路", en: "Line" },
  station: { zh: "车站", en: "Station" },
  add: { zh: "添加", en: "Add" },
  remove: { zh: "移除", en: "Remove" },
  empty: { zh: "还没有关注任何线路或车站。请在下方选择。", en: "You follow no line or station yet. Pick one below." },
  privacy: { zh: "您的选择只保存在本浏览器中，无需注册。", en: "Your picks stay in this browser. No account needed." },
  feeds: { zh: "Atom 订阅", en: "Atom feeds" },
  connecting: { zh: "正在连接…", en: "Connecting…" },
  connected: { zh: "实时更新中", en: "Live" },
  lost: { zh: "连接已断开，正在重连…下方信息可能已过时。", en: "Connection lost, reconnecting… What you see may be out of date." },
  unconfigured: { zh: "本站未配置实时更新。", en: "Live updates are not configured on this site." },
  offline: { zh: "信息暂不可用：播报系统离线。", en: "Information unavailable: the broadcaster is offline." },
  expired_banner: { zh: "部分信息已过期（超过有效期），暂不可用。", en: "Some information has expired (past its valid-until time) and is unavailable." },
  expired: { zh: "信息已过期，暂不可用。", en: "This information has expired and is unavailable." },
  waiting: { zh: "等待数据…", en: "Waiting for data…" },
  no_alerts: { zh: "无相关提示", en: "No alerts" },
  notify_ask: { zh: "开启通知", en: "Turn on notifications" },
  notify_on: { zh: "通知已开启", en: "Notifications on" },
  notify_denied: { zh: "通知已被浏览器阻止", en: "Notifications are blocked in the browser" },
  notify_none: { zh: "此浏览器不支持通知", en: "This browser cannot show notifications" },
  window_always: { zh: "通知：全天", en: "Notify: any time" },
  window_some: { zh: "通知：", en: "Notify: " },
  from: { zh: "从", en: "From" },
  to: { zh: "到", en: "to" },
  window_hint: { zh: "在这些时间以外不发通知，状态仍会显示。留空表示全天、每天。", en: "Outside these hours and days there are no notifications; the status still shows. Leave empty for any time, every day." },
  quiet: { zh: "（当前不在通知时段）", en: " (quiet now)" },
  days: { zh: ["周日", "周一", "周二", "周三", "周四", "周五", "周六"], en: ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"] },
  title: { zh: "地铁运营信息", en: "Metro service updates" },
  station_badge: { zh: "站", en: "St" },
};

const state = {
  config: null,
  network: null,
  lang: "en",
  picks: [],                 // [{kind: "line"|"station", id, window: {from, to, days}}]
  payloads: new Map(),       // topic -> parsed payload (line statuses, station displays)
  lineAlerts: new Map(),     // line id -> Map(alert id -> payload)
  broadcaster: null,         // the broadcaster/status payload
  connection: "connecting",
  everConnected: false,
  connectionNo: 0,
  pickSince: new Map(),      // pick key -> number of the connection whose subscription first brought it
  known: new Map(),          // alert id -> {version, header}: what the rider has seen or been told
  alertConnection: new Map(), // alert id -> number of the connection its last message came through
  client: null,
  freshness: "",             // what the picks' cards last showed of expiry and quiet hours
};

// ---------------------------------------------------------------------------------------------------------------
// Texts

function text(texts) {
  if (!texts) return "";
  return texts[state.lang] ?? texts.en ?? Object.values(texts)[0] ?? "";
}

const t = (key) => text(TEXT[key]);

function chooseLanguage(languages, fallback) {
  // A feed's link says its language (?lang=en): the rider who followed it reads that one, kept as the toggle's.
  const asked = new URLSearchParams(location.search).get("lang");
  if (asked && languages.includes(asked)) {
    localStorage.setItem(LANG_KEY, asked);
    return asked;
  }
  const saved = localStorage.getItem(LANG_KEY);
  if (saved && languages.includes(saved)) return saved;
  for (const tag of navigator.languages || [navigator.language]) {
    const primary = (tag || "").toLowerCase().split("-")[0];
    if (languages.includes(primary)) return primary;
  }
  return languages.includes(fallback) ? fallback : languages[0];
}

// ---------------------------------------------------------------------------------------------------------------
// Picks, kept in localStorage

const pickKey = (pick) => `${pick.kind}:${pick.id}`;

function loadPicks() {
  try {
    const saved = JSON.parse(localStorage.getItem(PICKS_KEY) || "[]");
    if (!Array.isArray(saved)) return [];
    return saved.filter((p) => p && typeof p === "object" && known(p.kind, p.id))
      .map((p) => ({ kind: p.kind, id: p.id, window: cleanWindow(p.window) }));
  } catch {
    return [];
  }
}

function savePicks() {
  localStorage.setItem(PICKS_KEY, JSON.stringify(state.picks));
}

function known(kind, id) {
  const list = kind === "line" ? state.network.lines : kind === "station" ? state.network.stations : [];
  return list.some((item) => item.id === id);
}

function addPick(kind, id) {
  if (!known(kind, id) || state.picks.some((p) => p.kind === kind && p.id === id)) return;
  state.picks.push({ kind, id, window: { from: "", to: "", days: [] } });
  if (state.connection === "connected") state.pickSince.set(pickKey({ kind, id }), state.connectionNo);
  savePicks();
  renderPicks();
  follow();
}

function removePick(kind, id) {
  state.picks = state.picks.filter((p) => !(p.kind === kind && p.id === id));
  state.pickSince.delete(pickKey({ kind, id }));
  // Unsubscribed, the page hears no clear for it: what it knew would go stale. Picked again, the replay tells.
  if (kind === "line") {
    state.lineAlerts.delete(id);
    state.payloads.delete(lineTopics(id)[0]);
  } else {
    state.payloads.delete(stationTopic(id));
  }
  savePicks();
  renderPicks();
  follow();
}

// ---------------------------------------------------------------------------------------------------------------
// Topics

function lineTopics(id) {
  const base = `${state.config.topic_prefix}/v1/lines/${topicSegment(id)}`;
  return [`${base}/status`, `${base}/alerts/+`];
}

function stationTopic(id) {
  return `${state.config.topic_prefix}/v1/stations/${topicSegment(id)}/display`;
}

function topicsToFollow() {
  const topics = [`${state.config.topic_prefix}/v1/broadcaster/status`];
  for (const pick of state.picks) {
    topics.push(...(pick.kind === "line" ? lineTopics(pick.id) : [stationTopic(pick.id)]));
  }
  return topics;
}

function follow() {
  if (state.client) state.client.setTopics(topicsToFollow());
}

function parseTopic(topic) {
  const prefix = `${state.config.topic_prefix}/v1/`;
  if (!topic.startsWith(prefix)) return null;
  const parts = topic.slice(prefix.length).split("/").map((part) => {
    try { return decodeURIComponent(part); } catch { return part; }
  });
  if (parts[0] === "lines" && parts[2] === "status" && parts.length === 3) return { kind: "line-status", line: parts[1] };
  if (parts[0] === "lines" && parts[2] === "alerts" && parts.length === 4) return { kind: "alert", line: parts[1], alert: parts[3] };
  if (parts[0] === "stations" && parts[2] === "display" && parts.length === 3) return { kind: "display", station: parts[1] };
  if (parts.join("/") === "broadcaster/status") return { kind: "broadcaster" };
  return null;
}

// ---------------------------------------------------------------------------------------------------------------
// Messages

function onMessage(topic, bytes, retained) {
  const where = parseTopic(topic);
  if (!where) return;
  let payload = null;
  if (bytes.length) {
    try { payload = JSON.parse(new TextDecoder().decode(bytes)); } catch { return; }
  }
  if (where.kind === "broadcaster") {
    state.broadcaster = payload;
    renderFreshness();
    return;
  }
  if (where.kind === "alert") {
    const alerts = state.lineAlerts.get(where.line) || new Map();
    if (payload && older(payload, alerts.get(where.alert))) return;
    if (payload) alerts.set(where.alert, payload); else alerts.delete(where.alert);
    state.alertConnection.set(where.alert, state.connectionNo);
    state.lineAlerts.set(where.line, alerts);
    if (payload) considerNotifying({ kind: "line", id: where.line }, payload.alert_id, payload.version, payload, retained);
    renderPick("line", where.line);
    return;
  }
  if (payload && older(payload, state.payloads.get(topic))) return;
  if (payload) state.payloads.set(topic, payload); else state.payloads.delete(topic);
  if (where.kind === "line-status") renderPick("line", where.line);
  if (where.kind === "display") {
    for (const alert of payload?.alerts || []) {
      considerNotifying({ kind: "station", id: where.station }, alert.alert_id, null, alert, retained);
    }
    renderPick("station", where.station);
  }
}

// A higher seq replaces a lower one (docs/mqtt.md, "Delivery and deduplication"); an equal one is a refresh.
function older(payload, current) {
  return Boolean(current && typeof payload.seq === "number" && typeof current.seq === "number" && payload.seq < current.seq);
}

// ---------------------------------------------------------------------------------------------------------------
// Notifications

function considerNotifying(pickRef, alertId, version, alert, retained) {
  const pick = state.picks.find((p) => p.kind === pickRef.kind && p.id === pickRef.id);
  if (!pick || expired(alert)) return;
  const header = JSON.stringify(alert.header || {});
  const seen = state.known.get(alertId);
  // Station displays carry no version: there the header tells an update. The same alert seen through a line
  // first and a station after (or the other way round) is one alert.
  const already = seen && (version != null ? seen.version === version || (seen.version == null && seen.header === header)
                                           : seen.header === header);
  state.known.set(alertId, { version: version ?? seen?.version ?? null, header });
  if (already) return;
  // What the broker replays when a pick is first subscribed was there before the rider looked: shown, not news.
  const baseline = retained && state.pickSince.get(pickKey(pick)) === state.connectionNo;
  if (baseline || !inWindow(pick.window)) return;
  notify(pick, alertId, alert);
}

function notify(pick, alertId, alert) {
  if (!("Notification" in window) || Notification.permission !== "granted") return;
  const title = `${pickName(pick)}: ${text(alert.header)}`;
  const options = { body: text(alert.description) || text(alert.effect_text), tag: `alert-${alertId}`, lang: state.lang };
  try {
    new Notification(title, options);
  } catch {
    // Chrome on Android lets only a service worker show notifications.
    navigator.serviceWorker?.register("sw.js")
      .then(() => navigator.serviceWorker.ready)
      .then((registration) => registration.showNotification(title, options))
      .catch(() => {});
  }
}

function renderNotifyButton() {
  const button = document.getElementById("notify");
  if (!("Notification" in window)) {
    button.textContent = t("notify_none");
    button.disabled = true;
    return;
  }
  const permission = Notification.permission;
  button.dataset.permission = permission;
  button.textContent = t(permission === "granted" ? "notify_on" : permission === "denied" ? "notify_denied" : "notify_ask");
  button.disabled = permission !== "default";
}

// ---------------------------------------------------------------------------------------------------------------
// Freshness

function expired(payload, now = Date.now()) {
  return Boolean(payload && payload.valid_until && Date.parse(payload.valid_until) <= now);
}

function broadcasterUnavailable() {
  const status = state.broadcaster;
  if (!status) return false;
  return status.status === "offline" || expired(status);
}

function renderFreshness() {
  const banner = document.getElementById("unavailable");
  const anyExpired = state.picks.some((pick) => pickPayloads(pick).some((payload) => expired(payload)));
  const message = broadcasterUnavailable() ? t("offline") : anyExpired ? t("expired_banner") : "";
  banner.hidden = !message;
  banner.textContent = message;
  banner.dataset.reason = broadcasterUnavailable() ? "offline" : anyExpired ? "expired" : "";
  // What the page shows may be out of date while it cannot hear the broker or the broadcaster: dimmed, not hidden.
  document.body.dataset.live = state.connection === "connected" && !broadcasterUnavailable() ? "yes" : "no";
  // Checked every second, redrawn only on a change: the cards are a live region a screen reader reads out.
  const freshness = JSON.stringify(state.picks.map((pick) =>
    [pickKey(pick), pickPayloads(pick).some((payload) => expired(payload)), inWindow(pick.window)]));
  if (freshness === state.freshness) return;
  state.freshness = freshness;
  for (const pick of state.picks) renderPick(pick.kind, pick.id);
}

function pickPayloads(pick) {
  if (pick.kind === "line") {
    return [state.payloads.get(lineTopics(pick.id)[0]), ...(state.lineAlerts.get(pick.id) || new Map()).values()]
      .filter(Boolean);
  }
  return [state.payloads.get(stationTopic(pick.id))].filter(Boolean);
}

// ---------------------------------------------------------------------------------------------------------------
// Rendering

function lineOf(id) { return state.network.lines.find((line) => line.id === id); }
function stationOf(id) { return state.network.stations.find((station) => station.id === id); }

function pickName(pick) {
  const item = pick.kind === "line" ? lineOf(pick.id) : stationOf(pick.id);
  return text(item?.names) || pick.id;
}

function renderConnection() {
  const banner = document.getElementById("connection");
  const shown = !state.config.mqtt_websocket_url ? "unconfigured"
    : state.connection === "connected" ? "connected" : state.everConnected ? "lost" : "connecting";
  banner.dataset.state = shown;
  banner.textContent = t(shown);
}

function renderStatic() {
  document.documentElement.lang = state.lang;
  const title = text(state.config.title) || t("title");
  document.title = title;
  document.getElementById("title").textContent = title;
  const others = state.network.languages.filter((l) => l !== state.lang);
  const toggle = document.getElementById("lang");
  toggle.textContent = others.map((l) => ({ zh: "中文", en: "English" }[l] || l)).join(" / ");
  toggle.dataset.lang = state.lang;
  document.getElementById("picker-title").textContent = t("pick");
  document.getElementById("line-label").textContent = t("line");
  document.getElementById("station-label").textContent = t("station");
  document.getElementById("add-line").textContent = t("add");
  document.getElementById("add-station").textContent = t("add");
  document.getElementById("privacy").textContent = t("privacy");
  document.getElementById("feeds-link").textContent = t("feeds");
  fillSelect("line-select", state.network.lines);
  fillSelect("station-select", state.network.stations);
  renderNotifyButton();
  renderConnection();
  renderPicks();
  renderFreshness();
}

function fillSelect(id, items) {
  const select = document.getElementById(id);
  const chosen = select.value;
  select.replaceChildren(...items.map((item) => new Option(text(item.names) || item.id, item.id)));
  if (chosen) select.value = chosen;
}

function renderPicks() {
  const container = document.getElementById("picks");
  const template = document.getElementById("pick-template");
  const cards = state.picks.map((pick) => {
    const card = template.content.firstElementChild.cloneNode(true);
    card.dataset.kind = pick.kind;
    card.dataset.id = pick.id;
    const line = pick.kind === "line" ? lineOf(pick.id) : null;
    const badge = card.querySelector(".badge");
    badge.textContent = line ? line.short_name : t("station_badge");
    if (line?.color) badge.style.background = `#${line.color}`;
    card.querySelector(".name").textContent = pickName(pick);
    const remove = card.querySelector(".remove");
    remove.textContent = t("remove");
    remove.addEventListener("click", () => removePick(pick.kind, pick.id));
    buildWindowEditor(card, pick);
    return card;
  });
  container.replaceChildren(...cards);
  document.getElementById("empty").hidden = state.picks.length > 0;
  document.getElementById("empty").textContent = t("empty");
  for (const pick of state.picks) renderPick(pick.kind, pick.id);
}

function buildWindowEditor(card, pick) {
  const window = pick.window || (pick.window = { from: "", to: "", days: [] });
  card.querySelector(".from-label").textContent = t("from");
  card.querySelector(".to-label").textContent = t("to");
  card.querySelector(".window-hint").textContent = t("window_hint");
  const from = card.querySelector(".from");
  const to = card.querySelector(".to");
  from.value = window.from || "";
  to.value = window.to || "";
  const changed = () => {
    window.from = from.value;
    window.to = to.value;
    savePicks();
    renderPick(pick.kind, pick.id);
  };
  from.addEventListener("change", changed);
  to.addEventListener("change", changed);
  const days = card.querySelector(".days");
  days.replaceChildren(...TEXT.days[state.lang === "zh" ? "zh" : "en"].map((name, day) => {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = (window.days || []).includes(day);
    box.dataset.day = String(day);
    box.addEventListener("change", () => {
      window.days = [...days.querySelectorAll("input:checked")].map((b) => Number(b.dataset.day));
      savePicks();
      renderPick(pick.kind, pick.id);
    });
    label.append(box, " ", name);
    return label;
  }));
}

function windowSummary(window) {
  const hours = window?.from && window?.to ? `${window.from}–${window.to}` : "";
  const dayNames = TEXT.days[state.lang === "zh" ? "zh" : "en"];
  const days = window?.days?.length ? [...window.days].sort().map((d) => dayNames[d]).join(" ") : "";
  if (!hours && !days) return t("window_always");
  return t("window_some") + [hours, days].filter(Boolean).join(", ") + (inWindow(window) ? "" : t("quiet"));
}

function renderPick(kind, id) {
  const card = document.querySelector(`.pick[data-kind="${kind}"][data-id="${CSS.escape(id)}"]`);
  const pick = state.picks.find((p) => p.kind === kind && p.id === id);
  if (!card || !pick) return;
  card.querySelector('[data-testid="window-summary"]').textContent = windowSummary(pick.window);
  const statusBox = card.querySelector(".status");
  const alertsBox = card.querySelector(".alerts");
  let stale = false;
  let alerts = [];
  const rows = [];
  if (kind === "line") {
    const status = state.payloads.get(lineTopics(id)[0]);
    stale = expired(status);
    alerts = [...(state.lineAlerts.get(id) || new Map()).values()];
    rows.push(statusRow(lineOf(id), status, alerts));
  } else {
    const display = state.payloads.get(stationTopic(id));
    stale = expired(display);
    if (display) {
      for (const entry of display.lines || []) rows.push(statusRow(entry.line, stale ? null : entry));
    } else {
      rows.push(statusRow(null, null));
    }
    alerts = display && !stale ? display.alerts || [] : [];
  }
  statusBox.replaceChildren(...rows);
  // An alert past its valid_until is unknown: not shown, and the card says some of its data expired.
  const fresh = alerts.filter((alert) => !expired(alert));
  stale = stale || fresh.length < alerts.length;
  alertsBox.replaceChildren(...fresh.sort(byImportance).map(alertItem));
  if (!fresh.length && !stale && rows.some((row) => row.dataset.level)) {
    const none = document.createElement("li");
    none.className = "none";
    none.textContent = t("no_alerts");
    alertsBox.append(none);
  }
  const note = card.querySelector(".expired");
  note.hidden = !stale;
  note.textContent = t("expired");
  card.dataset.state = stale ? "expired" : "ok";
}

function statusRow(line, status, alerts = []) {
  const row = document.createElement("div");
  row.className = "status-row";
  row.dataset.testid = "line-status";
  row.setAttribute("data-testid", "line-status");
  if (line) row.dataset.line = line.id;
  if (!status || expired(status)) {
    row.dataset.level = "";
    row.textContent = (line && status ? `${text(line.names)}: ` : "") + (status ? t("expired") : t("waiting"));
    row.classList.add("unknown");
    return row;
  }
  const level = status.level || (status.status === "normal" ? "good" : "disrupted");
  row.dataset.level = level;
  row.dataset.status = status.status;
  const name = document.createElement("span");
  name.className = "line-name";
  name.textContent = text((status.line || line).names);
  const words = document.createElement("strong");
  words.textContent = text(status.status_text);
  row.append(name, " ", words);
  // The reason is the deciding alert's header: said once, in the alert below, when that alert is shown.
  const reasonShown = alerts.some((alert) => !expired(alert) && text(alert.header) === text(status.reason));
  if (status.reason && text(status.reason) && !reasonShown) {
    const reason = document.createElement("span");
    reason.className = "reason";
    reason.textContent = text(status.reason);
    row.append(reason);
  }
  return row;
}

const SEVERITY = { SEVERE: 3, WARNING: 2, INFO: 1, UNKNOWN_SEVERITY: 0 };

function byImportance(a, b) {
  return (b.emergency - a.emergency) || ((SEVERITY[b.severity] || 0) - (SEVERITY[a.severity] || 0));
}

function alertItem(alert) {
  const item = document.createElement("li");
  item.className = "alert" + (alert.emergency ? " emergency" : "");
  item.setAttribute("data-testid", "alert");
  item.dataset.alert = alert.alert_id;
  item.dataset.severity = alert.severity || "";
  item.dataset.connection = String(state.alertConnection.get(alert.alert_id) ?? "");
  const header = document.createElement("strong");
  header.textContent = text(alert.header);
  item.append(header);
  const description = text(alert.description);
  if (description) {
    const p = document.createElement("p");
    p.textContent = description;
    item.append(p);
  }
  return item;
}

// ---------------------------------------------------------------------------------------------------------------
// Start

async function fetchJson(path) {
  const response = await fetch(path, { cache: "no-cache" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

function pickFromUrl() {
  // The Atom feeds' pages link here as ?line=<id> or ?station=<id>: follow that pick.
  const params = new URLSearchParams(location.search);
  for (const kind of ["line", "station"]) {
    const id = params.get(kind);
    if (id) addPick(kind, id);
  }
}

// A broker URL on loopback reached from another machine (`broadcaster demo --host 0.0.0.0` opened on a phone) can
// only mean this site's own host; a production URL names a public host and is used as it is.
function brokerUrl(configured) {
  const url = new URL(configured);
  const loopback = ["127.0.0.1", "localhost", "[::1]"];
  if (loopback.includes(url.hostname) && !loopback.includes(location.hostname)) url.hostname = location.hostname;
  return url.toString();
}

function connect() {
  if (!state.config.mqtt_websocket_url) return;
  state.client = new MqttClient(brokerUrl(state.config.mqtt_websocket_url), {
    topics: topicsToFollow(),
    clientId: "commuter-" + Math.random().toString(16).slice(2, 12),
    username: state.config.mqtt_username,
    password: state.config.mqtt_password,
    onMessage,
    onState: (connection) => {
      state.connection = connection;
      if (connection === "connected") {
        state.everConnected = true;
        state.connectionNo += 1;
        // An alert resolved while the page was away has no message left on the broker: the replay about to come
        // is the whole list. (`known` stays: a replayed alert is not news.)
        state.lineAlerts.clear();
        for (const pick of state.picks) {
          if (!state.pickSince.has(pickKey(pick))) state.pickSince.set(pickKey(pick), state.connectionNo);
        }
      }
      renderConnection();
      renderFreshness();
    },
  });
  state.client.start();
}

async function main() {
  [state.config, state.network] = await Promise.all([fetchJson("page/config.json"), fetchJson("page/network.json")]);
  state.lang = chooseLanguage(state.network.languages, state.network.default_language);
  state.picks = loadPicks();
  document.getElementById("add-line").addEventListener("click", () =>
    addPick("line", document.getElementById("line-select").value));
  document.getElementById("add-station").addEventListener("click", () =>
    addPick("station", document.getElementById("station-select").value));
  document.getElementById("notify").addEventListener("click", async () => {
    if ("Notification" in window) await Notification.requestPermission(); // on the rider's tap, as browsers require
    renderNotifyButton();
  });
  document.getElementById("lang").addEventListener("click", () => {
    const languages = state.network.languages;
    state.lang = languages[(languages.indexOf(state.lang) + 1) % languages.length];
    localStorage.setItem(LANG_KEY, state.lang);
    renderStatic();
  });
  renderStatic();
  pickFromUrl();
  connect();
  setInterval(renderFreshness, CHECK_FRESHNESS_MS);
  document.body.dataset.ready = "true";
}

main();
