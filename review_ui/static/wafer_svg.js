// Row/column on hover for large wafer maps drawn as paths (see review_ui/wafer_svg.py):
// the <svg> keeps one character per cell in data-cells; this shows it beside the pointer.
(function () {
  "use strict";
  var WORDS = { p: "pass", f: "fail", o: "out of wafer" };
  var tip = null;

  function describe(svg, row, col) {
    var ch = svg.dataset.cells.charAt(row * Number(svg.dataset.cols) + col);
    if (svg.dataset.kind === "rate") {
      return ch === "-" ? null : ch * 10 + "-" + (Number(ch) + 1) * 10 + "% fail";
    }
    return WORDS[ch] || null;
  }

  function move(event) {
    var svg = event.currentTarget;
    var box = svg.getBoundingClientRect();
    var rows = Number(svg.dataset.rows);
    var cols = Number(svg.dataset.cols);
    var view = svg.viewBox.baseVal;
    // Die units per pixel follow the viewBox, which may include a legend under the map.
    var col = Math.floor(((event.clientX - box.left) / box.width) * view.width);
    var row = Math.floor(((event.clientY - box.top) / box.height) * view.height);
    var text = row >= 0 && row < rows && col >= 0 && col < cols ? describe(svg, row, col) : null;
    if (!text) {
      tip.hidden = true;
      return;
    }
    tip.textContent = "row " + row + ", col " + col + ": " + text;
    tip.style.left = event.pageX + 12 + "px";
    tip.style.top = event.pageY + 12 + "px";
    tip.hidden = false;
  }

  function init() {
    tip = document.createElement("div");
    tip.className = "wafer-tip";
    tip.hidden = true;
    // Styled here so the script works on any page, whatever its stylesheet.
    tip.style.cssText =
      "position:absolute;z-index:10;pointer-events:none;padding:2px 6px;" +
      "background:#222;color:#fff;font:13px/1.4 sans-serif;border-radius:3px";
    document.body.appendChild(tip);
    document.querySelectorAll("svg.wafer-hover").forEach(function (svg) {
      svg.addEventListener("mousemove", move);
      svg.addEventListener("mouseleave", function () { tip.hidden = true; });
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
