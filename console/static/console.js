// edgehook console: live regions and log following, without inline script or other origins.
// A region with data-live is re-rendered by the server (?partial=1: escaped HTML) every few
// seconds; a <pre data-follow> appends a running job's log. Focus survives a refresh.
(function () {
  "use strict";
  var EVERY_MS = 2000;

  function refresh(region) {
    fetch(region.getAttribute("data-live"), { credentials: "same-origin", cache: "no-store" })
      .then(function (answer) {
        if (answer.redirected || !answer.ok) { return null; }
        return answer.text();
      })
      .then(function (html) {
        if (html === null || html === region.getAttribute("data-html")) { return; }
        var focused = document.activeElement && region.contains(document.activeElement)
          ? document.activeElement.id : null;
        region.innerHTML = html;  // rendered by the server with every value escaped
        region.setAttribute("data-html", html);
        if (focused) {
          var again = document.getElementById(focused);
          if (again) { again.focus(); }
        }
      })
      .catch(function () { /* the console restarted or the network blinked: next round */ });
  }

  function follow(pre) {
    var offset = 0;
    function more() {
      var url = pre.getAttribute("data-follow") + "&offset=" + offset;
      fetch(url, { credentials: "same-origin", cache: "no-store" })
        .then(function (answer) {
          if (!answer.ok) { return; }
          var next = parseInt(answer.headers.get("X-Log-Offset") || "0", 10);
          var state = answer.headers.get("X-Job-State");
          return answer.text().then(function (text) {
            if (text) { pre.appendChild(document.createTextNode(text)); }
            var grew = next > offset;
            offset = next;
            if (grew) { more(); return; }
            if (state === "running" || state === "queued") { setTimeout(more, 1000); }
          });
        })
        .catch(function () { setTimeout(more, EVERY_MS); });
    }
    more();
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(function (region) {
      region.setAttribute("data-html", region.innerHTML);
      setInterval(function () { refresh(region); }, EVERY_MS);
    });
    document.querySelectorAll("pre[data-follow]").forEach(follow);
  });
})();
