// The daily usage chart of /settings/usage. Data comes from the page (json_script "chart-data");
// plotly.js is served by our own /vendor/ URL. Re-draws when HTMX swaps in fresh numbers, keeping the
// chosen meter and view (daily or cumulative).
(function () {
  "use strict";

  var state = { view: "daily", meter: null };

  function chartData(holder) {
    var source = document.getElementById(holder.dataset.usageChart);
    return source ? JSON.parse(source.textContent) : { meters: [] };
  }

  function currentMeter(data) {
    var wanted = state.meter || data.defaultMeter;
    for (var i = 0; i < data.meters.length; i++) {
      if (data.meters[i].key === wanted) return data.meters[i];
    }
    return data.meters[0];
  }

  function traces(meter) {
    var cumulative = state.view === "cumulative";
    var list = [
      {
        type: "bar",
        name: meter.name,
        x: meter.days,
        y: cumulative ? meter.cumulative : meter.quantity,
        hovertext: cumulative ? meter.cumulativeHover : meter.hover,
        hovertemplate: "%{hovertext}<extra></extra>",
        marker: { color: "#2563eb" },
      },
    ];
    if (!cumulative && meter.dailyPace) {
      list.push({
        type: "scatter",
        mode: "lines",
        name: "Even pace within the included quota",
        x: meter.days,
        y: meter.days.map(function () { return meter.dailyPace; }),
        hoverinfo: "skip",
        line: { color: "#9ca3af", dash: "dot", width: 1.5 },
      });
    }
    return list;
  }

  function layout(meter) {
    var shapes = [];
    var annotations = [];
    if (state.view === "cumulative" && meter.included) {
      // The included quota as a horizontal line across the whole chart.
      shapes.push({
        type: "line", xref: "paper", x0: 0, x1: 1, yref: "y", y0: meter.included, y1: meter.included,
        line: { color: "#d97706", width: 2, dash: "dash" },
      });
      annotations.push({
        xref: "paper", x: 0, xanchor: "left", yref: "y", y: meter.included, yanchor: "bottom",
        text: "Included quota", showarrow: false, font: { color: "#b45309", size: 11 },
      });
    }
    return {
      margin: { l: 56, r: 12, t: 10, b: 40 },
      bargap: 0.25,
      showlegend: false,
      hovermode: "closest",
      xaxis: { type: "date", tickformat: "%b %d", fixedrange: true },
      yaxis: { title: { text: meter.unit }, rangemode: "tozero", fixedrange: true, separatethousands: true },
      shapes: shapes,
      annotations: annotations,
      paper_bgcolor: "rgba(0,0,0,0)",
      plot_bgcolor: "rgba(0,0,0,0)",
      font: { family: "system-ui, sans-serif", size: 12 },
    };
  }

  function draw(section) {
    var holder = section.querySelector("[data-usage-chart]");
    if (!holder || !window.Plotly) return;
    var data = chartData(holder);
    if (!data.meters.length) {
      holder.innerHTML = '<p class="muted chart-fallback">No metered usage to chart.</p>';
      return;
    }
    var meter = currentMeter(data);
    state.meter = meter.key;
    var fallback = holder.querySelector(".chart-fallback");
    if (fallback) fallback.remove();
    window.Plotly.react(holder, traces(meter), layout(meter), { displayModeBar: false, responsive: true });
  }

  function init(root) {
    var section = root.id === "chart" ? root : root.querySelector && root.querySelector("#chart");
    if (!section) return;
    var controls = section.querySelector("[data-chart-controls]");
    if (controls) controls.hidden = false;
    section.querySelectorAll("[data-chart-view]").forEach(function (button) {
      button.setAttribute("aria-pressed", String(button.dataset.chartView === state.view));
      button.addEventListener("click", function () {
        state.view = button.dataset.chartView;
        section.querySelectorAll("[data-chart-view]").forEach(function (other) {
          other.setAttribute("aria-pressed", String(other === button));
        });
        draw(section);
      });
    });
    var select = section.querySelector("[data-chart-meter]");
    if (select) {
      var data = chartData(section.querySelector("[data-usage-chart]"));
      select.value = state.meter || data.defaultMeter || select.value;
      select.addEventListener("change", function () {
        state.meter = select.value;
        draw(section);
      });
    }
    draw(section);
  }

  if (window.htmx) {
    // Called for the page on load and for every region HTMX swaps in.
    window.htmx.onLoad(init);
  } else {
    document.addEventListener("DOMContentLoaded", function () { init(document.body); });
  }
})();
