// Auto-refresh of sections marked data-refresh (seconds) and copy buttons (data-copy = element id).
"use strict";
document.addEventListener("click", (e) => {
  const id = e.target.getAttribute && e.target.getAttribute("data-copy");
  const el = id && document.getElementById(id);
  if (el && navigator.clipboard) navigator.clipboard.writeText(el.textContent);
});
const live = document.querySelector("[data-refresh]");
if (live) {
  const every = Math.max(2, Number(live.getAttribute("data-refresh")) || 5) * 1000;
  setInterval(async () => {
    if (document.hidden) return;
    const r = await fetch(location.href, { credentials: "same-origin" });
    if (!r.ok) return;
    const doc = new DOMParser().parseFromString(await r.text(), "text/html");
    const fresh = doc.querySelector("[data-refresh]");
    if (fresh) live.replaceChildren(...fresh.childNodes);
  }, every);
}
