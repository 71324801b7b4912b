// The ranking being built: groups of candidate ids, best first; a group of two or more is a tie.
// Pure state with an undo history; no DOM. Every change goes through #change so Backspace undoes it.

export class Ranking {
  constructor(ids) {
    this.ids = [...ids];
    this.groups = [];
    this.history = [];
  }

  #change(mutate) {
    const before = JSON.stringify(this.groups);
    mutate();
    this.groups = this.groups.filter((g) => g.length > 0);
    if (JSON.stringify(this.groups) === before) return false;
    this.history.push(before);
    return true;
  }

  groupOf(id) {
    return this.groups.findIndex((g) => g.includes(id));
  }

  isPlaced(id) {
    return this.groupOf(id) !== -1;
  }

  remaining() {
    return this.ids.filter((id) => !this.isPlaced(id));
  }

  isComplete() {
    return this.remaining().length === 0;
  }

  /** Rank ``id`` next, below everything ranked so far. */
  pick(id) {
    if (!this.ids.includes(id) || this.isPlaced(id)) return false;
    return this.#change(() => this.groups.push([id]));
  }

  /** Tie the last group (normally the last pick) with the group before it. */
  tie() {
    if (this.groups.length < 2) return false;
    return this.#change(() => {
      const last = this.groups.pop();
      this.groups[this.groups.length - 1].push(...last);
    });
  }

  /**
   * Move ``id`` (placed or not) to a target: {kind: "into"|"before"|"after", of: otherId},
   * {kind: "end"} or {kind: "pool"}. "into" ties it with other's group; "before"/"after" give it a
   * rank of its own just above or below that group.
   */
  move(id, target) {
    if (!this.ids.includes(id)) return false;
    if (target.of === id) {
      // Dropped on its own group: only meaningful when it leaves a tie for a rank of its own.
      const g = this.groupOf(id);
      if (target.kind === "into" || g === -1 || this.groups[g].length === 1) return false;
    }
    return this.#change(() => {
      const from = this.groupOf(id);
      if (from !== -1) this.groups[from] = this.groups[from].filter((x) => x !== id);
      this.groups = this.groups.filter((g) => g.length > 0);
      if (target.kind === "pool") return;
      if (target.kind === "end") {
        this.groups.push([id]);
        return;
      }
      let g = this.groupOf(target.of);
      if (g === -1) {
        // Only when it left a tie by dropping above or below its own (still existing) group.
        g = target.of === id ? from : this.groups.length;
        this.groups.splice(target.kind === "after" ? g + 1 : g, 0, [id]);
        return;
      }
      if (target.kind === "into") this.groups[g].push(id);
      else this.groups.splice(target.kind === "before" ? g : g + 1, 0, [id]);
    });
  }

  /** Move a whole group up (-1) or down (+1). */
  shiftGroup(index, delta) {
    const to = index + delta;
    if (index < 0 || index >= this.groups.length || to < 0 || to >= this.groups.length) return false;
    return this.#change(() => {
      const [g] = this.groups.splice(index, 1);
      this.groups.splice(to, 0, g);
    });
  }

  unplaceGroup(index) {
    if (index < 0 || index >= this.groups.length) return false;
    return this.#change(() => this.groups.splice(index, 1));
  }

  clear() {
    return this.#change(() => {
      this.groups = [];
    });
  }

  undo() {
    if (!this.history.length) return false;
    this.groups = JSON.parse(this.history.pop());
    return true;
  }

  ordering() {
    return this.groups.map((g) => [...g]);
  }
}

export function ordinal(n) {
  const s = ["th", "st", "nd", "rd"];
  const v = n % 100;
  return n + (s[(v - 20) % 10] || s[v] || s[0]);
}
