// A pick's notification window, the T-Alerts model: hours (from-to, "HH:MM", across midnight when from is after
// to; from equal to to: 24 hours) and days (0 Sunday to 6 Saturday, as Date.getDay()). No hours: all day; no days:
// every day. Hours across midnight belong to the day they start on: Friday 22:00-02:00 covers the night into
// Saturday, not Friday's small hours.

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
