// The agent console: presence, screen-pops, search, tickets, the caller log, replies.
// Everything a customer wrote is put on the page with textContent, never as markup.
import { api, el, clear, when, channelIcon } from "./common.js";

const state = { ticket: null, contactId: null, olderCursor: null, socket: null, retry: 500, receipts: new Map() };
// How far a message got; a receipt never moves a badge backwards (they can cross on the wire).
const PROGRESS = { queued: 0, sending: 1, sent: 2, delivered: 3, undelivered: 3, failed: 3, bounced: 3 };
const CANNED = [
  { label: "Greeting", text: "Hello {name},\n\nthank you for contacting us.\n" },
  { label: "Call back", text: "Hello {name},\n\nwe tried to reach you and will call again shortly.\n" },
  { label: "Resolved", text: "Hello {name},\n\nwe consider this resolved. Reply if anything is left open.\n" },
];

// --- the agent WebSocket: presence in, pops out -------------------------------------------

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws/agent`);
  state.socket = socket;
  socket.addEventListener("open", () => {
    state.retry = 500;
    status("Connected");
  });
  socket.addEventListener("message", (event) => onMessage(JSON.parse(event.data)));
  socket.addEventListener("close", () => {
    status("Disconnected, reconnecting…");
    setTimeout(connect, state.retry);
    state.retry = Math.min(state.retry * 2, 10000);
  });
}

function send(message) {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) {
    state.socket.send(JSON.stringify(message));
  }
}

// The console shows the presence the server has; it changes only when the agent says so.
async function showOwnPresence() {
  showPresence((await api("/api/v1/agents/me")).presence);
}

// Presence can change without the agent (on a call: busy; after it: after-call work).
function showPresence(presence) {
  const select = document.getElementById("presence");
  if (![...select.options].some((o) => o.value === presence)) {
    select.append(el("option", { value: presence }, [presence.replaceAll("_", " ")]));
  }
  select.value = presence;
}

function status(text) {
  document.getElementById("connection").textContent = text;
}

function onMessage(message) {
  switch (message.type) {
    case "hello":
      showOwnPresence();
      break;
    case "presence":
    case "presence_changed":
      showPresence(message.state);
      break;
    case "screen_pop":
      showPop(message);
      send({ type: "ack", id: message.id });
      refreshLists();
      break;
    case "offer":
      showPop(message);
      expireOffer(message);
      break;
    case "pop_withdrawn":
      removePop(popKey("screen_pop", message.id));
      break;
    case "offer_accepted":
      refreshLists();
      if (message.ticket_id) openTicket(message.ticket_id);
      break;
    case "message_status":
      showDelivery(message.event_id, message.status, message.detail);
      break;
    default:
      break;
  }
}

// --- screen-pops ------------------------------------------------------------------------

function showPop(pop) {
  const contact = pop.contact || { name: "Unknown caller", identities: [], tags: [], open_tickets: [], recent: [] };
  const title = pop.call ? `Incoming call from ${pop.call.from}` : reasonText(pop.reason);
  const card = el("li", { class: `pop pop-${pop.reason || pop.type}`, "data-pop-id": popKey(pop.type, pop.id) }, [
    el("p", { class: "pop-title" }, [channelIcon(pop.channel), " ", title]),
    el("p", { class: "pop-contact" }, [contact.name]),
    el("ul", { class: "identities" }, contact.identities.map((i) => el("li", {}, [`${i.kind}: ${i.value}`]))),
    contact.tags && contact.tags.length ? el("p", { class: "tags" }, [`Tags: ${contact.tags.join(", ")}`]) : "",
    attributesLine(contact.attributes),
    el("p", { class: "open-tickets" }, [`Open tickets: ${contact.open_tickets.length}`]),
    el("ol", { class: "recent" }, contact.recent.map((e) => el("li", {}, [
      channelIcon(e.channel), " ", when(e.occurred_at), " ", e.preview || e.body || "",
    ]))),
    popActions(pop),
  ]);
  document.getElementById("pops").prepend(card);
  document.getElementById("pops-empty").hidden = true;
  chime();
  notify(title, contact.name);
}

function popActions(pop) {
  const actions = el("div", { class: "pop-actions" });
  if (pop.type === "offer") {
    actions.append(
      el("button", { type: "button", "data-action": "accept" }, ["Accept"]),
      el("button", { type: "button", class: "secondary", "data-action": "reject" }, ["Reject"]),
    );
    actions.addEventListener("click", (event) => {
      const action = event.target.dataset.action;
      if (action) {
        send({ type: action, id: pop.id });
        removePop(popKey(pop.type, pop.id));
      }
    });
  }
  if (pop.ticket) {
    const open = el("button", { type: "button" }, [`Open ticket #${pop.ticket.number}`]);
    open.addEventListener("click", () => openTicket(pop.ticket.id));
    actions.append(open);
  }
  const dismiss = el("button", { type: "button", class: "secondary" }, ["Dismiss"]);
  dismiss.addEventListener("click", () => removePop(popKey(pop.type, pop.id)));
  actions.append(dismiss);
  return actions;
}

// Pops and offers are numbered apart, so a card is named by both.
function popKey(type, id) {
  return `${type}:${id}`;
}

// An offer not taken in time goes to the next agent; its card goes away by itself.
function expireOffer(offer) {
  const left = Date.parse(offer.expires_at) - Date.now();
  if (Number.isFinite(left)) setTimeout(() => removePop(popKey("offer", offer.id)), Math.max(0, left));
}

// The customer's class and flags as the CRM keeps them (e.g. ABC class, VIP).
function attributesLine(attributes) {
  const entries = Object.entries(attributes || {}).filter(([, v]) => ["string", "number", "boolean"].includes(typeof v));
  if (!entries.length) return "";
  return el("p", { class: "attributes" }, [entries.map(([k, v]) => `${k}: ${v}`).join(" · ")]);
}

function removePop(key) {
  const card = document.querySelector(`[data-pop-id="${CSS.escape(key)}"]`);
  if (card) card.remove();
  document.getElementById("pops-empty").hidden = document.getElementById("pops").children.length > 0;
}

function reasonText(reason) {
  return { new_message: "New message", assigned: "Ticket assigned to you", incoming_call: "Incoming call" }[reason] || "Offer";
}

function chime() {
  try {
    const audio = new AudioContext();
    const tone = audio.createOscillator();
    const gain = audio.createGain();
    tone.frequency.value = 880;
    gain.gain.setValueAtTime(0.1, audio.currentTime);
    gain.gain.exponentialRampToValueAtTime(0.001, audio.currentTime + 0.4);
    tone.connect(gain).connect(audio.destination);
    tone.start();
    tone.stop(audio.currentTime + 0.4);
  } catch {
    // No audio device (or not yet allowed by the browser): the card is there all the same.
  }
}

function notify(title, body) {
  if ("Notification" in window && Notification.permission === "granted" && document.hidden) {
    new Notification(title, { body });
  }
}

// --- tickets and the timeline -------------------------------------------------------------

async function openTicket(id) {
  const ticket = await api(`/api/v1/tickets/${id}`);
  state.ticket = ticket;
  state.contactId = ticket.contact_id;
  state.olderCursor = null;
  const panel = document.getElementById("ticket");
  panel.hidden = false;
  document.getElementById("ticket-title").textContent = `Ticket #${ticket.number}: ${ticket.subject || "(no subject)"}`;
  document.getElementById("ticket-status").value = ticket.status;
  document.getElementById("ticket-priority").value = ticket.priority || "normal";
  const contact = ticket.contact_id ? await api(`/api/v1/contacts/${ticket.contact_id}`) : null;
  state.contact = contact;
  document.getElementById("ticket-contact").textContent = contact
    ? `${contact.name} (contact ${contact.id}) · ${contact.identities.map((i) => i.value).join(", ")}`
    : "No contact";
  document.getElementById("contact-tags").value = contact ? contact.tags.join(", ") : "";
  const replyTo = document.getElementById("reply-to");
  clear(replyTo);
  replyTo.append(el("option", { value: "" }, ["The ticket's address"]));
  for (const identity of contact ? contact.identities : []) {
    replyTo.append(el("option", { value: identity.value }, [`${identity.kind}: ${identity.value}`]));
  }
  clear(document.getElementById("timeline"));
  await loadTimeline();
  panel.scrollIntoView({ block: "start" });
}

async function loadTimeline() {
  if (!state.contactId) return;
  const before = state.olderCursor ? `&before=${state.olderCursor}` : "";
  const page = await api(`/api/v1/contacts/${state.contactId}/timeline?limit=50${before}`);
  const list = document.getElementById("timeline");
  for (const event of page.events) list.append(timelineItem(event));
  state.olderCursor = page.next_before;
  document.getElementById("older").hidden = !page.next_before;
}

function timelineItem(event) {
  const note = event.kind === "note";
  const who = note ? `internal note by ${event.sender}` : event.direction === "in" ? "from customer" : "to customer";
  const meta = [channelIcon(event.channel), ` ${who} · ${when(event.occurred_at)}`];
  const receipt = state.receipts.get(event.id);
  const newer = receipt && (!event.status || PROGRESS[receipt.status] > PROGRESS[event.status]);
  const delivery = newer ? receipt : event.status ? { status: event.status, detail: event.status_detail } : null;
  if (event.ticket_id && state.ticket && event.ticket_id !== state.ticket.id) meta.push(` · other ticket`);
  const metaLine = el("p", { class: "event-meta" }, meta);
  if (delivery) placeBadge(metaLine, delivery.status, delivery.detail);
  return el("li", { class: `event event-${event.direction}${note ? " event-note" : ""}`, "data-event-id": String(event.id) }, [
    metaLine,
    event.subject ? el("p", { class: "event-subject" }, [event.subject]) : "",
    el("p", { class: "event-body" }, [event.body || ""]),
  ]);
}

// A receipt from the provider: remembered, and the message's badge changes where it is shown.
function showDelivery(eventId, status, detail) {
  const known = state.receipts.get(eventId);
  if (known && PROGRESS[known.status] > PROGRESS[status]) return;
  state.receipts.set(eventId, { status, detail });
  const item = document.querySelector(`[data-event-id="${CSS.escape(String(eventId))}"] .event-meta`);
  if (item) placeBadge(item, status, detail);
}

function placeBadge(meta, status, detail) {
  meta.querySelector(".delivery")?.remove();
  const text = detail ? ` · ${status} (${detail})` : ` · ${status}`;
  meta.append(el("span", { class: `delivery delivery-${status}` }, [text]));
}

async function saveTicket(event) {
  event.preventDefault();
  if (!state.ticket) return;
  const changes = {
    status: document.getElementById("ticket-status").value,
    priority: document.getElementById("ticket-priority").value,
  };
  state.ticket = await api(`/api/v1/tickets/${state.ticket.id}`, { method: "PATCH", body: changes });
  await refreshLists();
}

async function takeTicket() {
  if (!state.ticket) return;
  const me = Number(document.querySelector(".console-grid").dataset.agentId);
  state.ticket = await api(`/api/v1/tickets/${state.ticket.id}`, { method: "PATCH", body: { assignee_id: me } });
  await refreshLists();
}

async function sendReply(event) {
  event.preventDefault();
  if (!state.ticket) return;
  const body = document.getElementById("reply-body");
  const result = document.getElementById("reply-status");
  try {
    const message = { body: body.value };
    const to = document.getElementById("reply-to").value;
    if (to) message.to = to;
    await api(`/api/v1/tickets/${state.ticket.id}/messages`, { method: "POST", body: message });
    body.value = "";
    result.textContent = "Queued for sending.";
    await reloadTimeline();
  } catch (error) {
    result.textContent = `Not sent: ${error.message}`;
  }
}

async function reloadTimeline() {
  clear(document.getElementById("timeline"));
  state.olderCursor = null;
  await loadTimeline();
}

async function addNote(event) {
  event.preventDefault();
  if (!state.ticket) return;
  const body = document.getElementById("note-body");
  await api(`/api/v1/tickets/${state.ticket.id}/notes`, { method: "POST", body: { body: body.value } });
  body.value = "";
  await reloadTimeline();
}

async function saveTags(event) {
  event.preventDefault();
  if (!state.contact) return;
  const tags = document.getElementById("contact-tags").value.split(",").map((t) => t.trim()).filter(Boolean);
  state.contact = await api(`/api/v1/contacts/${state.contact.id}`, { method: "PATCH", body: { tags } });
}

async function mergeContact(event) {
  event.preventDefault();
  if (!state.contact) return;
  const into = Number(document.getElementById("merge-into").value);
  if (!window.confirm(`Merge ${state.contact.name} into contact ${into}? Its whole history moves there.`)) return;
  await api(`/api/v1/contacts/${state.contact.id}/merge`, { method: "POST", body: { into } });
  await openTicket(state.ticket.id);
}

// --- lists: my tickets, waiting, missed calls, search -------------------------------------

async function refreshLists() {
  const [mine, waiting, missed] = await Promise.all([
    api("/api/v1/tickets?assignee=me&status=new,open,pending&limit=50"),
    api("/api/v1/tickets?assignee=none&status=new,open,pending&limit=50"),
    api("/api/v1/calls?state=missed&limit=20"),
  ]);
  fillTickets("my-tickets", mine.tickets);
  fillTickets("waiting-tickets", waiting.tickets);
  const calls = document.getElementById("missed-calls");
  clear(calls);
  for (const call of missed.calls) {
    const back = el("button", { type: "button", class: "secondary" }, ["Call back"]);
    back.addEventListener("click", () => callBack(call, back));
    calls.append(el("li", {}, [`${when(call.started_at)} · ${call.from} `, back]));
  }
}

function fillTickets(listId, tickets) {
  const list = document.getElementById(listId);
  clear(list);
  for (const ticket of tickets) {
    const link = el("button", { type: "button", class: "link" }, [
      `#${ticket.number} ${ticket.subject || "(no subject)"} · ${ticket.status}`,
    ]);
    link.addEventListener("click", () => openTicket(ticket.id));
    list.append(el("li", {}, [channelIcon(ticket.channel), " ", link]));
  }
}

async function callBack(call, button) {
  button.disabled = true;
  try {
    await api("/api/v1/calls", { method: "POST", body: { to: call.from, ticket_id: call.ticket_id } });
    button.textContent = "Calling…";
  } catch (error) {
    button.textContent = `Failed: ${error.message}`;
  }
}

async function search(event) {
  event.preventDefault();
  const q = document.getElementById("search").value.trim();
  const results = document.getElementById("search-results");
  clear(results);
  const found = await api(`/api/v1/search?q=${encodeURIComponent(q)}`);
  for (const contact of found.contacts) {
    results.append(el("li", {}, [`${contact.name} (contact ${contact.id}) · ${contact.identities.map((i) => i.value).join(", ")}`]));
  }
  for (const ticket of found.tickets) {
    const link = el("button", { type: "button", class: "link" }, [`#${ticket.number} ${ticket.subject || ""}`]);
    link.addEventListener("click", () => openTicket(ticket.id));
    results.append(el("li", {}, [channelIcon(ticket.channel), " ", link]));
  }
  if (!results.children.length) results.append(el("li", {}, ["Nothing found."]));
}

// --- canned responses, shortcuts ------------------------------------------------------------

function fillCanned() {
  const select = document.getElementById("canned");
  CANNED.forEach((canned, index) => select.append(el("option", { value: String(index) }, [canned.label])));
  select.addEventListener("change", () => {
    const canned = CANNED[Number(select.value)];
    if (!canned) return;
    const name = state.contact ? state.contact.name : "";
    document.getElementById("reply-body").value = canned.text.replaceAll("{name}", name);
    select.value = "";
  });
}

function shortcuts(event) {
  const typing = ["INPUT", "TEXTAREA", "SELECT"].includes(document.activeElement.tagName);
  if (event.ctrlKey && event.key === "Enter" && document.activeElement.id === "reply-body") {
    document.getElementById("reply-form").requestSubmit();
  } else if (event.altKey && ["1", "2", "3"].includes(event.key)) {
    const presence = document.getElementById("presence");
    presence.value = ["available", "away", "offline"][Number(event.key) - 1];
    presence.dispatchEvent(new Event("change"));
  } else if (event.altKey && event.key === "s") {
    document.getElementById("ticket-form").requestSubmit();
  } else if (!typing && event.key === "/") {
    event.preventDefault();
    document.getElementById("search").focus();
  } else if (!typing && event.key === "r" && state.ticket) {
    event.preventDefault();
    document.getElementById("reply-body").focus();
  } else if (!typing && event.key === "n" && state.ticket) {
    event.preventDefault();
    document.getElementById("note-body").focus();
  }
}

document.getElementById("presence").addEventListener("change", (event) => {
  send({ type: "presence", state: event.target.value });
});
document.getElementById("notify").addEventListener("click", () => Notification.requestPermission());
document.getElementById("search-form").addEventListener("submit", search);
document.getElementById("ticket-form").addEventListener("submit", saveTicket);
document.getElementById("reply-form").addEventListener("submit", sendReply);
document.getElementById("older").addEventListener("click", loadTimeline);
document.getElementById("note-form").addEventListener("submit", addNote);
document.getElementById("take").addEventListener("click", takeTicket);
document.getElementById("tags-form").addEventListener("submit", saveTags);
document.getElementById("merge-form").addEventListener("submit", mergeContact);
document.addEventListener("keydown", shortcuts);
fillCanned();
connect();
refreshLists();
setInterval(refreshLists, 15000);
