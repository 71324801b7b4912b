// The Training page's editor of the policy's composed reward: add and remove term rows (each a copy of the
// row template; the server reads the rows in order), show the dotted-path input for "your function…", and
// put a parameters example of the chosen built-in in the placeholder. Without this script the page still
// works: it always renders one empty row to fill in.

const form = document.getElementById("reward-form");

function setUp(row) {
  const select = row.querySelector("select[name=term-reward]");
  const custom = row.querySelector(".term-custom");
  const params = row.querySelector(".term-params");
  const remove = row.querySelector(".reward-remove");
  const examples = JSON.parse(document.getElementById("reward-examples").textContent);
  const sync = () => {
    custom.hidden = select.value !== "custom";
    params.placeholder = examples[select.value] || "{}";
  };
  select.addEventListener("change", () => {
    sync();
    if (!custom.hidden) custom.focus();
  });
  remove.hidden = false;
  remove.addEventListener("click", () => {
    const next = row.nextElementSibling || row.previousElementSibling;
    row.remove();
    next?.querySelector("select")?.focus();
  });
  sync();
}

if (form) {
  const rows = document.getElementById("reward-rows");
  const template = document.getElementById("reward-row-template");
  const add = document.getElementById("reward-add");
  rows.querySelectorAll("tr.reward-term").forEach(setUp);
  add.hidden = false;
  add.addEventListener("click", () => {
    const row = template.content.firstElementChild.cloneNode(true);
    rows.append(row);
    setUp(row);
    row.querySelector("select").focus();
  });
}
