// The commuter page's service worker: only so that phones, where a page may not construct a Notification itself
// (Chrome on Android), can show one through the registration. A tap on it brings the page back.
self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  event.waitUntil(self.clients.matchAll({ type: "window" }).then((windows) =>
    windows.length ? windows[0].focus() : self.clients.openWindow(self.registration.scope)));
});
