// The portal's admin pages: buttons that destroy something ask first (their form carries
// data-confirm, from the action table's confirm text).
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});
