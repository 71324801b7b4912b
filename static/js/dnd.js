// Drag and drop with pointer events (mouse, pen and touch alike; HTML5 drag events do not fire for
// touch on most tablets). A press that moves less than a few pixels stays a click.

const THRESHOLD = 5;

/**
 * Make elements matching ``selector`` inside ``root`` draggable.
 * - ``idOf(el)``: the dragged thing's id;
 * - ``resolve(x, y)``: {target, highlight: [element, className]} under the pointer, or null;
 * - ``drop(id, target)``: apply it. Returns a function telling whether a drag just ended (to swallow
 *   the click that follows the pointerup).
 */
export function draggable(root, selector, { idOf, resolve, drop, handle }) {
  let justDragged = false;

  root.addEventListener("pointerdown", (e) => {
    const el = e.target.closest(selector);
    if (!el || !root.contains(el) || e.button !== 0) return;
    // On touch a drag starts only from the handle, so the list still scrolls under a finger.
    if (e.pointerType !== "mouse" && handle && !e.target.closest(handle) && !el.matches(handle)) return;
    const startX = e.clientX;
    const startY = e.clientY;
    let ghost = null;
    let lit = null;

    const light = (hit) => {
      if (lit) lit[0].classList.remove(lit[1]);
      lit = hit?.highlight || null;
      if (lit) lit[0].classList.add(lit[1]);
    };
    const move = (ev) => {
      if (!ghost) {
        if (Math.hypot(ev.clientX - startX, ev.clientY - startY) < THRESHOLD) return;
        ghost = el.cloneNode(true);
        ghost.removeAttribute("id");
        ghost.classList.add("drag-ghost");
        ghost.setAttribute("aria-hidden", "true");
        const r = el.getBoundingClientRect();
        ghost.style.width = `${Math.min(r.width, 420)}px`;
        document.body.appendChild(ghost);
        el.classList.add("dragging");
        document.body.classList.add("is-dragging");
      }
      ev.preventDefault();
      ghost.style.transform = `translate(${ev.clientX + 8}px, ${ev.clientY + 8}px)`;
      const hit = resolve(ev.clientX, ev.clientY);
      light(hit);
    };
    const end = (ev) => {
      window.removeEventListener("pointermove", move);
      window.removeEventListener("pointerup", end);
      window.removeEventListener("pointercancel", end);
      if (!ghost) return;
      ghost.remove();
      el.classList.remove("dragging");
      document.body.classList.remove("is-dragging");
      light(null);
      justDragged = true;
      setTimeout(() => (justDragged = false), 0);
      if (ev.type === "pointerup") {
        const hit = resolve(ev.clientX, ev.clientY);
        if (hit?.target) drop(idOf(el), hit.target);
      }
    };
    window.addEventListener("pointermove", move);
    window.addEventListener("pointerup", end);
    window.addEventListener("pointercancel", end);
  });

  return () => justDragged;
}
