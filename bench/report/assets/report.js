// Interactions of the `bench report` page: sortable tables, chart tooltips, the crop slider. No libraries.
(function () {
  "use strict";

  function cellValue(row, index) {
    var cell = row.cells[index];
    if (!cell) return null;
    var v = cell.getAttribute("data-v");
    if (v !== null && v !== "") return parseFloat(v);
    return cell.textContent.trim().toLowerCase();
  }

  function compare(a, b) {
    // Missing values last, numbers before text, then natural order.
    if (a === null || a === "") return b === null || b === "" ? 0 : 1;
    if (b === null || b === "") return -1;
    if (typeof a === "number" && typeof b === "number") return a - b;
    return String(a).localeCompare(String(b), undefined, { numeric: true });
  }

  function sortTable(table, index, descending) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (r1, r2) {
      var c = compare(cellValue(r1, index), cellValue(r2, index));
      if (c === 0) return r1.getAttribute("data-i") - r2.getAttribute("data-i");
      return descending ? -c : c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    table.classList.toggle("resorted", true);
  }

  function restoreOrder(table) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (r1, r2) { return r1.getAttribute("data-i") - r2.getAttribute("data-i"); });
    rows.forEach(function (r) { body.appendChild(r); });
    table.querySelectorAll("th").forEach(function (th) { th.classList.remove("sorted-asc", "sorted-desc"); });
  }

  function makeSortable(table) {
    Array.prototype.forEach.call(table.tBodies[0].rows, function (row, i) { row.setAttribute("data-i", i); });
    table.querySelectorAll("th[data-sort]").forEach(function (th) {
      th.addEventListener("click", function () {
        var index = parseInt(th.getAttribute("data-sort"), 10);
        // First click: the best first (descending numbers, ascending text); then alternate; a third click restores.
        var state = th.classList.contains("sorted-desc") ? "desc" : th.classList.contains("sorted-asc") ? "asc" : "";
        var numeric = th.getAttribute("data-type") === "num";
        var first = numeric ? "desc" : "asc", second = numeric ? "asc" : "desc";
        var next = state === "" ? first : state === first ? second : "";
        restoreOrder(table);
        if (next) {
          sortTable(table, index, next === "desc");
          th.classList.add(next === "desc" ? "sorted-desc" : "sorted-asc");
        }
      });
    });
  }

  function tooltips() {
    var tip = document.getElementById("tip");
    document.addEventListener("mouseover", function (e) {
      var target = e.target.closest ? e.target.closest("[data-tip]") : null;
      if (!target) { tip.style.display = "none"; return; }
      tip.textContent = target.getAttribute("data-tip");
      tip.style.display = "block";
    });
    document.addEventListener("mousemove", function (e) {
      tip.style.left = (e.clientX + 14) + "px";
      tip.style.top = (e.clientY + 10) + "px";
    });
  }

  function slider() {
    var box = document.getElementById("slider");
    if (!box) return;
    var before = box.querySelector("img.before"), after = box.querySelector("img.after");
    var left = document.getElementById("slider-left"), right = document.getElementById("slider-right");
    var range = document.getElementById("slider-range");
    var panels = document.querySelectorAll("#crops img");
    function update() {
      before.src = panels[parseInt(left.value, 10)].src;
      after.src = panels[parseInt(right.value, 10)].src;
      after.style.clipPath = "inset(0 0 0 " + range.value + "%)";
      var names = document.getElementById("slider-names");
      names.textContent = left.options[left.selectedIndex].text + "  |  " + right.options[right.selectedIndex].text;
    }
    [left, right, range].forEach(function (el) { el.addEventListener("input", update); });
    update();
  }

  function selfTest() {
    // report.html#selftest: sort the first table by its first PSNR column (a real click) and write the resulting
    // method order into #report-selftest, so a headless browser can check the sorting code itself.
    var table = document.querySelector("table.sortable");
    var th = table && table.querySelector("th[data-type=num]");
    if (!th) return;
    th.click();
    var index = parseInt(th.getAttribute("data-sort"), 10);
    var order = Array.prototype.map.call(table.tBodies[0].rows, function (r) {
      return r.cells[0].textContent.trim() + "=" + r.cells[index].getAttribute("data-v");
    });
    document.getElementById("report-selftest").textContent = order.join(";");
  }

  document.querySelectorAll("table.sortable").forEach(makeSortable);
  tooltips();
  slider();
  if (window.location.hash === "#selftest") selfTest();
  var status = document.getElementById("report-status");
  status.textContent = "ready: " + document.querySelectorAll("table.sortable").length + " sortable tables, " +
    document.querySelectorAll("svg.chart").length + " charts";
})();
