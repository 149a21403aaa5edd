// First script of the page: every JavaScript error is kept and shown in #report-errors, so a broken report
// says so on screen (and a headless browser's DOM dump shows it to the tests).
window.reportErrors = [];
function reportError(message) {
  window.reportErrors.push(message);
  var box = document.getElementById("report-errors");
  if (box) { box.hidden = false; box.textContent = window.reportErrors.join("\n"); }
}
window.addEventListener("error", function (e) {
  reportError("error: " + e.message + " (" + (e.filename || "inline") + ":" + e.lineno + ")");
});
document.addEventListener("securitypolicyviolation", function (e) {
  reportError("blocked load of " + e.blockedURI + " (" + e.violatedDirective + "): the report must be self-contained");
});
window.addEventListener("unhandledrejection", function (e) { reportError("unhandled rejection: " + e.reason); });
document.addEventListener("DOMContentLoaded", function () { if (window.reportErrors.length) reportError("(earlier errors)"); });
