// The budget console's only script: live dashboard updates (server-sent events), confirmations, auto-submit.
// Served from the package (no CDN, no build step); the Content-Security-Policy allows no inline script.
"use strict";

function liveDashboard() {
  const live = document.getElementById("live");
  const state = document.getElementById("live-state");
  if (!live || !window.EventSource) return;
  let timer = null;
  let busy = false;
  const refresh = () => {
    if (busy) { timer = timer || setTimeout(() => { timer = null; refresh(); }, 300); return; }
    busy = true;
    fetch(live.dataset.liveSrc, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then((response) => (response.ok ? response.text() : Promise.reject(response.status)))
      .then((html) => { live.innerHTML = html; live.dataset.updated = String(Date.now()); })
      .catch(() => { if (state) state.textContent = "live updates paused (reload the page)"; })
      .finally(() => { busy = false; });
  };
  const events = new EventSource("/events");
  events.onopen = () => { if (state) { state.textContent = "live"; state.dataset.state = "live"; } };
  events.onerror = () => { if (state) { state.textContent = "reconnecting…"; state.dataset.state = "reconnecting"; } };
  events.addEventListener("budget", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { timer = null; refresh(); }, 150);
  });
}

function confirmations() {
  document.querySelectorAll("form[data-confirm]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  });
  document.querySelectorAll("select[data-autosubmit]").forEach((select) => {
    select.addEventListener("change", () => select.form.submit());
  });
}

document.addEventListener("DOMContentLoaded", () => { confirmations(); liveDashboard(); });
