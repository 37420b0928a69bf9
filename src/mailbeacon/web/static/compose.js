// Compose: a small rich-text editor over the HTML textarea (which stays the form
// field, and what the page falls back to without JavaScript), and the switch
// between rich text and plain text.
(function () {
  "use strict";
  var form = document.getElementById("compose-form");
  if (!form) return;
  document.documentElement.classList.add("js");

  var editor = document.getElementById("editor");
  var source = document.getElementById("body_html");
  var toolbar = form.querySelector(".editor-toolbar");
  var toggle = form.querySelector(".toggle-source");
  var htmlPane = document.getElementById("html-pane");
  var textPane = document.getElementById("text-pane");
  var showingSource = false;

  // The draft is parsed in an inert document first: nothing in it loads or runs
  // until it is cleaned. Scripts, frames and event handlers go, and so do this
  // site's own tracking pixels (a quoted email may carry one): the app must
  // never load its own pixel.
  function isOwnPixel(src) {
    try {
      var url = new URL(src, document.baseURI);
      return /^\/t\/o\//.test(url.pathname);
    } catch (e) {
      return false;
    }
  }

  function clean(html) {
    var doc = new DOMParser().parseFromString(html, "text/html");
    doc.querySelectorAll("script, iframe, object, embed, frame, frameset, meta, link, base")
      .forEach(function (el) { el.remove(); });
    doc.querySelectorAll("img").forEach(function (img) {
      if (isOwnPixel(img.getAttribute("src") || "")) img.remove();
    });
    doc.querySelectorAll("*").forEach(function (el) {
      Array.prototype.slice.call(el.attributes).forEach(function (attr) {
        var name = attr.name.toLowerCase();
        var value = attr.value.replace(/\s+/g, "").toLowerCase();
        if (name.indexOf("on") === 0 || ((name === "href" || name === "src") && value.indexOf("javascript:") === 0)) {
          el.removeAttribute(attr.name);
        }
      });
    });
    return doc.body;
  }

  function loadEditor() {
    var body = clean(source.value);
    editor.replaceChildren.apply(editor, Array.prototype.map.call(body.childNodes, function (node) {
      return document.importNode(node, true);
    }));
  }

  function syncSource() {
    if (!showingSource) source.value = editor.innerHTML === "<br>" ? "" : editor.innerHTML;
  }

  if (editor && source && toolbar) {
    editor.contentEditable = "true";
    editor.hidden = false;
    toolbar.hidden = false;
    source.hidden = true;
    loadEditor();

    toolbar.addEventListener("click", function (event) {
      var button = event.target.closest("button");
      if (!button) return;
      if (button === toggle) {
        if (showingSource) {
          loadEditor();
        } else {
          syncSource();
        }
        showingSource = !showingSource;
        editor.hidden = showingSource;
        source.hidden = !showingSource;
        toggle.setAttribute("aria-pressed", String(showingSource));
        (showingSource ? source : editor).focus();
        return;
      }
      if (showingSource) return;
      var command = button.getAttribute("data-command");
      var value = null;
      if (command === "createLink") {
        value = window.prompt("Link address (https://…)", "https://");
        if (!value || value === "https://") return;
      }
      editor.focus();
      document.execCommand(command, false, value);
      syncSource();
    });

    editor.addEventListener("input", syncSource);
    editor.addEventListener("paste", function (event) {
      var html = event.clipboardData && event.clipboardData.getData("text/html");
      if (!html) return;
      event.preventDefault();
      document.execCommand("insertHTML", false, clean(html).innerHTML);
      syncSource();
    });
    form.addEventListener("submit", syncSource);
  }

  form.querySelectorAll('input[name="body_format"]').forEach(function (radio) {
    radio.addEventListener("change", function () {
      var text = form.querySelector('input[name="body_format"]:checked').value === "text";
      htmlPane.hidden = text;
      textPane.hidden = !text;
    });
  });

  // Before sending, each recipient gets a chip saying whether their copy will be
  // tracked ("tracked", "not tracked: no consent", ...): the server rules on consent
  // and the organisation's settings as addresses are typed. Without JavaScript the
  // email page says the same after sending.
  var csrfMeta = document.querySelector('meta[name="csrf-token"]');
  var chipLists = form.querySelectorAll("[data-chips-for]");
  if (csrfMeta && chipLists.length && window.fetch) {
    var timer = null;
    var asked = 0;
    var valueOf = function (name) {
      var el = form.querySelector('[name="' + name + '"]');
      return el ? el.value : "";
    };
    var isOn = function (name) {
      var el = form.querySelector('input[name="' + name + '"]');
      return el ? el.checked : false;
    };
    var chip = function (r) {
      var li = document.createElement("li");
      li.className = "mb-chip " + (r.tracked ? "mb-chip-tracked" : "mb-chip-untracked");
      li.setAttribute("data-address", r.address);
      li.setAttribute("data-decision", r.decision);
      li.title = r.reason;
      var address = document.createElement("span");
      address.className = "mb-chip-address";
      address.textContent = r.address;
      var label = document.createElement("span");
      label.className = "mb-chip-label";
      label.textContent = r.label;
      li.append(address, " ", label);
      return li;
    };
    var show = function (recipients) {
      chipLists.forEach(function (list) {
        var kind = list.getAttribute("data-chips-for");
        var mine = recipients.filter(function (r) { return r.kind === kind; });
        list.replaceChildren.apply(list, mine.map(chip));
        list.hidden = mine.length === 0;
      });
    };
    var ask = function () {
      var mine = ++asked;
      fetch("/api/compose/recipients", {
        method: "POST",
        credentials: "same-origin",
        headers: { "content-type": "application/json", "x-csrf-token": csrfMeta.content },
        body: JSON.stringify({
          to: valueOf("to"), cc: valueOf("cc"), bcc: valueOf("bcc"),
          open_tracking: isOn("open_tracking"), link_tracking: isOn("link_tracking")
        })
      }).then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) { if (data && mine === asked) show(data.recipients); })
        .catch(function () { /* the chips are a help; sending works without them */ });
    };
    var later = function () {
      clearTimeout(timer);
      timer = setTimeout(ask, 250);
    };
    ["to", "cc", "bcc"].forEach(function (name) {
      var el = form.querySelector('[name="' + name + '"]');
      if (el) el.addEventListener("input", later);
    });
    ["open_tracking", "link_tracking"].forEach(function (name) {
      var el = form.querySelector('input[name="' + name + '"]');
      if (el) el.addEventListener("change", ask);
    });
    if (valueOf("to") || valueOf("cc") || valueOf("bcc")) ask();
  }

  var summary = document.getElementById("error-summary");
  if (summary) summary.focus();
})();
