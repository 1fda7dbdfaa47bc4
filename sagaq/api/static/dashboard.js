// sagaq dashboard: refresh the live region in place, and the confirm dialogs of cancel/retry.
(() => {
  const EVERY_MS = 5000;
  const note = document.getElementById("updated");

  function wire(root) {
    root.querySelectorAll("[data-open]").forEach((button) => {
      button.addEventListener("click", () => {
        document.getElementById(`dialog-${button.dataset.open}`).showModal();
      });
    });
  }
  document.querySelectorAll("[data-close]").forEach((button) => {
    button.addEventListener("click", () => button.closest("dialog").close());
  });
  wire(document);

  document.querySelectorAll("[data-live]").forEach((region) => {
    const refresh = async () => {
      // A finished saga has nothing more to show; a dialog being filled in is left alone.
      if (region.querySelector("[data-final]")) return;
      if (document.hidden || document.querySelector("dialog[open]")) {
        return setTimeout(refresh, EVERY_MS);
      }
      try {
        const response = await fetch(region.dataset.live, { credentials: "same-origin" });
        if (response.ok) {
          region.innerHTML = await response.text();
          wire(region);
          if (note) note.textContent = `updated ${new Date().toLocaleTimeString()}`;
        } else if (note) {
          note.textContent = `update failed (${response.status})`;
        }
      } catch (error) {
        if (note) note.textContent = "update failed (offline?)";
      }
      setTimeout(refresh, EVERY_MS);
    };
    setTimeout(refresh, EVERY_MS);
  });
})();
