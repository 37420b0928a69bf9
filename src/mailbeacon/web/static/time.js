// Times in the viewer's zone, by the rules of kit/local_time.py (change both together).
// The server renders every <time data-local> already; this keeps "5 min ago" current,
// and on a first visit (no zone stored yet) tells the server the browser's zone and
// shows the page's times in it at once.
(function () {
  "use strict";
  var root = document.documentElement;
  var zone = root.getAttribute("data-time-zone") || "";
  var WEEKDAYS = { Mon: 0, Tue: 1, Wed: 2, Thu: 3, Fri: 4, Sat: 5, Sun: 6 };
  var WEEKDAY_NAMES = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
  var MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

  function partsIn(date, timeZone) {
    var format = new Intl.DateTimeFormat("en-US", {
      timeZone: timeZone || "UTC", year: "numeric", month: "numeric", day: "numeric",
      hour: "numeric", minute: "numeric", second: "numeric", weekday: "short",
      hourCycle: "h23", timeZoneName: "short"
    });
    var out = {};
    format.formatToParts(date).forEach(function (p) { out[p.type] = p.value; });
    return {
      year: Number(out.year), month: Number(out.month), day: Number(out.day),
      hour: Number(out.hour) % 24, minute: Number(out.minute), second: Number(out.second),
      weekday: WEEKDAYS[out.weekday], zoneName: out.timeZoneName || ""
    };
  }

  function two(n) { return (n < 10 ? "0" : "") + n; }
  function dayNumber(p) { return Date.UTC(p.year, p.month - 1, p.day) / 86400000; }

  function describe(date, now, timeZone) {
    var local = partsIn(date, timeZone);
    var today = partsIn(now, timeZone);
    var hm = two(local.hour) + ":" + two(local.minute);
    var seconds = (now - date) / 1000;
    var days = dayNumber(today) - dayNumber(local);
    var text;
    if (seconds >= 0 && seconds < 60) text = "just now";
    else if (seconds >= 60 && seconds < 3600) text = Math.floor(seconds / 60) + " min ago";
    else if (seconds > -3600 && seconds < 0) text = "in " + Math.max(1, Math.floor(-seconds / 60)) + " min";
    else if (days === 0) text = "today " + hm;
    else if (days === 1) text = "yesterday " + hm;
    else if (days === -1) text = "tomorrow " + hm;
    else if (days > 1 && days < 7) text = WEEKDAY_NAMES[local.weekday] + " " + hm;
    else if (local.year === today.year) text = local.day + " " + MONTHS[local.month - 1] + " " + hm;
    else text = local.day + " " + MONTHS[local.month - 1] + " " + local.year + " " + hm;
    var exact = WEEKDAY_NAMES[local.weekday] + " " + local.day + " " + MONTHS[local.month - 1] +
      " " + local.year + ", " + hm + ":" + two(local.second) + " " + local.zoneName;
    return { text: text, exact: exact.trim() };
  }

  function refresh(withTitles) {
    var now = new Date();
    Array.prototype.forEach.call(document.querySelectorAll("time[data-local]"), function (el) {
      var date = new Date(el.getAttribute("datetime"));
      if (isNaN(date.getTime())) return;
      var shown = describe(date, now, zone);
      if (el.textContent !== shown.text) el.textContent = shown.text;
      if (withTitles) el.setAttribute("title", shown.exact);
    });
  }

  window.mailbeaconTimes = { refresh: refresh, describe: describe };

  var detected = "";
  try { detected = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { /* old browser */ }
  var token = document.querySelector('meta[name="csrf-token"]');
  if (!zone && detected && token && root.hasAttribute("data-detect-zone")) {
    var body = new URLSearchParams({ time_zone: detected });
    fetch("/settings/account/time-zone", {
      method: "POST", credentials: "same-origin", body: body,
      headers: { "x-csrf-token": token.getAttribute("content"), "x-requested-with": "fetch" }
    }).then(function (response) {
      if (!response.ok) return;
      zone = detected;
      root.setAttribute("data-time-zone", zone);
      refresh(true);
    }).catch(function () { /* the next page tries again */ });
  }
  // Rows the live updates put in come rendered by the server, in the same format.
  setInterval(function () { refresh(false); }, 30000);
})();
