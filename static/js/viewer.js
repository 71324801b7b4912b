// The image viewer: fit to the pane by default; wheel, +/− and buttons zoom; drag or arrows pan;
// "full" shows the image at 100 %: one image pixel per CSS pixel, the browser's own 100 % (on a
// screen with device pixel ratio 2 each image pixel covers 2×2 device pixels). ``scale`` is always
// CSS pixels per image pixel, so the zoom label (scale × 100 %) says exactly that.

const MIN_FACTOR = 0.5; // of the fitted scale
const MAX_SCALE = 8;

export class Viewer {
  constructor(pane, img, { onZoom } = {}) {
    this.pane = pane;
    this.img = img;
    this.onZoom = onZoom || (() => {});
    this.w = 1;
    this.h = 1;
    this.scale = 1;
    this.x = 0;
    this.y = 0;
    this.followers = [];
    new ResizeObserver(() => this.fit()).observe(pane);
    pane.addEventListener("wheel", (e) => this.#wheel(e), { passive: false });
    pane.addEventListener("pointerdown", (e) => this.#panStart(e));
    pane.addEventListener("dblclick", (e) => this.toggleFull(e));
  }

  /** Show ``el`` (an already decoded <img> from the prefetch, or a fresh one) for an image of w×h. */
  show(el, w, h) {
    el.id = this.img.id;
    el.alt = this.img.alt;
    el.draggable = false;
    if (el !== this.img) {
      this.img.replaceWith(el);
      this.img = el;
    }
    this.w = w || 1;
    this.h = h || 1;
    this.fit();
    return el.decode ? el.decode().catch(() => {}) : Promise.resolve();
  }

  /** Keep ``el`` (an overlay the size of the image, say the boxes of box answers) on the image at every zoom
   * and pan: it takes the image's transform, and ``--scale`` (CSS pixels per image pixel) for sizes that
   * should stay the same on screen. */
  follow(el) {
    this.followers.push(el);
    this.#apply();
  }

  fitScale() {
    const r = this.pane.getBoundingClientRect();
    return Math.min(r.width / this.w, r.height / this.h) || 1;
  }

  fit() {
    this.#set(this.fitScale());
    this.#center();
    this.#apply();
  }

  isFull() {
    return Math.abs(this.scale - 1) < 1e-6;
  }

  toggleFull(e) {
    if (this.isFull()) return this.fit();
    const r = this.pane.getBoundingClientRect();
    const cx = e?.clientX != null ? e.clientX - r.left : r.width / 2;
    const cy = e?.clientY != null ? e.clientY - r.top : r.height / 2;
    this.#zoomAt(1 / this.scale, cx, cy);
  }

  zoomBy(factor) {
    const r = this.pane.getBoundingClientRect();
    this.#zoomAt(factor, r.width / 2, r.height / 2);
  }

  pan(dx, dy) {
    this.x += dx;
    this.y += dy;
    this.#clamp();
    this.#apply();
  }

  #set(scale) {
    const fit = this.fitScale();
    // 100 % stays reachable even when the fitted scale is far above it (a small image in a large
    // pane): a floor of half the fit alone turned "100 %" into 218 % for a 128 px image.
    const lowest = Math.min(fit * MIN_FACTOR, 1);
    this.scale = Math.min(Math.max(scale, lowest), Math.max(MAX_SCALE, fit));
  }

  #zoomAt(factor, cx, cy) {
    const old = this.scale;
    this.#set(old * factor);
    const k = this.scale / old;
    this.x = cx - (cx - this.x) * k;
    this.y = cy - (cy - this.y) * k;
    this.#clamp();
    this.#apply();
  }

  #center() {
    const r = this.pane.getBoundingClientRect();
    this.x = (r.width - this.w * this.scale) / 2;
    this.y = (r.height - this.h * this.scale) / 2;
  }

  #clamp() {
    // Keep the image covering the pane when larger than it, centred when smaller.
    const r = this.pane.getBoundingClientRect();
    const sw = this.w * this.scale;
    const sh = this.h * this.scale;
    this.x = sw <= r.width ? (r.width - sw) / 2 : Math.min(0, Math.max(r.width - sw, this.x));
    this.y = sh <= r.height ? (r.height - sh) / 2 : Math.min(0, Math.max(r.height - sh, this.y));
  }

  #apply() {
    this.img.style.width = `${this.w}px`;
    this.img.style.height = `${this.h}px`;
    this.img.style.transform = `translate(${this.x}px, ${this.y}px) scale(${this.scale})`;
    for (const el of this.followers) {
      el.style.transform = this.img.style.transform;
      el.style.setProperty("--scale", String(this.scale));
    }
    this.pane.classList.toggle("zoomed", this.scale > this.fitScale() + 1e-6);
    this.onZoom(this.scale);
  }

  #wheel(e) {
    e.preventDefault();
    const r = this.pane.getBoundingClientRect();
    this.#zoomAt(e.deltaY < 0 ? 1.2 : 1 / 1.2, e.clientX - r.left, e.clientY - r.top);
  }

  #panStart(e) {
    if (e.button !== 0) return;
    e.preventDefault();
    let lastX = e.clientX;
    let lastY = e.clientY;
    const move = (ev) => {
      this.pan(ev.clientX - lastX, ev.clientY - lastY);
      lastX = ev.clientX;
      lastY = ev.clientY;
    };
    const up = () => {
      window.removeEventListener("pointermove", move);
      window.removeEventListener("pointerup", up);
      window.removeEventListener("pointercancel", up);
      this.pane.classList.remove("panning");
    };
    this.pane.classList.add("panning");
    window.addEventListener("pointermove", move);
    window.addEventListener("pointerup", up);
    window.addEventListener("pointercancel", up);
  }
}
