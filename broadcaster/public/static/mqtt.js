// A small MQTT 3.1.1 client over WebSocket for pages that only listen: CONNECT (optionally with a user name and
// password), SUBSCRIBE and UNSUBSCRIBE, receive PUBLISH (QoS 0 and 1, acknowledged), PINGREQ keepalive, reconnect
// with backoff. No dependencies, no CDN. Shared by the commuter page and the demo's display board; it works with
// Mosquitto's `protocol websockets` listener and with amqtt's (both take the "mqtt" subprotocol).
//
//   const client = new MqttClient("ws://host:port/", {
//     topics: ["metro/v1/stations/peoples-square/display"],
//     username: "public", password: "public",  // optional
//     onMessage: (topic, bytes, retained) => { ... },
//     onState: (state) => { ... },          // "connecting" | "connected" | "disconnected"
//   });
//   client.start();

const CONNECT = 1, CONNACK = 2, PUBLISH = 3, PUBACK = 4, SUBSCRIBE = 8, SUBACK = 9, UNSUBSCRIBE = 10,
  PINGREQ = 12, PINGRESP = 13;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

function utf8Field(text) {
  const bytes = encoder.encode(text);
  return [bytes.length >> 8, bytes.length & 0xff, ...bytes];
}

function packet(first, body) {
  const length = [];
  let n = body.length;
  do {
    let byte = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) byte |= 0x80;
    length.push(byte);
  } while (n > 0);
  return new Uint8Array([first, ...length, ...body]);
}

export class MqttClient {
  constructor(url, { topics = [], keepalive = 20, clientId = null, username = null, password = null,
                     onMessage = () => {}, onState = () => {} } = {}) {
    this.url = url;
    this.topics = [...topics];
    this.username = username;
    this.password = password;
    this.keepalive = keepalive;
    this.clientId = clientId || "display-" + Math.random().toString(16).slice(2, 10);
    this.onMessage = onMessage;
    this.onState = onState;
    this.state = "disconnected";
    this.socket = null;
    this.buffer = new Uint8Array(0);
    this.nextPacketId = 1;
    this.retryDelay = 500;
    this.pingTimer = null;
    this.awaitingPong = false;
    this.stopped = false;
  }

  start() {
    this.stopped = false;
    this.open();
  }

  stop() {
    this.stopped = true;
    if (this.socket) this.socket.close();
  }

  setState(state) {
    if (state === this.state) return;
    this.state = state;
    this.onState(state);
  }

  open() {
    this.setState("connecting");
    this.buffer = new Uint8Array(0);
    let socket;
    try {
      socket = new WebSocket(this.url, ["mqtt"]);
    } catch (error) {
      this.scheduleReconnect();
      return;
    }
    socket.binaryType = "arraybuffer";
    socket.onopen = () => this.sendConnect();
    socket.onmessage = (event) => this.receive(new Uint8Array(event.data));
    socket.onclose = () => {
      if (this.socket !== socket) return;
      this.socket = null;
      clearInterval(this.pingTimer);
      this.setState("disconnected");
      this.scheduleReconnect();
    };
    socket.onerror = () => socket.close();
    this.socket = socket;
  }

  scheduleReconnect() {
    if (this.stopped) return;
    const delay = this.retryDelay;
    this.retryDelay = Math.min(this.retryDelay * 2, 10000);
    setTimeout(() => { if (!this.stopped && !this.socket) this.open(); }, delay);
  }

  send(bytes) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) this.socket.send(bytes);
  }

  sendConnect() {
    let flags = 0x02; // clean session: a display wants the retained state, not a backlog
    const credentials = [];
    if (this.username != null) {
      flags |= 0x80;
      credentials.push(...utf8Field(this.username));
      if (this.password != null) {
        flags |= 0x40;
        credentials.push(...utf8Field(this.password));
      }
    }
    const body = [...utf8Field("MQTT"), 4, flags, this.keepalive >> 8, this.keepalive & 0xff,
                  ...utf8Field(this.clientId), ...credentials];
    this.send(packet(CONNECT << 4, body));
  }

  packetId() {
    const id = this.nextPacketId++ & 0xffff || 1;
    return [id >> 8, id & 0xff];
  }

  sendSubscribe(topics = this.topics) {
    if (!topics.length) return;
    const body = this.packetId();
    for (const topic of topics) body.push(...utf8Field(topic), 1);
    this.send(packet((SUBSCRIBE << 4) | 0x02, body));
  }

  sendUnsubscribe(topics) {
    if (!topics.length) return;
    const body = this.packetId();
    for (const topic of topics) body.push(...utf8Field(topic));
    this.send(packet((UNSUBSCRIBE << 4) | 0x02, body));
  }

  // Follow a new list of topic filters: subscribe to the added ones and unsubscribe from the dropped ones now
  // if connected; every (re)connection subscribes to the whole list.
  setTopics(topics) {
    const added = topics.filter((t) => !this.topics.includes(t));
    const dropped = this.topics.filter((t) => !topics.includes(t));
    this.topics = [...topics];
    if (this.state !== "connected") return;
    this.sendUnsubscribe(dropped);
    this.sendSubscribe(added);
  }

  startPings() {
    clearInterval(this.pingTimer);
    this.awaitingPong = false;
    this.pingTimer = setInterval(() => {
      if (this.awaitingPong) { // no answer to the last ping: the connection is dead even if the socket is not
        if (this.socket) this.socket.close();
        return;
      }
      this.awaitingPong = true;
      this.send(packet(PINGREQ << 4, []));
    }, (this.keepalive * 1000) / 2);
  }

  receive(chunk) {
    const joined = new Uint8Array(this.buffer.length + chunk.length);
    joined.set(this.buffer);
    joined.set(chunk, this.buffer.length);
    this.buffer = joined;
    for (;;) {
      // fixed header: first byte, then 1-4 bytes of remaining length
      let length = 0, multiplier = 1, pos = 1, complete = false;
      while (pos < this.buffer.length && pos <= 4) {
        const byte = this.buffer[pos++];
        length += (byte & 0x7f) * multiplier;
        multiplier *= 128;
        if (!(byte & 0x80)) { complete = true; break; }
      }
      if (!complete || this.buffer.length < pos + length) return;
      const first = this.buffer[0];
      const body = this.buffer.slice(pos, pos + length);
      this.buffer = this.buffer.slice(pos + length);
      this.handle(first, body);
    }
  }

  handle(first, body) {
    const type = first >> 4;
    if (type === CONNACK) {
      if (body[1] !== 0) { // refused: close and try again later
        if (this.socket) this.socket.close();
        return;
      }
      this.retryDelay = 500;
      this.setState("connected");
      this.sendSubscribe();
      this.startPings();
    } else if (type === PUBLISH) {
      const qos = (first >> 1) & 0x03;
      const retained = (first & 0x01) === 1;
      const topicLength = (body[0] << 8) | body[1];
      const topic = decoder.decode(body.slice(2, 2 + topicLength));
      let pos = 2 + topicLength;
      if (qos > 0) {
        const id = [body[pos], body[pos + 1]];
        pos += 2;
        this.send(packet(PUBACK << 4, id));
      }
      this.onMessage(topic, body.slice(pos), retained);
    } else if (type === PINGRESP) {
      this.awaitingPong = false;
    } else if (type === SUBACK) {
      // granted QoS per topic; nothing to do
    }
  }
}

// Ids in topics are percent-encoded as docs/mqtt.md says: letters, digits and -_.~!$&'()*,;=:@ are kept.
export function topicSegment(id) {
  return Array.from(encoder.encode(id)).map((byte) => {
    const ch = String.fromCharCode(byte);
    return byte < 0x80 && /[A-Za-z0-9\-_.~!$&'()*,;=:@]/.test(ch) ? ch : "%" + byte.toString(16).toUpperCase().padStart(2, "0");
  }).join("");
}
