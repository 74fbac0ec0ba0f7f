// samizdat ui: plain JavaScript, no build step, nothing loaded from elsewhere.
// Every text from the network is put in the page with textContent, never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const ui = { view: "chats", chat: null, group: null, safety: null, state: null, flows: {} };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

async function api(path) {
  const response = await fetch(path, { credentials: "same-origin" });
  const body = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(body.error || "request failed");
  return body;
}

async function act(action, body) {
  const response = await fetch("/api/do/" + action, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-Samizdat-Request": "1" },
    body: JSON.stringify(body || {}),
  });
  const answer = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(answer.error || "request failed");
  return answer;
}

function announce(text) {
  const line = el("p", { text });
  $("announcer").append(line);
  while ($("announcer").childElementCount > 5) $("announcer").firstElementChild.remove();
}

function time(ms) {
  if (!ms) return "";
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

// A form whose submit runs `run(form)`; errors show beside it (and are announced).
function form(label, fields, submitText, run, extra) {
  const error = el("p", { class: "error", role: "alert" });
  const node = el("form", { class: "stack", "aria-label": label }, fields, el("div", { class: "row" }, el("button", { type: "submit", text: submitText }), extra || null), error);
  node.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.textContent = "";
    const button = node.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      await run(node);
    } catch (err) {
      error.textContent = err.message;
    } finally {
      button.disabled = false;
    }
  });
  return node;
}

let fieldCounter = 0;
function field(label, name, opts) {
  const id = "f" + ++fieldCounter;
  const o = opts || {};
  const input = o.multiline
    ? el("textarea", { id, name, required: o.required !== false, placeholder: o.placeholder || null, autocomplete: "off" })
    : el("input", { id, name, type: o.type || "text", required: o.required !== false, placeholder: o.placeholder || null, autocomplete: o.autocomplete || "off" });
  const hint = o.hint ? el("span", { id: id + "-hint", class: "muted", text: o.hint }) : null;
  if (hint) input.setAttribute("aria-describedby", id + "-hint");
  return el("div", { class: "stack" }, el("label", { for: id, text: label }), input, hint, o.qr ? qrControls(input, o.qr) : null);
}

// -- reading QR codes ---------------------------------------------------------------------
// With jsQR (static/jsQR.js, vendored): a picture the user picks, or the camera, is decoded
// here in the page; neither the picture nor the video leaves the browser.
const QR_MAX_SIDE = 1280;

function decodeQr(source, width, height, invert) {
  // A phone photo has millions of pixels; a QR code is readable far smaller, and faster.
  const scale = Math.min(1, QR_MAX_SIDE / Math.max(width, height, 1));
  const w = Math.max(1, Math.round(width * scale));
  const h = Math.max(1, Math.round(height * scale));
  const canvas = el("canvas", { width: String(w), height: String(h) });
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(source, 0, 0, w, h);
  const found = jsQR(context.getImageData(0, 0, w, h).data, w, h, { inversionAttempts: invert ? "attemptBoth" : "dontInvert" });
  return found && found.data ? found.data : null;
}

// A "pick a QR picture" control and, where the browser has a camera API, "scan with camera",
// both filling `input` with the text of the code. `what` names the code for screen readers.
function qrControls(input, what) {
  const status = el("span", { class: "muted", id: input.id + "-qr-status", role: "status" });
  const filled = (text) => {
    input.value = text;
    input.dispatchEvent(new Event("input", { bubbles: true }));
    status.textContent = "Read from the QR code.";
    input.focus();
  };
  const picker = el("input", { type: "file", accept: "image/*", id: input.id + "-qr-file", class: "visually-hidden", "aria-label": "Pick a QR picture of " + what });
  picker.addEventListener("change", async () => {
    const file = picker.files && picker.files[0];
    picker.value = "";
    if (!file) return;
    status.textContent = "Reading the picture…";
    try {
      const image = await createImageBitmap(file);
      const text = decodeQr(image, image.width, image.height, true);
      image.close();
      if (text) filled(text);
      else status.textContent = "No QR code found in this picture. Try a sharper or closer one.";
    } catch (err) {
      status.textContent = "This file is not a picture this browser can read.";
    }
  });
  const controls = el("div", { class: "row qr-in" }, picker, el("label", { for: picker.id, class: "button secondary", text: "Pick a QR picture" }));
  if (navigator.mediaDevices && navigator.mediaDevices.getUserMedia) {
    const video = el("video", { class: "qr-video", muted: true, playsinline: true, "aria-label": "Camera view", hidden: true });
    let stream = null;
    let timer = null;
    const stop = () => {
      if (timer) clearInterval(timer);
      timer = null;
      if (stream) for (const track of stream.getTracks()) track.stop();
      stream = null;
      video.srcObject = null;
      video.hidden = true;
      scan.textContent = "Scan with camera";
    };
    const scan = el("button", { type: "button", class: "secondary", text: "Scan with camera", "aria-label": "Scan with camera: " + what, onclick: async () => {
      if (stream) { stop(); status.textContent = ""; return; }
      try {
        stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
      } catch (err) {
        status.textContent = err.name === "NotAllowedError" ? "The camera was not allowed. Pick a picture of the code instead." : "No camera to use. Pick a picture of the code instead.";
        return;
      }
      video.muted = true;
      video.srcObject = stream;
      video.hidden = false;
      scan.textContent = "Stop camera";
      status.textContent = "Hold the QR code in front of the camera…";
      await video.play().catch(() => null);
      timer = setInterval(() => {
        // The user went to another screen: let the camera go.
        if (!video.isConnected) { stop(); return; }
        if (video.readyState < 2 || !video.videoWidth) return;
        const text = decodeQr(video, video.videoWidth, video.videoHeight, false);
        if (text) { stop(); filled(text); }
      }, 250);
    } });
    controls.append(scan, video);
  }
  controls.append(status);
  return controls;
}

function value(formNode, name) {
  return formNode.elements[name].value;
}

// -- views -------------------------------------------------------------------------------

function show(view, title, ...content) {
  const main = $("main");
  const heading = el("h2", { tabindex: "-1", id: "view-title", text: title });
  const back = el("button", { type: "button", class: "back secondary", text: "Back to chats", onclick: () => go("chats") });
  main.replaceChildren(back, heading, ...content);
  document.body.classList.toggle("in-view", view !== "chats");
  document.title = title + " · samizdat";
  return heading;
}

async function go(view, arg) {
  ui.view = view;
  if (view !== "chat") ui.chat = null;
  if (view === "chat") ui.chat = arg;
  if (view === "members") ui.group = arg;
  if (view === "safety") ui.safety = arg;
  // The section the view belongs to is marked current in the navigation.
  const section = { chat: "chats", members: "chats", safety: "chats", setup: "", unlock: "" }[view] ?? view;
  for (const button of document.querySelectorAll("#nav button")) {
    if (button.dataset.view === section) button.setAttribute("aria-current", "page");
    else button.removeAttribute("aria-current");
  }
  if (view !== "setup" && view !== "unlock") {
    try { await refresh(); } catch (err) { announce(err.message); }
  }
  renderChatList();
  const heading = await renderView();
  if (heading) heading.focus();
}

async function renderView() {
  try {
    switch (ui.view) {
      case "unlock": return viewUnlock();
      case "setup": return viewSetup();
      case "chat": return await viewChat(true);
      case "add": return viewAdd();
      case "groups": return viewGroups();
      case "members": return await viewMembers();
      case "safety": return await viewSafety();
      case "devices": return await viewDevices();
      case "relays": return await viewRelays();
      case "connection": return viewConnection();
      default: return viewChats();
    }
  } catch (err) {
    return show(ui.view, "Something went wrong", el("p", { class: "error", role: "alert", text: err.message }));
  }
}

function viewChats() {
  const chats = (ui.state && ui.state.chats) || [];
  return show("chats", "Chats", el("p", { class: "muted", text: chats.length ? "Choose a chat from the list." : "No chats yet: add a contact from their invite link, or give them yours." }));
}

// `samizdat ui --unlock-in-browser`: the passphrase is asked here, not on a terminal.
function viewUnlock() {
  const fresh = !ui.state.exists;
  const fields = [field(fresh ? "Choose a passphrase" : "Passphrase", "passphrase", { type: "password", autocomplete: fresh ? "new-password" : "current-password",
    hint: fresh ? "It encrypts your keys and messages on this computer. Nobody can recover it for you." : null })];
  if (fresh) fields.push(field("The same passphrase again", "again", { type: "password", autocomplete: "new-password" }));
  const unlock = form(fresh ? "Choose your passphrase" : "Unlock", fields, fresh ? "Continue" : "Unlock", async (f) => {
    const secret = value(f, "passphrase");
    if (fresh && secret !== value(f, "again")) throw new Error("The two passphrases differ.");
    try {
      const answer = await act("unlock", { passphrase: secret });
      announce(answer.ready ? "Unlocked." : "Passphrase chosen.");
    } finally {
      f.reset();
    }
    await refresh();
    await go(ui.state.ready ? "chats" : "setup");
  });
  document.body.classList.add("in-view");
  return show("unlock", fresh ? "Choose a passphrase" : "Unlock samizdat",
    el("p", { text: fresh ? "First choose the passphrase that protects samizdat on this computer." : "Enter your passphrase to open your messages." }), unlock);
}

function viewSetup() {
  const create = form("Create your identity", [
    field("Server link", "server", { multiline: true, qr: "the server", hint: "The samizdat:server/… link your server's operator gave you (the text of its QR code)." }),
    field("Your name", "name", { hint: "What your contacts see. No phone number, no e-mail." }),
  ], "Create identity", async (f) => {
    await act("setup", { server: value(f, "server"), name: value(f, "name") });
    announce("Identity created.");
    await refresh();
    await go("chats");
  });
  const join = form("Link to an existing user", [
    field("Link code from your other device", "code", { multiline: true, qr: "the link code", hint: "On the other device open Devices, then Link a new device." }),
  ], "Link this device", async (f) => {
    await act("join", { code: value(f, "code") });
    announce("Waiting for the other device…");
  });
  document.body.classList.add("in-view");
  return show("setup", "Set up samizdat",
    el("p", { text: "Your keys and messages stay on this computer, encrypted with your passphrase." }),
    el("section", { class: "card", "aria-labelledby": "setup-new" }, el("h3", { id: "setup-new", text: "New identity" }), create),
    el("section", { class: "card", "aria-labelledby": "setup-join" }, el("h3", { id: "setup-join", text: "This is a new device of mine" }), join),
  );
}

const REACTIONS = [["👍", "thumbs up"], ["❤️", "heart"], ["😂", "laughing"], ["😮", "surprised"]];
const TIMERS = [[0, "Off"], [30, "30 seconds"], [300, "5 minutes"], [3600, "1 hour"], [86400, "1 day"], [604800, "1 week"]];

function size(bytes) {
  if (bytes < 1024) return bytes + " bytes";
  if (bytes < 1024 * 1024) return (bytes / 1024).toFixed(1) + " KiB";
  return (bytes / 1024 / 1024).toFixed(1) + " MiB";
}

function messageItem(m, byId, chat) {
  const parts = [el("span", { class: "who", text: m.author + (m.sent_at ? " · " + time(m.sent_at) : "") })];
  if (m.reply_to) {
    const quoted = byId[m.reply_to];
    parts.push(el("span", { class: "quote", text: quoted ? `${quoted.author}: ${quoted.deleted ? "(deleted)" : quoted.text}` : "(an earlier message)" }));
  }
  if (m.deleted) {
    parts.push(el("span", { class: "text deleted", text: "This message was deleted." }));
    return el("li", { class: "msg " + m.direction, "data-id": m.id }, parts);
  }
  if (m.text) parts.push(el("span", { class: "text", text: m.text }));
  if (m.attachment) {
    const a = m.attachment;
    parts.push(el("a", { class: "file", href: "/api/file?id=" + encodeURIComponent(m.id), download: a.name, text: `File: ${a.name} (${size(a.size)})` }));
  }
  const meta = [];
  if (m.edited) meta.push("edited");
  if (m.direction === "out" && m.read_by && m.read_by.length) meta.push("read by " + m.read_by.join(", "));
  else if (m.direction === "out" && m.delivered_to && m.delivered_to.length) meta.push("delivered");
  if (m.expires_at) meta.push("disappears at " + time(m.expires_at));
  if (meta.length) parts.push(el("span", { class: "meta", text: meta.join(" · ") }));
  const reactions = Object.entries(m.reactions || {});
  if (reactions.length) {
    parts.push(el("span", { class: "reactions", text: reactions.map(([who, e]) => e + " " + who).join("  ") }));
  }
  const short = (m.text || (m.attachment ? m.attachment.name : "")).slice(0, 40);
  const tools = el("span", { class: "tools" },
    el("button", { type: "button", class: "tiny", text: "Reply", "aria-label": "Reply to " + m.author + ": " + short, onclick: () => compose("reply", m) }),
    REACTIONS.map(([emoji, word]) => el("button", { type: "button", class: "tiny", text: emoji, "aria-label": "React with " + word + " to: " + short, onclick: () => act("react", { kind: chat.kind, name: chat.name, id: m.id, emoji: m.reactions && m.reactions[ui.state.name] === emoji ? "" : emoji }).catch((e) => announce(e.message)) })),
    m.direction === "out" ? [
      el("button", { type: "button", class: "tiny", text: "Edit", "aria-label": "Edit: " + short, onclick: () => compose("edit", m) }),
      el("button", { type: "button", class: "tiny danger", text: "Delete", "aria-label": "Delete for everyone: " + short, onclick: async () => {
        if (!window.confirm("Delete this message for everyone?")) return;
        try { await act("delete", { kind: chat.kind, name: chat.name, id: m.id }); announce("Deleted."); } catch (e) { announce(e.message); }
      } }),
    ] : null);
  parts.push(tools);
  return el("li", { class: "msg " + m.direction, "data-id": m.id }, parts);
}

// The composer writes a new message, a reply, or an edit of one of ours.
let composing = { mode: "new", message: null };
function compose(mode, message) {
  composing = { mode, message };
  const banner = $("compose-mode");
  const input = $("composer");
  if (!banner || !input) return;
  if (mode === "new") {
    banner.replaceChildren();
    banner.hidden = true;
  } else {
    banner.hidden = false;
    banner.replaceChildren(
      el("span", { text: (mode === "reply" ? "Replying to " + message.author + ": " : "Editing: ") + (message.text || "").slice(0, 80) }),
      el("button", { type: "button", class: "tiny", text: "Cancel", onclick: () => { compose("new", null); input.value = ""; input.focus(); } }));
    if (mode === "edit") input.value = message.text;
  }
  input.focus();
}

function fileControls(chat) {
  const input = el("input", { type: "file", id: "file-input", class: "visually-hidden" });
  const label = el("label", { for: "file-input", class: "button secondary", text: "Attach a file" });
  const progress = el("div", { id: "transfers", "aria-live": "polite" });
  input.addEventListener("change", async () => {
    const file = input.files && input.files[0];
    if (!file) return;
    const bar = el("progress", { max: String(file.size || 1), value: "0", "aria-label": "Sending " + file.name, "data-file": file.name });
    const row = el("p", { class: "transfer" }, "Sending " + file.name + " ", bar);
    progress.append(row);
    try {
      const url = `/api/upload?kind=${encodeURIComponent(chat.kind)}&name=${encodeURIComponent(chat.name)}&filename=${encodeURIComponent(file.name)}`;
      const response = await fetch(url, { method: "POST", credentials: "same-origin", headers: { "X-Samizdat-Request": "1", "Content-Type": "application/octet-stream" }, body: file });
      const answer = await response.json().catch(() => ({ error: response.statusText }));
      if (!response.ok) throw new Error(answer.error || "upload failed");
      row.firstChild.textContent = "Sent " + file.name + " ";
      announce("Sent " + file.name);
      await viewChat(false);
    } catch (err) {
      row.replaceChildren(el("span", { class: "error", text: `${file.name}: ${err.message}` }));
    }
    input.value = "";
  });
  return [input, label, progress];
}

function timerControl(chat, seconds) {
  const select = el("select", { id: "timer" }, TIMERS.map(([value, text]) => el("option", { value: String(value), text, selected: value === seconds })));
  if (!TIMERS.some(([value]) => value === seconds)) select.append(el("option", { value: String(seconds), text: seconds + " seconds", selected: true }));
  select.addEventListener("change", async () => {
    try {
      await act("timer", { kind: chat.kind, name: chat.name, seconds: Number(select.value) });
      announce("Disappearing messages: " + select.selectedOptions[0].textContent);
    } catch (err) {
      announce(err.message);
    }
  });
  return el("span", { class: "row" }, el("label", { for: "timer", text: "Disappearing messages" }), select);
}

async function viewChat(fresh) {
  const chat = ui.chat;
  const data = await api(`/api/chat?kind=${encodeURIComponent(chat.kind)}&name=${encodeURIComponent(chat.name)}`);
  const byId = Object.fromEntries(data.messages.map((m) => [m.id, m]));
  const list = el("ol", { class: "messages", id: "messages", "aria-label": "Messages with " + chat.name, tabindex: "0" },
    data.messages.map((m) => messageItem(m, byId, chat)));
  if (!fresh && $("messages") && ui.view === "chat") {
    const timer = $("timer");
    if (timer && document.activeElement !== timer) timer.value = String(data.timer);
    $("messages").replaceWith(list);
    list.scrollTop = list.scrollHeight;
    return null;
  }
  compose("new", null);
  const tools = el("div", { class: "row" }, timerControl(chat, data.timer));
  if (chat.kind === "contact") {
    tools.append(el("button", { type: "button", class: "secondary", text: "Safety number", onclick: () => go("safety", chat.name) }));
  } else {
    tools.append(el("button", { type: "button", class: "secondary", text: "Members", onclick: () => go("members", chat.name) }));
  }
  let request = null;
  if (data.state === "request") {
    request = el("div", { class: "card", role: "region", "aria-label": "Contact request" },
      el("p", { text: `${chat.name} wrote to you from your invite. Accept to keep talking, or block them.` }),
      el("div", { class: "row" },
        el("button", { type: "button", class: "primary", text: "Accept", onclick: async () => { await act("accept", { name: chat.name }); announce("Accepted " + chat.name); await go("chat", chat); } }),
        el("button", { type: "button", class: "danger", text: "Block", onclick: async () => { await act("block", { name: chat.name }); announce("Blocked " + chat.name); await go("chats"); } })));
  }
  const input = el("textarea", { id: "composer", name: "text", rows: "2", required: true, autocomplete: "off" });
  const error = el("p", { class: "error", role: "alert" });
  const composer = el("form", { class: "composer", "aria-label": "Write a message" },
    el("label", { for: "composer", class: "visually-hidden", text: "Message" }), input,
    el("button", { type: "submit", text: "Send" }));
  const banner = el("div", { id: "compose-mode", class: "compose-mode", role: "status", hidden: true });
  const files = data.files ? el("div", { class: "row" }, fileControls(chat)) : null;
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      composer.requestSubmit();
    }
  });
  composer.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = input.value;
    if (!text.trim()) return;
    error.textContent = "";
    input.value = "";
    const { mode, message } = composing;
    try {
      if (mode === "edit") await act("edit", { kind: chat.kind, name: chat.name, id: message.id, text });
      else await act("send", { kind: chat.kind, name: chat.name, text, reply_to: mode === "reply" ? message.id : null });
      compose("new", null);
      await viewChat(false);
    } catch (err) {
      input.value = text;
      error.textContent = err.message;
    }
    input.focus();
  });
  const heading = el("h2", { tabindex: "-1", id: "view-title", text: chat.name });
  const back = el("button", { type: "button", class: "back secondary", text: "Back to chats", onclick: () => go("chats") });
  const section = el("section", { class: "conv", "aria-labelledby": "view-title" },
    el("div", { class: "conv-head" }, el("div", { class: "row" }, back, heading), tools), request, list, error, files, banner, composer);
  $("main").replaceChildren(section);
  document.body.classList.add("in-view");
  document.title = chat.name + " · samizdat";
  list.scrollTop = list.scrollHeight;
  return heading;
}

function viewAdd() {
  const invite = el("div", { id: "invite-out", "aria-live": "polite" });
  const makeInvite = el("button", { type: "button", class: "primary", text: "Show my invite", onclick: async () => {
    makeInvite.disabled = true;
    try {
      const answer = await act("invite");
      const box = el("textarea", { id: "invite-link", readonly: true, rows: "4" });
      box.value = answer.link;
      invite.replaceChildren(
        el("label", { for: "invite-link", text: "Your invite link (for one new contact)" }), box,
        el("img", { class: "qr", src: answer.qr, alt: "QR code of your invite link", id: "invite-qr" }),
        el("div", { class: "row" }, el("button", { type: "button", class: "secondary", text: "Copy link", onclick: async () => { box.select(); try { await navigator.clipboard.writeText(answer.link); announce("Copied."); } catch (e) { announce("Select the text and copy it."); } } })));
    } catch (err) {
      invite.replaceChildren(el("p", { class: "error", text: err.message }));
    } finally {
      makeInvite.disabled = false;
    }
  } });
  const add = form("Add a contact from their link", [
    field("Their invite link", "link", { multiline: true, qr: "their invite", hint: "The samizdat:invite/… text they sent you, or the text of their QR code." }),
    field("Name for them", "name"),
  ], "Add contact", async (f) => {
    const answer = await act("add_contact", { link: value(f, "link"), name: value(f, "name") });
    announce("Added " + answer.name);
    await refresh();
    await go("chat", { kind: "contact", name: answer.name });
  });
  return show("add", "Add contact",
    el("section", { class: "card", "aria-labelledby": "add-theirs" }, el("h3", { id: "add-theirs", text: "From their invite" }), add),
    el("section", { class: "card", "aria-labelledby": "add-mine" }, el("h3", { id: "add-mine", text: "Your invite" }),
      el("p", { class: "muted", text: "Each invite is for one person: send it privately, or let them scan the QR code." }), makeInvite, invite));
}

function contactChoices(prefix, exclude) {
  const contacts = ((ui.state && ui.state.chats) || []).filter((c) => c.kind === "contact" && c.state === "contact" && !(exclude || []).includes(c.name));
  if (!contacts.length) return el("p", { class: "muted", text: "No contacts to choose from yet." });
  return el("fieldset", {}, el("legend", { text: "Members" }),
    contacts.map((c) => {
      const id = prefix + "-" + c.name;
      return el("div", { class: "row" }, el("input", { type: "checkbox", id, name: "members", value: c.name }), el("label", { for: id, text: c.name }));
    }));
}

function checked(f) {
  return Array.from(f.querySelectorAll("input[name=members]:checked")).map((i) => i.value);
}

function viewGroups() {
  const create = form("Create a group", [field("Group name", "name"), contactChoices("new-member")], "Create group", async (f) => {
    const answer = await act("group_create", { name: value(f, "name"), members: checked(f) });
    announce("Created group " + answer.name);
    await refresh();
    await go("chat", { kind: "group", name: answer.name });
  });
  return show("groups", "New group", el("p", { class: "muted", text: "You will be the group's admin: you can add and remove members and make others admins." }), create);
}

async function viewMembers() {
  const name = ui.group;
  const data = await api(`/api/chat?kind=group&name=${encodeURIComponent(name)}`);
  const rows = data.members.map((m) => el("li", {}, m.name + (m.you ? " (you)" : "") + (m.admin ? " — admin" : ""),
    data.admin && !m.you ? el("span", { class: "row" },
      m.admin ? null : el("button", { type: "button", class: "secondary", text: "Make admin", "aria-label": "Make " + m.name + " admin", onclick: () => change("admin", [m.name]) }),
      el("button", { type: "button", class: "danger", text: "Remove", "aria-label": "Remove " + m.name, onclick: () => change("remove", [m.name]) })) : null));
  async function change(what, members) {
    try {
      await act("group_change", { group: name, change: what, members });
      announce("Done.");
      await go("members", name);
    } catch (err) {
      announce(err.message);
    }
  }
  const present = data.members.map((m) => m.name);
  const add = data.admin ? form("Add members", [contactChoices("add-member", present)], "Add to group", async (f) => {
    await act("group_change", { group: name, change: "add", members: checked(f) });
    announce("Added.");
    await go("members", name);
  }) : el("p", { class: "muted", text: "Only admins change who is in the group." });
  return show("members", "Members of " + name,
    el("ul", { class: "plain-list", "aria-label": "Members" }, rows), add,
    el("div", { class: "row" },
      el("button", { type: "button", class: "secondary", text: "Back to the group", onclick: () => go("chat", { kind: "group", name }) }),
      el("button", { type: "button", class: "danger", text: "Leave group", onclick: async () => { await act("group_change", { group: name, change: "leave" }); announce("You left " + name); await go("chats"); } })));
}

async function viewSafety() {
  const name = ui.safety;
  const data = await api("/api/safety?name=" + encodeURIComponent(name));
  const status = el("p", { id: "verify-status", "aria-live": "polite" });
  return show("safety", "Safety number with " + name,
    el("p", { text: `Compare these digits with ${name} in person or over a call you trust, or scan each other's code. If they match, nobody is in the middle.` }),
    el("p", { class: "safety", id: "safety-digits", text: data.number }),
    el("img", { class: "qr", src: data.qr, alt: "QR code of the safety number with " + name }),
    el("div", { class: "row" },
      el("button", { type: "button", class: "primary", text: "Mark as verified", onclick: async () => { await act("verify_manual", { name }); status.textContent = name + " is verified."; } }),
      el("button", { type: "button", class: "secondary", text: "Compare emoji together", onclick: async () => {
        try { await act("verify_sas", { name }); status.textContent = `Waiting for ${name} to start the same on their side…`; } catch (err) { status.textContent = err.message; }
      } }),
      el("button", { type: "button", class: "secondary", text: "Back to the chat", onclick: () => go("chat", { kind: "contact", name }) })),
    status);
}

async function viewDevices() {
  const list = await api("/api/devices");
  const out = el("div", { id: "link-out", "aria-live": "polite" });
  const link = el("button", { type: "button", class: "primary", text: "Link a new device", onclick: async () => {
    try {
      const answer = await act("link_device");
      const box = el("textarea", { id: "link-code", readonly: true, rows: "4" });
      box.value = answer.code;
      out.replaceChildren(el("label", { for: "link-code", text: "On the new device choose “This is a new device of mine” and enter this code" }), box,
        el("img", { class: "qr", src: answer.qr, alt: "QR code of the link code" }), el("p", { class: "muted", text: "Waiting for the new device…" }));
    } catch (err) {
      out.replaceChildren(el("p", { class: "error", text: err.message }));
    }
  } });
  const receipts = el("input", { type: "checkbox", id: "read-receipts", checked: !!(ui.state && ui.state.read_receipts) });
  receipts.addEventListener("change", async () => {
    try {
      const answer = await act("read_receipts", { on: receipts.checked });
      announce(answer.on ? "Read receipts on." : "Read receipts off.");
    } catch (err) {
      announce(err.message);
    }
  });
  const delivery = el("input", { type: "checkbox", id: "delivery-receipts", checked: !!(ui.state && ui.state.delivery_receipts) });
  delivery.addEventListener("change", async () => {
    try {
      const answer = await act("delivery_receipts", { on: delivery.checked });
      announce(answer.on ? "Delivery receipts on." : "Delivery receipts off.");
    } catch (err) {
      announce(err.message);
    }
  });
  const privacy = el("section", { class: "card", "aria-labelledby": "privacy" }, el("h3", { id: "privacy", text: "Privacy" }),
    el("div", { class: "row" }, receipts, el("label", { for: "read-receipts", text: "Send read receipts (and see other people's)" })),
    el("div", { class: "row" }, delivery, el("label", { for: "delivery-receipts", text: "Send delivery receipts (never in groups of more than 50)" })));
  return show("devices", "Devices",
    el("ul", { class: "plain-list", "aria-label": "Your devices" }, list.map((d) => el("li", {}, d.id.slice(0, 12) + (d.current ? " (this device)" : ""),
      d.current ? null : el("button", { type: "button", class: "danger", text: "Remove", "aria-label": "Remove device " + d.id.slice(0, 12), onclick: async () => { await act("revoke_device", { id: d.id }); announce("Removed."); await go("devices"); } })))),
    link, out, privacy);
}

function relayForm(after) {
  return form("Add a relay", [field("Relay link", "link", { multiline: true, qr: "the relay", hint: "A samizdat:relay/… link from someone who runs a relay outside the block." })], "Add relay", async (f) => {
    await act("relay_add", { link: value(f, "link") });
    f.reset();
    announce("Relay added. Connecting…");
    if (after) await after();
  });
}

async function viewRelays() {
  const list = await api("/api/relays");
  return show("relays", "Relays",
    el("p", { class: "muted", text: "A relay forwards your encrypted connection when your server is blocked. It cannot read your messages." }),
    list.length ? el("ul", { class: "plain-list", "aria-label": "Your relays" }, list.map((r) => el("li", {}, r.label + " ",
      el("button", { type: "button", class: "danger", text: "Remove", "aria-label": "Remove relay " + r.label, onclick: async () => { await act("relay_remove", { id: r.id }); await go("relays"); } }))))
      : el("p", { text: "No relays yet." }),
    relayForm(() => go("relays")));
}

function connectionDetails() {
  const c = (ui.state && ui.state.connection) || {};
  const f = c.findings;
  const parts = [el("p", { id: "conn-sentence", class: c.state === "offline" ? "error" : "", text: c.sentence || "" })];
  if (c.state === "connected") {
    parts.push(el("dl", {},
      el("dt", { text: "Transport" }), el("dd", { text: c.transport || "?" }),
      el("dt", { text: "Server address" }), el("dd", { text: c.endpoint || "?" }),
      el("dt", { text: "Route" }), el("dd", { text: c.route || "?" }),
      el("dt", { text: "Address from" }), el("dd", { text: c.resolver || "?" })));
  }
  if (c.proxy) parts.push(el("p", { text: "Proxy in use: " + c.proxy }));
  if (c.state === "offline" && !f) parts.push(el("p", { class: "muted", text: "Testing every way to your server…" }));
  if (f) {
    parts.push(el("h3", { text: "What we found" }), el("p", { id: "findings", text: f.sentence }));
    if (f.advice && f.advice.length) parts.push(el("h3", { text: "What you can do" }), el("ul", { id: "advice", class: "plain-list" }, f.advice.map((a) => el("li", { text: a }))));
    if (f.details && f.details.length) parts.push(el("details", {}, el("summary", { text: "Every path we tried" }), el("ul", { class: "plain-list" }, f.details.map((d) => el("li", { text: d })))));
  }
  return el("div", { id: "conn-details", role: "region", "aria-label": "Connection state", "aria-live": "polite" }, parts);
}

function viewConnection() {
  const proxy = form("Set a proxy", [field("Proxy address", "url", { required: false, placeholder: "socks5://127.0.0.1:9050", hint: "Tor: socks5://127.0.0.1:9050. A VPN app's or your workplace's proxy: http://HOST:PORT. Empty: no proxy." })], "Use this proxy", async (f) => {
    const answer = await act("proxy", { url: value(f, "url") });
    announce(answer.proxy ? "Using " + answer.proxy : "No proxy.");
  });
  return show("connection", "Connection", connectionDetails(),
    el("div", { class: "row" }, el("button", { type: "button", class: "secondary", text: "Test again", onclick: async () => { await act("probe"); announce("Testing…"); } })),
    el("section", { class: "card", "aria-labelledby": "conn-relay" }, el("h3", { id: "conn-relay", text: "Add a relay link" }), relayForm(null)),
    el("section", { class: "card", "aria-labelledby": "conn-proxy" }, el("h3", { id: "conn-proxy", text: "Use a proxy" }), proxy));
}

// -- chrome: chat list, connection badge, dialogs ------------------------------------------

function renderChatList() {
  const s = ui.state;
  if (!s || !s.ready) return;
  const list = $("chat-list");
  list.replaceChildren(...s.chats.map((c) => {
    const label = c.name + (c.kind === "group" ? " (group)" : "") + (c.state === "request" ? " (request)" : "") + (c.unread ? `, ${c.unread} unread` : "");
    const current = ui.view === "chat" && ui.chat && ui.chat.kind === c.kind && ui.chat.name === c.name;
    return el("li", {}, el("button", { type: "button", "aria-label": label, "aria-current": current ? "true" : null, "data-chat": c.kind + ":" + c.name, onclick: () => go("chat", { kind: c.kind, name: c.name }) },
      el("span", { class: "name", text: c.name + (c.kind === "group" ? " · group" : "") + (c.state === "request" ? " · request" : "") }),
      c.unread ? el("span", { class: "unread", "aria-hidden": "true", text: String(c.unread) }) : null,
      el("span", { class: "last", text: c.last || "" })));
  }));
  $("chat-empty").hidden = s.chats.length > 0;
}

function renderBadge() {
  const c = ui.state && ui.state.connection;
  const badge = $("conn-badge");
  if (!c) return;
  badge.hidden = false;
  const words = { connected: "Connected", offline: "Not connected", starting: "Connecting…" };
  $("conn-badge-text").textContent = words[c.state] || c.state;
  badge.className = "badge " + c.state;
}

async function refresh() {
  ui.state = await api("/api/state");
  const ready = ui.state.ready;
  $("nav").hidden = !ready;
  $("sidebar").hidden = !ready;
  if (!ready) {
    const want = ui.state.locked ? "unlock" : "setup";
    if (ui.view !== want) { ui.view = want; await renderView(); }
    return;
  }
  if (ui.view === "setup" || ui.view === "unlock") ui.view = "chats";
  renderChatList();
  renderBadge();
}

let dialogFlow = null;
function showCompare(flow, event) {
  dialogFlow = flow;
  $("dialog-title").textContent = flow === "link" || flow === "join" ? "Do both devices show this code?" : "Does your contact see the same?";
  $("dialog-body").replaceChildren(
    el("p", { class: "sas", id: "sas-code", text: event.code }),
    el("p", { class: "emoji", "aria-label": "Emoji: " + event.emoji.join(", "), text: event.emoji.join(" ") }));
  $("dialog-backdrop").hidden = false;
  $("dialog").focus();
}

async function answer(match) {
  const flow = dialogFlow;
  $("dialog-backdrop").hidden = true;
  dialogFlow = null;
  if (flow) {
    try { await act("confirm", { flow, match }); } catch (err) { announce(err.message); }
  }
}

function onEvent(event) {
  if (event.type === "message") {
    announce(`New message from ${event.from}${event.chat.kind === "group" ? " in " + event.chat.name : ""}: ${event.text}`);
  }
  if (event.type === "flow") {
    ui.flows[event.flow] = event;
    if (event.state === "compare") showCompare(event.flow, event);
    else if (event.state === "done" || event.state === "failed") {
      if (dialogFlow === event.flow) $("dialog-backdrop").hidden = true;
      announce(event.message);
      const status = $("verify-status");
      if (status && event.flow.startsWith("verify:")) status.textContent = event.message;
      const out = $("link-out");
      if (out && event.flow === "link") out.replaceChildren(el("p", { text: event.message }));
    }
  }
  if (event.type === "progress") {
    if (event.what === "send") {
      const bar = document.querySelector(`#transfers progress[data-file="${CSS.escape(event.file)}"]`);
      if (bar) { bar.max = event.total || 1; bar.value = event.done; }
    } else {
      const status = $("transfers");
      if (status) status.textContent = event.done < event.total ? `Downloading… ${Math.round(100 * event.done / (event.total || 1))}%` : "";
    }
    return;
  }
  scheduleRefresh(event);
}

let pending = null;
let pendingChat = false;
let pendingConn = false;
function scheduleRefresh(event) {
  pendingChat = pendingChat || event.type === "message" || event.type === "changed";
  pendingConn = pendingConn || event.type === "connection";
  if (pending) return;
  pending = setTimeout(async () => {
    pending = null;
    const chat = pendingChat;
    const conn = pendingConn;
    pendingChat = pendingConn = false;
    try {
      const wasReady = ui.state && ui.state.ready;
      // The open chat first: showing it marks its messages read before the list is counted.
      if (chat && wasReady && ui.view === "chat") await viewChat(false);
      await refresh();
      if (!wasReady && ui.state.ready) { await go("chats"); return; }
      if (conn && ui.view === "connection") $("conn-details").replaceWith(connectionDetails());
    } catch (err) {
      announce(err.message);
    }
  }, 50);
}

function connectEvents() {
  const source = new EventSource("/api/events");
  source.onmessage = (message) => onEvent(JSON.parse(message.data));
  source.onopen = () => scheduleRefresh({ type: "changed" });
}

document.addEventListener("DOMContentLoaded", async () => {
  for (const button of document.querySelectorAll("#nav button")) {
    button.addEventListener("click", () => go(button.dataset.view));
  }
  $("conn-badge").addEventListener("click", () => go("connection"));
  $("dialog-yes").addEventListener("click", () => answer(true));
  $("dialog-no").addEventListener("click", () => answer(false));
  $("dialog").addEventListener("keydown", (event) => {
    if (event.key === "Escape") answer(false);
    // Keep the keyboard inside the open dialog (it is modal).
    if (event.key === "Tab") {
      const buttons = [$("dialog-yes"), $("dialog-no")];
      const at = buttons.indexOf(document.activeElement);
      event.preventDefault();
      buttons[(at + (event.shiftKey ? buttons.length - 1 : 1)) % buttons.length].focus();
    }
  });
  try {
    await refresh();
    await go(ui.state.ready ? "chats" : ui.state.locked ? "unlock" : "setup");
  } catch (err) {
    $("main").replaceChildren(el("p", { class: "error", role: "alert", text: err.message }));
  }
  connectEvents();
});
