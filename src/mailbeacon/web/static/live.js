// Live updates: the bell's unread count, the Mail tab's icons, an email's detail
// and the Sales Assistant feed. One server-sent event stream per page carries
// counts and ids only; what changed is fetched back from this site, scoped to
// the signed-in user like any page.
(function () {
  "use strict";
  var bell = document.getElementById("mb-bell");
  if (!bell || !window.EventSource || !window.fetch) return;
  var badge = document.getElementById("mb-bell-count");
  var unread = null;

  function showCount(count) {
    badge.textContent = count > 99 ? "99+" : String(count);
    badge.hidden = count === 0;
    bell.setAttribute("data-unread", String(count));
    bell.setAttribute("aria-label", "Sales Assistant, " + count + " unread");
    if (unread !== null && count > unread) {
      badge.classList.remove("mb-bump");
      void badge.offsetWidth; // restart the animation
      badge.classList.add("mb-bump");
    }
  }

  function fetchHtml(url) {
    return fetch(url, { credentials: "same-origin", headers: { accept: "text/html" } }).then(
      function (response) {
        if (!response.ok) throw new Error(url + ": " + response.status);
        return response.text();
      }
    );
  }

  function fragment(html) {
    var template = document.createElement("template");
    template.innerHTML = html;
    return template.content;
  }

  // The Mail tab: re-render the rows of the emails that changed, if shown.
  function refreshRows(ids) {
    var body = document.querySelector("[data-live-rows]");
    if (!body) return;
    var shown = Array.prototype.map.call(body.querySelectorAll("tr[data-message-id]"), function (tr) {
      return Number(tr.getAttribute("data-message-id"));
    });
    var wanted = ids === null ? shown : shown.filter(function (id) { return ids.indexOf(id) >= 0; });
    if (!wanted.length) return;
    fetchHtml("/mail/rows?ids=" + wanted.join(",")).then(function (html) {
      var rows = fragment(html).querySelectorAll("tr[data-message-id]");
      Array.prototype.forEach.call(rows, function (row) {
        var old = document.getElementById(row.id);
        if (old) old.replaceWith(row);
      });
    }).catch(function () { /* the next update tries again */ });
  }

  // An email's detail: offer to show what is new (the page holds a form of its own).
  function noteDetail(ids) {
    var detail = document.querySelector("[data-live-message]");
    if (!detail) return;
    var id = Number(detail.getAttribute("data-live-message"));
    if (ids === null || ids.indexOf(id) >= 0) {
      var notice = detail.querySelector(".mb-live-notice");
      if (notice) notice.hidden = false;
    }
  }

  // The Sales Assistant's first page: reload its list when the count moves.
  function refreshFeed() {
    var feed = document.querySelector("[data-live-feed]");
    if (!feed || feed.hasAttribute("data-paged")) return;
    fetchHtml("/assistant/items").then(function (html) {
      feed.replaceChildren(fragment(html));
    }).catch(function () {});
  }

  // The bell's dropdown: the latest notifications, "Mark read" and "See all". A plain
  // click on the bell opens it; the link itself still leads to the feed (new tab, no JS).
  var panel = document.getElementById("mb-bell-panel");
  var csrf = document.querySelector('meta[name="csrf-token"]');

  function panelOpen() { return panel && !panel.hidden; }

  function loadPanel() {
    return fetchHtml("/assistant/latest").then(function (html) {
      panel.replaceChildren(fragment(html));
      var head = panel.querySelector("[data-unread]");
      if (head) { unread = Number(head.getAttribute("data-unread")); showCount(unread); }
    }).catch(function () {});
  }

  function setPanel(open) {
    if (!panel) return;
    panel.hidden = !open;
    bell.setAttribute("aria-expanded", open ? "true" : "false");
    if (open) loadPanel();
  }

  if (panel) {
    // With this script the bell opens a dropdown rather than going somewhere.
    bell.setAttribute("role", "button");
    bell.setAttribute("aria-expanded", "false");
    bell.setAttribute("aria-controls", "mb-bell-panel");
    bell.addEventListener("click", function (event) {
      if (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
      event.preventDefault();
      setPanel(!panelOpen());
    });
    document.addEventListener("click", function (event) {
      if (panelOpen() && !panel.contains(event.target) && !bell.contains(event.target)) setPanel(false);
    });
    document.addEventListener("keydown", function (event) {
      if (event.key === "Escape" && panelOpen()) { setPanel(false); bell.focus(); }
    });
    // "Mark read" and "Mark all read" in the dropdown stay in it.
    panel.addEventListener("submit", function (event) {
      var form = event.target;
      if (!form.hasAttribute("data-bell-action") || !csrf) return;
      event.preventDefault();
      fetch(form.action, {
        method: "POST", credentials: "same-origin", body: new URLSearchParams(new FormData(form)),
        headers: { "x-csrf-token": csrf.getAttribute("content"), "x-requested-with": "fetch" }
      }).then(function () { return loadPanel(); }).catch(function () {});
    });
  }

  var source = new EventSource("/api/notifications/stream");
  source.onmessage = function (event) {
    var data;
    try { data = JSON.parse(event.data); } catch (e) { return; }
    if (data.type === "unread") {
      var changed = unread !== null && data.count !== unread;
      showCount(data.count);
      unread = data.count;
      if (changed) refreshFeed();
      if (changed && panelOpen()) loadPanel();
    } else if (data.type === "activity") {
      refreshRows(data.message_ids);
      noteDetail(data.message_ids);
    }
  };
  window.addEventListener("pagehide", function () { source.close(); });
})();
