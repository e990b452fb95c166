// A pick's notification window, the T-Alerts model: hours (from-to, "HH:MM", across midnight when from is after
// to; from equal to to: 24 hours) and days (0 Sunday to 6 Saturday, as Date.getDay()). No hours: all day; no days:
// every day. Hours across midnight belong to the day they start on: Friday 22:00-02:00 covers the night into
// Saturday, not Friday's small hours.

const HHMM = /^([01][0-9]|2[0-3]):[0-5][0-9]$/;

// A window as saved in this browser, made safe to use: what another version of the page, an extension or a hand
// edit left there must not make every redraw throw. Hours that are not both "HH:MM" mean all day; days keep only
// 0 to 6, once each.
export function cleanWindow(saved) {
  const window = saved && typeof saved === "object" ? saved : {};
  const hours = HHMM.test(window.from) && HHMM.test(window.to);
  const days = Array.isArray(window.days) ? window.days : [];
  return {
    from: hours ? window.from : "",
    to: hours ? window.to : "",
    days: [...new Set(days.filter((day) => Number.isInteger(day) && day >= 0 && day <= 6))],
  };
}

const minutesOf = (hhmm) => {
  const [h, m] = hhmm.split(":").map(Number);
  return h * 60 + m;
};

export function inWindow(window, now = new Date()) {
  if (!window) return true;
  const days = window.days || [];
  const minutes = now.getHours() * 60 + now.getMinutes();
  const today = now.getDay();
  const dayOk = (day) => !days.length || days.includes(day);
  if (!window.from || !window.to) return dayOk(today);
  const [from, to] = [minutesOf(window.from), minutesOf(window.to)];
  if (from < to) return dayOk(today) && minutes >= from && minutes < to;
  // Across midnight: the evening part is today's window, the small hours are yesterday's.
  return (minutes >= from && dayOk(today)) || (minutes < to && dayOk((today + 6) % 7));
}
