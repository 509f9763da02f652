// A page's module script fails as a whole when any module it imports does not arrive (a
// dropped connection, a server error): the page would then sit half-made with no word, a
// console at "Connecting…" for ever. This classic script runs before any module and says
// so instead. The browser reports such a failure as an "error" event on the <script>
// element; it does not bubble, so it is caught on its way down (capture).
(function () {
  const TEXT = "Part of this page did not load. Reload the page to try again.";

  function say() {
    document.body.dataset.scripts = "failed";
    const status = document.getElementById("console-status");
    if (status) {
      status.textContent = TEXT;
      status.dataset.kind = "error";
      return;
    }
    if (document.getElementById("load-failed")) return;
    const notice = document.createElement("p");
    notice.id = "load-failed";
    notice.className = "message error";
    notice.setAttribute("role", "alert");
    notice.textContent = TEXT;
    document.getElementById("main").prepend(notice);
  }

  window.addEventListener("error", function (event) {
    const element = event.target;
    if (element instanceof HTMLScriptElement && element.type === "module") say();
  }, true);
})();
