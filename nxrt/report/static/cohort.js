// nxrt index.html: sort the cases by any column (click again to reverse). The project's own script.
"use strict";
(function () {
  const table = document.getElementById("cases");
  const body = table.tBodies[0];
  let current = null, ascending = true;
  function key(row, column) {
    const text = row.cells[column].dataset.sort;
    const number = Number(text);
    return text !== "" && !Number.isNaN(number) ? number : text;
  }
  for (const th of table.tHead.rows[0].cells) {
    th.addEventListener("click", () => {
      const column = Number(th.dataset.column);
      ascending = current === column ? !ascending : true;
      current = column;
      const rows = Array.from(body.rows);
      rows.sort((a, b) => {
        const ka = key(a, column), kb = key(b, column);
        if (ka === "" || kb === "") return ka === kb ? 0 : ka === "" ? 1 : -1;  // empty cells last
        const order = typeof ka === "number" && typeof kb === "number" ? ka - kb : String(ka).localeCompare(String(kb));
        return ascending ? order : -order;
      });
      body.append(...rows);
      for (const other of table.tHead.rows[0].cells) other.removeAttribute("aria-sort");
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    });
  }
  document.body.dataset.ready = "true";
})();
