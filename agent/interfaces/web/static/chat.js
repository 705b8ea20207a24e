// The chat form, streamed: the turn is posted with fetch and its answer read as server-sent events
// (start, delta..., done | error). Without JavaScript the form posts and the page comes back whole.
(function () {
  "use strict";
  const form = document.getElementById("ask");
  if (!form || !window.fetch || !window.TextDecoder) return;
  const chat = document.getElementById("chat");
  const problem = document.getElementById("ask-error");

  function turn(cls) {
    const li = document.createElement("li");
    li.className = "turn " + cls;
    chat.appendChild(li);
    return li;
  }

  function handle(kind, data, answer) {
    if (kind === "delta") {
      answer.firstChild.textContent += data.text;
    } else if (kind === "done") {
      answer.innerHTML = data.html;  // rendered by the server from escaped text
    } else if (kind === "error") {
      answer.remove();
      problem.textContent = data.title + ": " + data.message;
      problem.hidden = false;
    }
  }

  form.addEventListener("submit", async function (ev) {
    ev.preventDefault();
    const body = new URLSearchParams(new FormData(form));
    const question = form.question.value;
    problem.hidden = true;
    const q = turn("user");
    q.innerHTML = '<div class="q"></div>';
    q.firstChild.textContent = question;
    const answer = turn("assistant");
    answer.innerHTML = '<div class="answer streaming" data-testid="streaming"></div>';
    form.question.value = "";
    const button = form.querySelector("button");
    button.disabled = true;
    try {
      const resp = await fetch(form.dataset.stream, {method: "POST", body: body, credentials: "same-origin",
                                                      headers: {"Accept": "text/event-stream"}});
      if (!resp.ok || !resp.body) {
        const text = await resp.text();
        const doc = new DOMParser().parseFromString(text, "text/html");
        const msg = doc.querySelector("[data-testid=error]");
        handle("error", {title: "Error " + resp.status, message: msg ? msg.textContent : resp.statusText}, answer);
        return;
      }
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, {stream: true});
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let kind = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) kind = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          handle(kind, data ? JSON.parse(data) : {}, answer);
        }
      }
    } catch (err) {
      handle("error", {title: "Connection lost", message: String(err)}, answer);
    } finally {
      button.disabled = false;
      form.question.focus();
    }
  });
})();
