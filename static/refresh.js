// Refreshes the part of a page marked `data-refresh="<seconds>"` in place: the page is fetched
// again and only that element is swapped, so the scroll position, an open form and the rest of
// the page stay as they are. Without JavaScript the page falls back to a full reload
// (a <noscript> meta refresh).
(function () {
  "use strict";
  var live = document.querySelector("[data-refresh]");
  if (!live) {
    return;
  }
  var seconds = parseInt(live.getAttribute("data-refresh"), 10) || 5;
  function busy() {
    // Never swap a form out from under someone using it.
    var active = document.activeElement;
    return active && live.contains(active) && /^(INPUT|SELECT|TEXTAREA|BUTTON)$/.test(active.tagName);
  }
  function refresh() {
    if (document.hidden || busy()) {
      return;
    }
    fetch(window.location.href, { credentials: "same-origin" })
      .then(function (response) {
        // A lost session or an error page is not swapped in: the next full load shows it.
        if (!response.ok || response.redirected) {
          return null;
        }
        return response.text();
      })
      .then(function (html) {
        if (!html) {
          return;
        }
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById(live.id);
        if (fresh) {
          live.innerHTML = fresh.innerHTML;
          live.setAttribute("data-refreshed", String(Date.now()));
        }
      })
      .catch(function () {});
  }
  window.setInterval(refresh, seconds * 1000);
})();
