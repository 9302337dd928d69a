// The campaign page: choose an audience (a saved segment or a filter, with a live count and
// sample contacts), write the message for the channel, preview it rendered for sample
// contacts, start it and watch it go out. Everything comes from /api/v1/segments and
// /api/v1/campaigns; customer data is only ever set as text.
import { api, el, clear, when, channelIcon } from "./common.js";

const POLL_MS = 1000; // live progress of the open campaign
const LIST_POLL_MS = 5000;
const COUNT_DELAY_MS = 300; // typing pause before the audience is counted again
const SAMPLE = 5;
const FINISHED = new Set(["completed", "cancelled"]);
// What each status allows; the API answers 409 to anything else.
const ACTIONS = {
  draft: ["start", "cancel"],
  scheduled: ["pause", "cancel"],
  running: ["pause", "cancel"],
  paused: ["resume", "cancel"],
  completed: [],
  cancelled: [],
};
const COUNTS = [
  ["targeted", "Targeted"],
  ["queued", "Queued"],
  ["sent", "Sent"],
  ["delivered", "Delivered"],
  ["failed", "Failed"],
  ["opted_out", "Replied STOP"],
  ["replied", "Replied"],
];

const $ = (id) => document.getElementById(id);
const form = $("campaign-form");
let segments = [];
// The draft saved from the form as it was then (key), and whether its preview rendered cleanly.
let draft = null; // { key, campaign, clean }
let shown = null; // the campaign in the progress panel
let countTimer = null;
let countSeq = 0;

// --- audience -------------------------------------------------------------------------------

function fromSegment() {
  return form.elements.audience.value === "segment";
}

// The filter the form's fields describe; empty fields are left out (the API ANDs the rest).
function builtFilter() {
  const filter = {};
  for (const input of form.querySelectorAll("[data-filter]")) {
    const raw = input.value.trim();
    if (!raw) continue;
    const key = input.dataset.filter;
    if ("list" in input.dataset) filter[key] = splitList(raw, "upper" in input.dataset);
    else if (key === "vip") filter[key] = raw === "true";
    else filter[key] = raw;
  }
  return filter;
}

function splitList(raw, upper) {
  const items = raw.split(",").map((item) => item.trim()).filter(Boolean);
  return upper ? items.map((item) => item.toUpperCase()) : items;
}

function chosenSegment() {
  return segments.find((segment) => String(segment.id) === $("segment").value) || null;
}

// The audience as the campaign API takes it, or null when no segment is chosen yet.
function audience() {
  if (!fromSegment()) return { filter: builtFilter() };
  const segment = chosenSegment();
  return segment ? { segment_id: segment.id } : null;
}

function scheduleCount() {
  clearTimeout(countTimer);
  countTimer = setTimeout(countAudience, COUNT_DELAY_MS);
}

async function countAudience() {
  const seq = ++countSeq;
  const status = $("audience-status");
  const filter = fromSegment() ? chosenSegment()?.filter : builtFilter();
  if (!filter) {
    showCount("–", [], "Choose a segment.");
    return;
  }
  status.textContent = "Counting…";
  try {
    const found = await api("/api/v1/segments/preview", { method: "POST", body: { filter, sample: SAMPLE } });
    if (seq === countSeq) showCount(String(found.count), found.sample, "");
  } catch (error) {
    if (seq === countSeq) showCount("–", [], `Cannot count: ${error.message}`);
  }
}

function showCount(count, sample, message) {
  $("audience-count").textContent = count;
  $("audience-noun").textContent = count === "1" ? "contact" : "contacts";
  $("audience-status").textContent = message;
  const list = $("audience-sample");
  clear(list);
  for (const contact of sample) {
    const addresses = contact.identities.map((identity) => `${identity.kind} ${identity.value}`).join(", ");
    list.append(el("li", { "data-contact-id": String(contact.contact_id) }, [
      el("strong", {}, [contact.name || `Contact #${contact.contact_id}`]),
      ` ${addresses}`,
      contact.tags.length ? el("span", { class: "hint" }, [` · ${contact.tags.join(", ")}`]) : "",
    ]));
  }
}

function chooseAudience() {
  const segment = fromSegment();
  $("audience-segment").hidden = !segment;
  $("audience-filter").hidden = segment;
  scheduleCount();
}

async function loadSegments() {
  const chosen = $("segment").value;
  segments = (await api("/api/v1/segments")).segments;
  const select = $("segment");
  clear(select);
  select.append(el("option", { value: "" }, ["—"]),
    ...segments.map((segment) => el("option", { value: String(segment.id) }, [segment.name])));
  select.value = chosen;
}

function showSegment() {
  const segment = chosenSegment();
  $("segment-filter").textContent = segment ? `Filter: ${describe(segment.filter)}` : "";
  scheduleCount();
}

function describe(filter) {
  const parts = Object.entries(filter).map(([key, value]) => {
    const text = Array.isArray(value) ? value.join(", ") : typeof value === "object" ? JSON.stringify(value) : String(value);
    return `${key.replaceAll("_", " ")} ${text}`;
  });
  return parts.join(" · ") || "every contact";
}

async function saveSegment() {
  const status = $("audience-status");
  const name = $("segment-name").value.trim();
  if (!name) {
    status.textContent = "Give the segment a name.";
    $("segment-name").focus();
    return;
  }
  try {
    const segment = await api("/api/v1/segments", { method: "POST", body: { name, filter: builtFilter() } });
    await loadSegments();
    status.textContent = `Saved as the segment “${segment.name}”.`;
  } catch (error) {
    status.textContent = `Not saved: ${error.message}`;
  }
}

// --- message and rules ----------------------------------------------------------------------

function channel() {
  return $("campaign-channel").value;
}

let previousChannel = channel();

// The message fields of the chosen channel; the audience follows the channel unless the
// supervisor picked another one for it.
function chooseChannel() {
  for (const part of form.querySelectorAll("[data-channel]")) part.hidden = part.dataset.channel !== channel();
  const reachable = $("f-channel");
  if (reachable.value === previousChannel) {
    reachable.value = channel();
    if (!fromSegment()) scheduleCount();
  }
  previousChannel = channel();
}

function template() {
  if (channel() !== "email") return { body: $(`${channel()}-body`).value };
  const html = $("email-html").value;
  return { subject: $("email-subject").value, text: $("email-text").value, ...(html.trim() ? { html } : {}) };
}

function rules() {
  const number = (id) => (Number($(id).value) > 0 ? Number($(id).value) : null);
  const [start, end] = [$("quiet-start").value, $("quiet-end").value];
  const [perSecond, max, days] = [number("per-second"), number("cap-max"), number("cap-days")];
  const sender = $("sender").value.trim();
  const scheduled = $("scheduled-at").value;
  return {
    pacing: perSecond ? { per_second: perSecond } : null,
    quiet_hours: start && end ? { start, end } : null,
    frequency_cap: max && days ? { max, days } : null,
    // Named even when empty: a draft changed in place keeps what its change leaves out.
    sender: sender || null,
    scheduled_at: scheduled ? new Date(scheduled).toISOString() : null,
  };
}

function campaignBody() {
  const chosen = audience();
  if (chosen === null) return null;
  return { name: $("campaign-name").value.trim(), channel: channel(), ...chosen, template: template(), ...rules() };
}

// --- draft, preview, start ------------------------------------------------------------------

// The draft of the form as it is now: made at the first preview, then changed in place as the
// form changes, so that one form is one campaign in the list (not a cancelled one per change).
async function saveDraft(body) {
  const key = JSON.stringify(body);
  if (draft?.key === key) return draft.campaign;
  const campaign = draft
    ? await api(`/api/v1/campaigns/${draft.campaign.id}`, { method: "PATCH", body })
    : await api("/api/v1/campaigns", { method: "POST", body });
  draft = { key, campaign, clean: false };
  return campaign;
}

async function preview(event) {
  event.preventDefault();
  const status = $("form-status");
  const body = campaignBody();
  clearProblem();
  $("start-draft").disabled = true;
  if (!body?.name) {
    status.textContent = body ? "Give the campaign a name." : "Choose a saved segment.";
    (body ? $("campaign-name") : $("segment")).focus();
    return;
  }
  status.textContent = "Saving the draft…";
  try {
    const campaign = await saveDraft(body);
    const result = await api(`/api/v1/campaigns/${campaign.id}/preview`, { method: "POST", body: { sample: SAMPLE } });
    showPreview(result);
    draft.clean = result.errors.length === 0;
    $("start-draft").disabled = !draft.clean;
    status.textContent = draft.clean
      ? `Draft saved: ${result.count} recipient${result.count === 1 ? "" : "s"}. Check the samples, then start.`
      : "The message does not render for some contacts; fix it and preview again.";
    refreshList();
  } catch (error) {
    status.textContent = "Not previewed.";
    showProblem(error);
    $("preview-panel").hidden = true;
  }
}

// A template that does not compile names its part and line: say so, and mark that field.
function showProblem(error) {
  const problem = $("template-error");
  const part = error.data?.error === "template_error" ? error.data.part : null;
  const field = part && $(channel() === "email" ? `email-${part}` : `${channel()}-${part}`);
  problem.textContent = field ? `Template error: ${error.message}` : error.message;
  problem.hidden = false;
  if (!field) return;
  field.setAttribute("aria-invalid", "true");
  field.setAttribute("aria-describedby", "template-error");
  field.focus();
}

function clearProblem() {
  $("template-error").hidden = true;
  for (const field of form.querySelectorAll("[aria-invalid]")) {
    field.removeAttribute("aria-invalid");
    field.removeAttribute("aria-describedby");
  }
}

function showPreview(result) {
  $("preview-panel").hidden = false;
  const info = $("sms-info");
  info.hidden = !result.sms;
  if (result.sms) {
    const { encoding, characters, segments: parts } = result.sms;
    const why = encoding === "UCS-2" ? " (a character outside GSM-7: 70 characters per segment, not 160)" : "";
    info.textContent = `${encoding}${why}, ${characters} characters, ${parts} SMS segment${parts === 1 ? "" : "s"}`;
    info.dataset.encoding = encoding;
  }
  const errors = $("render-errors");
  clear(errors);
  for (const failure of result.errors) {
    errors.append(el("li", { class: "alert", "data-contact-id": String(failure.contact_id) },
      [`Contact #${failure.contact_id}: ${failure.error}`]));
  }
  const samples = $("samples");
  clear(samples);
  for (const sample of result.samples) {
    samples.append(el("li", { class: "sample-render", "data-contact-id": String(sample.contact_id) },
      [el("p", { class: "event-meta" }, [sample.name || `Contact #${sample.contact_id}`]), ...rendered(sample.rendered)]));
  }
}

function rendered(message) {
  if (message.body !== undefined) return [el("p", { class: "event-body" }, [message.body])];
  const parts = [el("p", {}, [el("strong", {}, ["Subject: "]), message.subject]), el("p", { class: "event-body" }, [message.text])];
  if (message.html) {
    parts.push(el("details", {}, [el("summary", {}, ["HTML source"]), el("pre", { class: "event-body" }, [message.html])]));
  }
  return parts;
}

// The preview belongs to the form as it was; after a change, preview again before starting.
function formChanged() {
  $("start-draft").disabled = !(draft?.clean && draft.key === JSON.stringify(campaignBody()));
}

async function startDraft() {
  const campaign = draft?.campaign;
  if (!campaign) return;
  $("start-draft").disabled = true;
  try {
    const started = await api(`/api/v1/campaigns/${campaign.id}/start`, { method: "POST" });
    draft = null;
    $("form-status").textContent = `“${started.name}” is ${started.status}: its progress is beside the list.`;
    showCampaign(started);
    refreshList();
  } catch (error) {
    $("form-status").textContent = `Not started: ${error.message}`;
    $("start-draft").disabled = false;
  }
}

function newCampaign() {
  form.reset();
  draft = null;
  previousChannel = channel();
  $("f-channel").value = channel();
  chooseChannel();
  chooseAudience();
  $("preview-panel").hidden = true;
  clearProblem();
  $("start-draft").disabled = true;
  $("form-status").textContent = "";
  $("campaign-name").focus();
}

// --- progress -------------------------------------------------------------------------------

async function openCampaign(id) {
  try {
    showCampaign(await api(`/api/v1/campaigns/${id}`));
    $("campaign").focus();
  } catch (error) {
    $("form-status").textContent = `Cannot open campaign #${id}: ${error.message}`;
  }
}

function showCampaign(campaign) {
  shown = campaign;
  history.replaceState(null, "", `#campaign-${campaign.id}`);
  const panel = $("campaign");
  panel.hidden = false;
  panel.dataset.campaignId = String(campaign.id);
  panel.dataset.status = campaign.status;
  $("campaign-title").textContent = campaign.name;
  $("campaign-channel-badge").replaceChildren(channelIcon(campaign.channel));
  $("campaign-status").textContent = campaign.status;
  $("campaign-times").textContent = times(campaign);
  showProgress(campaign.counts);
  showCounts(campaign.counts);
  for (const button of panel.querySelectorAll("[data-action]")) {
    button.hidden = !ACTIONS[campaign.status]?.includes(button.dataset.action);
  }
}

function times(campaign) {
  const parts = [`created ${when(campaign.created_at)}`];
  if (campaign.scheduled_at) parts.push(`scheduled for ${when(campaign.scheduled_at)}`);
  if (campaign.started_at) parts.push(`started ${when(campaign.started_at)}`);
  if (campaign.finished_at) parts.push(`finished ${when(campaign.finished_at)}`);
  return parts.join(" · ");
}

function skippedTotal(counts) {
  return Object.values(counts.skipped || {}).reduce((sum, n) => sum + n, 0);
}

// Done is every recipient the dispatcher is through with: handed to the provider, failed,
// or skipped (no address, opted out, no consent, frequency cap, …). Quiet hours only defer.
function showProgress(counts) {
  const total = counts.targeted;
  const done = Math.min(total, counts.sent + counts.failed + skippedTotal(counts));
  const bar = $("campaign-progress");
  bar.max = Math.max(total, 1);
  bar.value = done;
  const percent = total ? Math.round((100 * done) / total) : 0;
  $("campaign-progress-text").textContent = `${done} of ${total} recipients done (${percent}%)`;
}

function showCounts(counts) {
  const list = $("campaign-counts");
  clear(list);
  for (const [key, label] of COUNTS) {
    list.append(el("dt", {}, [label]), el("dd", { "data-figure": key }, [String(counts[key] ?? 0)]));
  }
  list.append(el("dt", {}, ["Skipped"]), el("dd", { "data-figure": "skipped" }, [String(skippedTotal(counts))]));
  const reasons = $("campaign-skipped");
  clear(reasons);
  for (const [reason, n] of Object.entries(counts.skipped || {})) {
    reasons.append(el("li", { "data-reason": reason }, [`${reason.replaceAll("_", " ")}: ${n}`]));
  }
  if (!reasons.children.length) reasons.append(el("li", { class: "empty" }, ["None skipped."]));
}

async function act(button) {
  const status = $("campaign-action-status");
  const action = button.dataset.action;
  // Cancelling cannot be undone: the first click only asks.
  if (action === "cancel" && !button.dataset.armed) {
    button.dataset.armed = "true";
    button.textContent = "Really cancel? Click again";
    setTimeout(() => { delete button.dataset.armed; button.textContent = "Cancel campaign"; }, 4000);
    return;
  }
  try {
    showCampaign(await api(`/api/v1/campaigns/${shown.id}/${action}`, { method: "POST" }));
    status.textContent = `Campaign ${shown.status}.`;
    refreshList();
  } catch (error) {
    status.textContent = `Not done: ${error.message}`;
  }
}

// About once a second while the campaign may still change; the poll waits for the last one.
async function follow() {
  if (shown && !FINISHED.has(shown.status)) await update(shown);
  setTimeout(follow, POLL_MS);
}

async function update(following) {
  try {
    const campaign = await api(`/api/v1/campaigns/${following.id}`);
    if (campaign.id !== shown?.id) return; // another campaign was opened meanwhile
    if (campaign.status !== shown.status) refreshList();
    showCampaign(campaign);
  } catch (error) {
    $("campaign-action-status").textContent = `Not updated: ${error.message}`;
  }
}

// --- the list -------------------------------------------------------------------------------

async function refreshList() {
  try {
    const { campaigns } = await api("/api/v1/campaigns");
    const rows = $("campaign-rows");
    clear(rows);
    for (const campaign of campaigns) rows.append(row(campaign));
    $("list-empty").hidden = campaigns.length > 0;
  } catch (error) {
    $("list-empty").textContent = `Cannot list campaigns: ${error.message}`;
  }
}

function row(campaign) {
  const open = el("button", { type: "button", class: "link" }, [campaign.name]);
  open.addEventListener("click", () => openCampaign(campaign.id));
  const { sent = 0, targeted = 0 } = campaign.counts || {};
  return el("tr", { "data-campaign-id": String(campaign.id) }, [
    el("th", { scope: "row" }, [open]),
    el("td", {}, [channelIcon(campaign.channel)]),
    el("td", {}, [campaign.status]),
    el("td", {}, [`${sent} / ${targeted}`]),
  ]);
}

// --- wiring ---------------------------------------------------------------------------------

form.addEventListener("submit", preview);
form.addEventListener("input", formChanged);
form.addEventListener("change", formChanged);
for (const radio of form.elements.audience) radio.addEventListener("change", chooseAudience);
for (const input of form.querySelectorAll("[data-filter]")) input.addEventListener("input", scheduleCount);
$("segment").addEventListener("change", showSegment);
$("save-segment").addEventListener("click", saveSegment);
$("campaign-channel").addEventListener("change", chooseChannel);
$("start-draft").addEventListener("click", startDraft);
$("new-campaign").addEventListener("click", newCampaign);
for (const button of document.querySelectorAll("#campaign [data-action]")) {
  button.addEventListener("click", () => act(button));
}

$("f-channel").value = channel();
chooseChannel();
chooseAudience();
loadSegments().catch((error) => { $("segment-filter").textContent = `Cannot load segments: ${error.message}`; });
refreshList();
setInterval(refreshList, LIST_POLL_MS);
const linked = /^#campaign-(\d+)$/.exec(location.hash);
if (linked) openCampaign(Number(linked[1]));
follow();
