(function () {  // click a figure to see it at full size; click again or press Escape to close
  "use strict";
  const box = document.getElementById("lightbox");
  if (!box) return;
  const big = box.querySelector("img");
  const close = () => { box.hidden = true; big.removeAttribute("src"); };
  document.querySelectorAll("figure img").forEach((img) => {
    img.title = "click to enlarge";
    img.addEventListener("click", () => { big.src = img.src; big.alt = img.alt; box.hidden = false; box.focus(); });
  });
  box.addEventListener("click", close);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape" && !box.hidden) close(); });
})();
