// neuralsync dashboard: follows the change feed (server-sent events, admitted by the session cookie)
// and shows each change with a line the server renders (escaped) about the memory it touched.
(function () {
  "use strict";
  var MAX_ITEMS = 100;
  function start() {
    var list = document.getElementById("feed");
    if (!list || !window.EventSource) { return; }
    var state = document.getElementById("feed-state");
    var source = new EventSource(list.getAttribute("data-stream"));
    source.onopen = function () { if (state) { state.textContent = "live"; } };
    source.onerror = function () { if (state) { state.textContent = "reconnecting…"; } };
    source.addEventListener("change", function (event) {
      var change = JSON.parse(event.data);
      var item = document.createElement("li");
      item.className = "change";
      item.setAttribute("data-kind", change.kind);
      item.setAttribute("data-record", change.record_id);
      var kind = document.createElement("span");
      kind.className = "kind";
      kind.textContent = change.kind;
      var body = document.createElement("span");
      body.className = "line";
      body.textContent = change.record_id;
      item.appendChild(kind);
      item.appendChild(body);
      list.insertBefore(item, list.firstChild);
      while (list.children.length > MAX_ITEMS) { list.removeChild(list.lastChild); }
      if (/^[0-9a-f]{32}$/.test(change.record_id) && window.htmx) {
        window.htmx.ajax("GET", "/ui/memory/" + change.record_id + "/line", { target: body, swap: "innerHTML" });
      }
    });
  }
  if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", start); } else { start(); }
})();
