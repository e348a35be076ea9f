// Behaviour every page may use, kept out of the HTML so the Content-Security-Policy can refuse inline
// scripts and event-handler attributes.
(function () {
  "use strict";

  // <select data-submit-on-change>: choosing an option submits its form (a button in <noscript> does
  // the same without JavaScript).
  document.addEventListener("change", function (event) {
    var target = event.target;
    if (target instanceof HTMLSelectElement && target.hasAttribute("data-submit-on-change") && target.form) {
      target.form.requestSubmit ? target.form.requestSubmit() : target.form.submit();
    }
  });
})();
