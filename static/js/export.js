// The export form submits straight to the streaming API endpoint. Empty date fields are left out of
// the query (the API reads "since=" as a bad date, not as "no filter").

const form = document.getElementById("export-form");
form.addEventListener("submit", () => {
  const emptied = [...form.querySelectorAll("input[type=datetime-local]")].filter((el) => !el.value);
  for (const el of emptied) el.disabled = true;
  setTimeout(() => emptied.forEach((el) => (el.disabled = false)), 0);
});
