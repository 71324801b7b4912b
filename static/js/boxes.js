// Box answers (grounding and detection tasks): the answer format and its drawing over the image.
//
// parseBoxes is the browser's copy of rlhf/engine/rewards.py parse_boxes, rule for rule, so that the page
// draws exactly the boxes the IoU reward scores; tests/engine/box_examples.json holds both to the same
// examples (tests/engine/test_boxes.py and tests/e2e/test_grounding.py). The format is documented in
// docs/import-export.md, "Box answers".

const SVG = "http://www.w3.org/2000/svg";
const BRACKET = /\[([^[\]]*)\]/g;
const NUMBER = /^-?\d+(?:\.\d+)?$/;
const NUM = /-?\d+(?:\.\d+)?/g;
const LABEL_CUT = /^[^]*[;\n]/; // a label starts after the last ';' or line break before its box
const TRIM = /^[ \t,.:;-]+|[ \t,.:;-]+$/g;

// One colour per candidate number (1–9), told apart also in the commonest colour blindness (Okabe & Ito's
// palette, then two darker ones); the card's number badge and its boxes share it.
export const CANDIDATE_COLORS = ["#0072b2", "#e69f00", "#009e73", "#cc79a7", "#d55e00", "#56b4e9", "#7a5c00", "#5d3a9b", "#222222"];

export const candidateColor = (number) => CANDIDATE_COLORS[(number - 1) % CANDIDATE_COLORS.length];

function ordered([x0, y0, x1, y1]) {
  return [Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)];
}

/** The box between a '[' and its ']': four comma-separated numbers (spaces inside one ignored), else four
 * space-separated ones; null otherwise. */
function bracketBox(inside) {
  let fields = inside.split(",");
  if (fields.length !== 4) fields = inside.split(/\s+/).filter((f) => f !== "");
  else fields = fields.map((f) => f.replace(/\s+/g, ""));
  if (fields.length !== 4 || !fields.every((f) => NUMBER.test(f))) return null;
  return ordered(fields.map(Number));
}

/** Every box an answer states, as {label, box: [x0, y0, x1, y1]} in pixels of the original image. */
export function parseBoxes(text) {
  text = String(text ?? "");
  const out = [];
  let last = 0;
  for (const m of text.matchAll(BRACKET)) {
    const box = bracketBox(m[1]);
    if (!box) continue;
    const label = text.slice(last, m.index).replace(LABEL_CUT, "").toLowerCase().replace(TRIM, "");
    out.push({ label: label.split(/\s+/).filter(Boolean).join(" "), box });
    last = m.index + m[0].length;
  }
  if (!out.length && !text.includes("[")) {
    const nums = (text.match(NUM) || []).map(Number);
    if (nums.length >= 4) out.push({ label: "", box: ordered(nums.slice(0, 4)) });
  }
  return out;
}

/**
 * The boxes of a task's candidates drawn on an SVG over the image: its viewBox is the image's pixels and it
 * follows the image's transform (Viewer.follow), so every zoom and pan moves the boxes with the picture.
 * Strokes and labels keep their on-screen size at any zoom (CSS, by ``--scale``).
 */
export class BoxOverlay {
  constructor(pane) {
    this.svg = document.createElementNS(SVG, "svg");
    this.svg.setAttribute("class", "box-overlay");
    this.svg.setAttribute("aria-hidden", "true");
    this.svg.hidden = true;
    pane.append(this.svg);
  }

  /** Draw ``candidates`` ([{id, number, text}]) for an image of w×h; returns how many boxes each has. */
  show(candidates, w, h) {
    this.svg.setAttribute("viewBox", `0 0 ${w} ${h}`);
    this.svg.style.width = `${w}px`;
    this.svg.style.height = `${h}px`;
    const counts = new Map();
    const groups = candidates.map((c) => {
      const g = document.createElementNS(SVG, "g");
      g.setAttribute("class", "cand-boxes");
      g.dataset.id = c.id;
      g.style.setProperty("--cand", candidateColor(c.number));
      const boxes = parseBoxes(c.text);
      counts.set(c.id, boxes.length);
      for (const { label, box } of boxes) {
        const [x0, y0, x1, y1] = box;
        const rect = document.createElementNS(SVG, "rect");
        rect.setAttribute("x", x0);
        rect.setAttribute("y", y0);
        rect.setAttribute("width", Math.max(x1 - x0, 0));
        rect.setAttribute("height", Math.max(y1 - y0, 0));
        const tag = document.createElementNS(SVG, "text");
        tag.setAttribute("x", x0);
        tag.setAttribute("y", y0);
        tag.textContent = label ? `${c.number} ${label}` : String(c.number);
        g.append(rect, tag);
      }
      return g;
    });
    this.svg.replaceChildren(...groups);
    this.svg.hidden = false;
    return counts;
  }

  hide() {
    this.svg.hidden = true;
    this.svg.replaceChildren();
  }

  /** Bring the boxes of the candidates ``ids`` forward and dim the others (null: all equal). */
  highlight(ids) {
    const chosen = ids ? new Set(ids) : null;
    for (const g of this.svg.querySelectorAll(".cand-boxes")) {
      const on = chosen != null && chosen.has(Number(g.dataset.id));
      g.classList.toggle("active", on);
      g.classList.toggle("dim", chosen != null && !on);
      if (on) this.svg.append(g); // drawn last, so on top
    }
  }
}
