// mlyard's chat page (serving/chat_page.py): a conversation with any OpenAI-compatible chat route, streamed,
// with each answer's tokens and latency. The settings come from the address's fragment (which no server
// sees) or the form, and stay in this tab's sessionStorage with the conversation; answers are shown as text.
"use strict";
const $ = (id) => document.getElementById(id);
const store = window.sessionStorage;
const given = new URLSearchParams(location.hash.slice(1));
if (location.hash) history.replaceState(null, "", location.pathname);  // the token leaves the address bar
const KEPT = ["base", "model", "token", "max", "temperature"];
for (const key of KEPT) {
  const value = given.get(key) ?? store.getItem("mlyard-chat-" + key);
  if (value !== null) $(key).value = value;
}
if (given.has("base")) store.removeItem("mlyard-chat-messages");  // another endpoint: a new conversation
let messages = JSON.parse(store.getItem("mlyard-chat-messages") || "[]");

function say(text, bad) {
  $("status").textContent = text;
  $("status").className = bad ? "muted error" : "muted";
}

function turn(role, text) {
  const div = document.createElement("div");
  div.className = "turn " + role;
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  div.append(body);
  $("log").append(div);
  $("log").scrollTop = $("log").scrollHeight;
  return div;
}

function keep() {
  for (const key of KEPT) store.setItem("mlyard-chat-" + key, $(key).value.trim());
  store.setItem("mlyard-chat-messages", JSON.stringify(messages));
}

function url(path) {
  return $("base").value.trim().replace(/\/+$/, "") + path;
}

function headers() {
  const token = $("token").value.trim();
  return token ? { "content-type": "application/json", authorization: "Bearer " + token }
               : { "content-type": "application/json" };
}

function queueText(queue) {
  return queue ? "batch: " + queue.running + " of " + queue.max_sequences + " generating, " + queue.waiting
    + " waiting for a place" : "";
}

async function findModel() {  // the served model: its name, what it is, its own temperature, the batch's queue
  if (!$("base").value.trim()) return;
  try {
    const resp = await fetch(url("/models"), { headers: headers() });
    const doc = await resp.json();
    if (!resp.ok || !doc.data || !doc.data.length) return;
    const found = doc.data.find((m) => m.id === $("model").value.trim()) || doc.data[0];
    if (!$("model").value.trim()) $("model").value = found.id;
    const own = found.mlyard || {};
    if ($("temperature").value === "" && typeof own.temperature === "number") $("temperature").value = own.temperature;
    $("about").textContent = [found.id + (own.note ? ": " + own.note : ""), queueText(own.queue)]
      .filter(Boolean).join(" · ");
  } catch (err) { /* the user names it */ }
}

async function ask(event) {
  event.preventDefault();
  const text = $("prompt").value.trim();
  if (!text || !$("base").value.trim()) { say("give a base URL and a message", true); return; }
  await findModel();
  $("prompt").value = "";
  messages.push({ role: "user", content: text });
  turn("user", text);
  const out = turn("assistant", "");
  const meta = document.createElement("span");
  meta.className = "meta";
  out.append(meta);
  $("send").disabled = true;
  say("asking " + url("/chat/completions") + " ...");
  const started = performance.now();
  let first = null, answer = "", usage = null, waited = null;
  try {
    const resp = await fetch(url("/chat/completions"), { method: "POST", headers: headers(), body: JSON.stringify({
      model: $("model").value.trim() || undefined, messages, stream: true, stream_options: { include_usage: true },
      max_tokens: Number($("max").value),
      temperature: $("temperature").value === "" ? undefined : Number($("temperature").value) }) });
    if (!resp.ok) {
      let why = resp.status + " " + resp.statusText;
      try { why = resp.status + ": " + (await resp.json()).error.message; } catch (err) { /* not JSON */ }
      throw new Error(why);
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
          const doc = JSON.parse(line.slice(6));
          if (doc.error) throw new Error(doc.error.message);
          if (doc.usage) usage = doc.usage;
          if (doc.mlyard) waited = doc.mlyard;
          const piece = doc.choices && doc.choices[0] && doc.choices[0].delta ? doc.choices[0].delta.content : "";
          if (piece) {
            if (first === null) first = performance.now();
            answer += piece;
            out.querySelector(".text").textContent = answer;
          }
        }
      }
    }
    const total = performance.now() - started;
    const ttft = first === null ? null : first - started;
    const rate = usage && first !== null && total > ttft ? usage.completion_tokens / ((total - ttft) / 1000) : null;
    meta.dataset.promptTokens = usage ? usage.prompt_tokens : "";
    meta.dataset.completionTokens = usage ? usage.completion_tokens : "";
    meta.dataset.ttftMs = ttft === null ? "" : Math.round(ttft);
    meta.dataset.ms = Math.round(total);
    meta.textContent = (usage ? usage.prompt_tokens + " tokens in, " + usage.completion_tokens + " out · "
                              : "no usage given · ")
      + "first token " + (ttft === null ? "-" : Math.round(ttft) + " ms") + " · " + Math.round(total) + " ms"
      + (rate === null ? "" : " · " + rate.toFixed(1) + " tokens/s")
      + (waited && typeof waited.queued_ms === "number" ? " · waited " + Math.round(waited.queued_ms) + " ms for a place"
                                                        : "");
    meta.dataset.queuedMs = waited && typeof waited.queued_ms === "number" ? Math.round(waited.queued_ms) : "";
    if (waited && waited.queue) findModel();
    messages.push({ role: "assistant", content: answer });
    say("");
  } catch (err) {
    messages.pop();
    out.classList.add("error");
    meta.textContent = String(err.message || err);
    say(String(err.message || err), true);
  } finally {
    $("send").disabled = false;
    keep();
  }
}

$("ask").addEventListener("submit", ask);
$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); $("ask").requestSubmit(); }
});
$("settings").addEventListener("submit", (event) => {
  event.preventDefault();
  messages = [];
  $("log").replaceChildren();
  keep();
  say("talking to " + url("/chat/completions"));
  findModel();
});
$("clear").addEventListener("click", () => { messages = []; $("log").replaceChildren(); keep(); say("new conversation"); });
for (const m of messages) turn(m.role, m.content);
if ($("base").value) { keep(); say("talking to " + url("/chat/completions")); findModel(); }
