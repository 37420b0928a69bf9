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

  var summary = document.getElementById("error-summary");
  if (summary) summary.focus();
})();
