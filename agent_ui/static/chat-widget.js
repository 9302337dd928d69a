/*
 * Switchboard web chat widget: one script, no build step.
 *
 *   <script src="https://switchboard.example.com/chat/widget.js" data-title="Chat with us" async></script>
 *
 * Options (data-* on the script tag): data-title, data-open="true" (start opened),
 * data-prechat="off" (no name/e-mail form before the first message).
 * The visitor id lives in localStorage; the conversation comes back on every page load.
 * Everything a customer or an agent wrote is put on the page as text (textContent), never as
 * markup.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  if (!script) return;
  var server = new URL(script.src, window.location.href);
  var socketUrl = (server.protocol === "https:" ? "wss:" : "ws:") + "//" + server.host + "/ws/chat";
  var options = script.dataset;
  var VISITOR = "switchboard.chat.visitor";
  var NAME = "switchboard.chat.name";
  var store = safeStorage();

  var seen = Object.create(null);
  var pending = []; // messages written while the socket was down, resent on reconnect
  var socket = null;
  var retry = 1000;
  var typingTimer = null;
  var lastTyping = 0;

  var ui = build();
  connect();

  function safeStorage() {
    try {
      var probe = "switchboard.chat.probe";
      window.localStorage.setItem(probe, "1");
      window.localStorage.removeItem(probe);
      return window.localStorage;
    } catch (e) {
      var memory = {};
      return {
        getItem: function (k) { return memory[k] || null; },
        setItem: function (k, v) { memory[k] = String(v); },
      };
    }
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function build() {
    var style = el("style");
    style.textContent = [
      ".sb-chat{position:fixed;right:1rem;bottom:1rem;width:20rem;font:14px/1.4 system-ui,sans-serif;z-index:2147483000}",
      ".sb-chat-toggle{display:block;margin-left:auto;padding:.5rem 1rem;border:0;border-radius:1rem;background:#1f6feb;color:#fff;cursor:pointer}",
      ".sb-chat-panel{margin-top:.5rem;background:#fff;border:1px solid #d0d7de;border-radius:.5rem;box-shadow:0 4px 16px rgba(0,0,0,.15);overflow:hidden}",
      ".sb-chat-panel[hidden],.sb-chat form[hidden]{display:none}",
      ".sb-chat-title{margin:0;padding:.5rem .75rem;background:#1f6feb;color:#fff;font-size:1rem}",
      ".sb-chat-log{list-style:none;margin:0;padding:.5rem;height:16rem;overflow-y:auto}",
      ".sb-chat-log li{margin:.25rem 0;padding:.35rem .6rem;border-radius:.6rem;max-width:85%;white-space:pre-wrap;overflow-wrap:anywhere}",
      ".sb-chat-log li[data-direction=in]{margin-left:auto;background:#ddf4ff}",
      ".sb-chat-log li[data-direction=out]{background:#f6f8fa}",
      ".sb-chat-log li[data-state=pending]{opacity:.6}",
      ".sb-chat-note{padding:0 .75rem;color:#57606a;font-size:.85em;min-height:1.2em}",
      ".sb-chat form{display:flex;flex-direction:column;gap:.4rem;padding:.5rem .75rem}",
      ".sb-chat input,.sb-chat textarea{font:inherit;padding:.35rem;border:1px solid #d0d7de;border-radius:.3rem}",
      ".sb-chat button[type=submit]{padding:.4rem;border:0;border-radius:.3rem;background:#1f6feb;color:#fff;cursor:pointer}",
    ].join("\n");
    document.head.appendChild(style);

    var root = el("section", "sb-chat");
    root.setAttribute("aria-label", options.title || "Chat");
    var toggle = el("button", "sb-chat-toggle", options.title || "Chat with us");
    toggle.type = "button";
    var panel = el("div", "sb-chat-panel");
    panel.hidden = options.open !== "true";
    toggle.addEventListener("click", function () { panel.hidden = !panel.hidden; });

    var title = el("h2", "sb-chat-title", options.title || "Chat with us");
    var log = el("ol", "sb-chat-log");
    log.setAttribute("aria-live", "polite");
    var note = el("div", "sb-chat-note");

    var chat = el("form", "sb-chat-compose");
    var input = el("textarea", "sb-chat-input");
    input.rows = 2;
    input.placeholder = "Write a message…";
    input.setAttribute("aria-label", "Message");
    var send = el("button", "sb-chat-send", "Send");
    send.type = "submit";
    chat.append(input, send);

    var prechat = el("form", "sb-chat-prechat");
    prechat.hidden = true;
    var preName = field(prechat, "text", "Your name", "sb-chat-name");
    var preEmail = field(prechat, "email", "E-mail (optional)", "sb-chat-email");
    var preGo = el("button", null, "Start chat");
    preGo.type = "submit";
    prechat.append(preGo);

    var offline = el("form", "sb-chat-offline");
    offline.hidden = true;
    offline.append(el("p", null, "Nobody is online right now. Leave a message and we will answer by e-mail."));
    var offName = field(offline, "text", "Your name", "sb-chat-offline-name");
    var offEmail = field(offline, "email", "E-mail", "sb-chat-offline-email");
    var offText = el("textarea", "sb-chat-offline-text");
    offText.rows = 3;
    offText.setAttribute("aria-label", "Your message");
    offText.required = true;
    var offGo = el("button", null, "Send message");
    offGo.type = "submit";
    offline.append(offText, offGo);

    panel.append(title, log, note, prechat, offline, chat);
    root.append(toggle, panel);
    document.body.appendChild(root);

    chat.addEventListener("submit", function (e) {
      e.preventDefault();
      var text = input.value.trim();
      if (!text) return;
      input.value = "";
      write(text);
    });
    input.addEventListener("keydown", function (e) {
      if (e.key === "Enter" && !e.shiftKey) {
        e.preventDefault();
        chat.requestSubmit();
      }
    });
    input.addEventListener("input", typing);
    prechat.addEventListener("submit", function (e) {
      e.preventDefault();
      var name = preName.value.trim();
      if (!name) return;
      store.setItem(NAME, name);
      transmit({ type: "prechat", name: name, email: preEmail.value.trim() });
      show(chat);
    });
    offline.addEventListener("submit", function (e) {
      e.preventDefault();
      transmit({
        type: "offline", name: offName.value.trim(), email: offEmail.value.trim(),
        text: offText.value.trim(), client_id: newId(),
      });
    });
    return { log: log, note: note, chat: chat, prechat: prechat, offline: offline, input: input };
  }

  function field(form, type, label, className) {
    var input = el("input", className);
    input.type = type;
    input.placeholder = label;
    input.setAttribute("aria-label", label);
    form.append(input);
    return input;
  }

  function show(form) {
    [ui.chat, ui.prechat, ui.offline].forEach(function (f) { f.hidden = f !== form; });
  }

  function newId() {
    var bytes = new Uint8Array(12);
    window.crypto.getRandomValues(bytes);
    return Array.prototype.map.call(bytes, function (b) { return ("0" + b.toString(16)).slice(-2); }).join("");
  }

  function connect() {
    var visitor = store.getItem(VISITOR) || "";
    socket = new WebSocket(socketUrl + "?visitor=" + encodeURIComponent(visitor));
    socket.addEventListener("open", function () {
      retry = 1000;
      pending.forEach(function (m) { socket.send(JSON.stringify(m)); });
    });
    socket.addEventListener("message", function (e) {
      var data;
      try { data = JSON.parse(e.data); } catch (err) { return; }
      receive(data);
    });
    socket.addEventListener("close", function () {
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 30000);
    });
  }

  function transmit(message) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
  }

  function write(text) {
    var message = { type: "message", text: text, client_id: newId() };
    pending.push(message);
    line(null, "in", text, message.client_id);
    transmit(message);
  }

  function typing() {
    var now = Date.now();
    if (now - lastTyping < 2000) return;
    lastTyping = now;
    transmit({ type: "typing" });
  }

  function receive(data) {
    switch (data.type) {
      case "welcome":
        store.setItem(VISITOR, data.visitor);
        (data.history || []).forEach(function (m) { line(m.id, m.direction, m.body); });
        if (!data.agents_available && !(data.history || []).length) show(ui.offline);
        else if (options.prechat !== "off" && !store.getItem(NAME) && !(data.history || []).length) show(ui.prechat);
        else show(ui.chat);
        break;
      case "message":
        line(data.id, data.direction, data.body);
        if (data.direction === "out") ui.note.textContent = "";
        break;
      case "sent":
        pending = pending.filter(function (m) { return m.client_id !== data.client_id; });
        confirm(data.client_id, data.id);
        break;
      case "typing":
        ui.note.textContent = "Agent is typing…";
        clearTimeout(typingTimer);
        typingTimer = setTimeout(function () { ui.note.textContent = ""; }, 4000);
        break;
      case "offline_ok":
        ui.offline.replaceChildren(el("p", null, "Thank you! We will answer by e-mail (ticket " + data.ticket_number + ")."));
        break;
      case "error":
        ui.note.textContent = data.detail || "Something went wrong.";
        break;
    }
  }

  function line(id, direction, body, clientId) {
    if (id && seen[id]) return;
    if (id) seen[id] = true;
    var item = el("li", null, body);
    item.dataset.direction = direction;
    if (clientId) {
      item.dataset.client = clientId;
      item.dataset.state = "pending";
    }
    ui.log.appendChild(item);
    ui.log.scrollTop = ui.log.scrollHeight;
  }

  function confirm(clientId, id) {
    seen[id] = true;
    var item = ui.log.querySelector('li[data-client="' + clientId + '"]');
    if (item) delete item.dataset.state;
  }
})();
