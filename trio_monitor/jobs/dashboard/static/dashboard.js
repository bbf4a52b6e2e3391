// trio-monitor dashboard: live regions and confirmations. No inline script
// anywhere (the Content-Security-Policy forbids it); this file is the only one.
"use strict";

(function () {
  const PERIOD_MS = 2000;
  const status = document.querySelector("[data-live-status]");

  function busy() {
    // Never replace a region while the user is typing or choosing in it.
    const active = document.activeElement;
    return active && active.closest("[data-live]") && active.matches("input, select, textarea");
  }

  async function refresh() {
    const regions = document.querySelectorAll("[data-live][id]");
    if (!regions.length || document.hidden || busy()) return;
    try {
      const response = await fetch(window.location.href, {
        headers: { "X-Requested-With": "trio-monitor-live" },
        credentials: "same-origin",
        cache: "no-store",
      });
      if (!response.ok) throw new Error(String(response.status));
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      for (const region of regions) {
        const fresh = page.getElementById(region.id);
        if (fresh && fresh.innerHTML !== region.innerHTML) region.replaceWith(fresh);
      }
      if (status) {
        status.textContent = "live";
        status.classList.remove("offline");
        status.title = "updated " + new Date().toLocaleTimeString();
      }
    } catch (error) {
      if (status) {
        status.textContent = "offline";
        status.classList.add("offline");
      }
    }
  }

  document.addEventListener("submit", function (event) {
    const form = event.target;
    const question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) event.preventDefault();
  });

  window.setInterval(refresh, PERIOD_MS);
})();
