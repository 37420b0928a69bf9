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

  // Attachments: each chosen file with its size, and the total against the limit, so a
  // file too big or empty is caught here, before the files would have to be chosen again.
  var files = document.getElementById("attachments");
  var fileList = document.getElementById("attachment-list");
  var fileProblem = "";
  function sizeText(n) {
    if (n < 1000) return n + (n === 1 ? " byte" : " bytes");
    if (n < 1000000) return Math.ceil(n / 1000) + " KB";
    var tenths = Math.ceil(n / 100000);
    return (tenths % 10 ? (tenths / 10).toFixed(1) : String(tenths / 10)) + " MB";
  }
  function checkFiles() {
    if (!files || !fileList) return;
    var limit = Number(files.getAttribute("data-limit"));
    var most = Number(files.getAttribute("data-max-files"));
    var chosen = Array.prototype.slice.call(files.files || []);
    var total = 0;
    var empty = [];
    fileList.replaceChildren.apply(fileList, chosen.map(function (f) {
      total += f.size;
      if (!f.size) empty.push("“" + f.name + "”");
      var li = document.createElement("li");
      li.textContent = f.name + " · " + sizeText(f.size) + (f.type ? " · " + f.type : "");
      return li;
    }));
    fileList.hidden = chosen.length === 0;
    fileProblem = "";
    if (empty.length) {
      fileProblem = empty.join(", ") + (empty.length === 1 ? " is" : " are") + " empty (0 bytes): choose another file.";
    } else if (chosen.length > most) {
      fileProblem = "An email can carry at most " + most + " files.";
    } else if (total > limit) {
      fileProblem = "The attachments come to " + sizeText(total) + "; an email can carry at most " +
        files.getAttribute("data-limit-text") + " of files.";
    }
    var shown = document.getElementById("attachments-check");
    if (fileProblem) {
      if (!shown) {
        shown = document.createElement("p");
        shown.id = "attachments-check";
        shown.className = "field-error";
        shown.setAttribute("role", "alert");
        files.parentNode.insertBefore(shown, files);
        files.setAttribute("aria-describedby", (files.getAttribute("aria-describedby") || "") + " attachments-check");
      }
      shown.textContent = fileProblem;
      files.setAttribute("aria-invalid", "true");
    } else if (shown) {
      shown.remove();
      files.setAttribute("aria-describedby", (files.getAttribute("aria-describedby") || "").replace(" attachments-check", ""));
      files.removeAttribute("aria-invalid");
    }
  }
  if (files) {
    files.addEventListener("change", checkFiles);
    form.addEventListener("submit", function (event) {
      checkFiles();
      if (fileProblem) {
        event.preventDefault();
        files.focus();
      }
    });
  }

  // An email without a subject or a message is usually a slip: ask before sending, in a
  // dialog (the server asks the same through the form when JavaScript is off).
  var dialog = document.getElementById("send-confirm");
  var confirmed = false;
  function missingParts() {
    var missing = [];
    var subject = form.querySelector('[name="subject"]');
    if (subject && !subject.value.trim()) missing.push("subject");
    var text = form.querySelector('input[name="body_format"]:checked');
    var empty;
    if (text && text.value === "text") {
      empty = !document.getElementById("body_text").value.trim();
    } else {
      // The editor's own submit handler has copied its content into the field by now.
      var doc = new DOMParser().parseFromString(source ? source.value : "", "text/html");
      empty = !doc.body.textContent.trim() && !doc.querySelector("img");
    }
    if (empty) missing.push("message");
    return missing;
  }
  if (dialog && typeof dialog.showModal === "function") {
    form.addEventListener("submit", function (event) {
      if (event.defaultPrevented || confirmed) return;
      if (event.submitter && event.submitter.name === "send_anyway") return;
      var missing = missingParts();
      if (!missing.length) return;
      event.preventDefault();
      document.getElementById("send-confirm-question").textContent =
        missing.length === 2 ? "This email has no subject and no message. Send it anyway?"
          : "This email has no " + missing[0] + ". Send it anyway?";
      dialog.showModal();
      dialog.querySelector('[data-answer="edit"]').focus();
    });
    dialog.addEventListener("click", function (event) {
      var answer = event.target.closest("[data-answer]");
      if (!answer) return;
      dialog.close();
      if (answer.getAttribute("data-answer") === "send") {
        confirmed = true;
        var flag = document.createElement("input");
        flag.type = "hidden";
        flag.name = "send_anyway";
        flag.value = "true";
        form.appendChild(flag);
        if (form.requestSubmit) form.requestSubmit(); else form.submit();
      } else {
        var first = form.querySelector('[name="subject"]');
        if (first && !first.value.trim()) first.focus();
        else if (editor && !editor.hidden) editor.focus();
      }
    });
  }

  var check = document.getElementById("send-check");
  var summary = document.getElementById("error-summary");
  if (summary) summary.focus();
  else if (check) check.focus();
})();
