/* Charts of the repository page, drawn with uPlot from /repo/NAME/data.json. */
(function () {
  "use strict";
  function bytes(v) {
    if (v == null) return "";
    var u = ["B", "KiB", "MiB", "GiB", "TiB"], i = 0;
    while (Math.abs(v) >= 1024 && i < u.length - 1) { v /= 1024; i++; }
    return (i ? v.toFixed(1) : v.toFixed(0)) + " " + u[i];
  }
  function secs(v) {
    return v == null ? "" : v < 1 ? v.toFixed(3) + " s" : v < 60 ? v.toFixed(1) + " s" : (v / 60).toFixed(1) + " min";
  }
  function timeRange(xs) {  // a lone point (or a few close ones) in a window of an hour
    var lo = xs[0], hi = xs[xs.length - 1];
    if (hi - lo < 3600) { lo -= 1800; hi += 1800; }
    return function () { return [lo, hi]; };
  }
  var colours = ["#0969da", "#1a7f37", "#cf222e", "#9a6700", "#8250df", "#bf3989", "#1b7c83", "#57606a"];

  function chart(el, series, data, fmt, opts) {
    if (!data[0].length) {
      el.innerHTML = '<p class="empty">no data yet</p>';
      return;
    }
    var width = Math.max(el.clientWidth, 240);
    var cfg = {
      width: width, height: 220,
      scales: { x: { time: true, range: timeRange(data[0]) } },
      legend: { show: series.length > 1 },
      series: [{}].concat(series.map(function (s, i) {
        return Object.assign({ label: s.label, stroke: colours[i % colours.length], width: 2,
                               points: { show: true, size: 5 }, spanGaps: true,
                               value: function (u, v) { return fmt(v); } }, s.extra || {});
      })),
      axes: [{}, { size: 82, values: function (u, vals) { return vals.map(fmt); } }]
    };
    Object.assign(cfg, opts || {});
    var plot = new uPlot(cfg, data, el);
    window.addEventListener("resize", function () {
      plot.setSize({ width: Math.max(el.clientWidth, 240), height: 220 });
    });
    el.dataset.drawn = "1";
  }

  function aligned(byName) {
    var names = Object.keys(byName).sort(), xs = {}, i;
    names.forEach(function (n) { byName[n].forEach(function (p) { xs[p[0]] = 1; }); });
    var x = Object.keys(xs).map(Number).sort(function (a, b) { return a - b; });
    var index = {};
    x.forEach(function (t, j) { index[t] = j; });
    var data = [x];
    names.forEach(function (n) {
      var col = new Array(x.length).fill(null);
      byName[n].forEach(function (p) { col[index[p[0]]] = p[1]; });
      data.push(col);
    });
    return { names: names, data: data };
  }

  function draw(root, d) {
    root.querySelectorAll("[data-chart]").forEach(function (el) {
      var kind = el.dataset.chart;
      if (kind === "sizes") {
        chart(el, [{ label: "stored bytes" }], [d.sizes.map(function (p) { return p[0]; }),
                                                 d.sizes.map(function (p) { return p[1]; })], bytes);
      } else if (kind === "snapshots") {
        var a = aligned(d.snapshots);
        chart(el, a.names.map(function (n) { return { label: n }; }), a.data, bytes);
      } else if (kind === "new_per_day") {
        var bars = uPlot.paths && uPlot.paths.bars ? { paths: uPlot.paths.bars({ size: [0.6, 40] }),
                                                       points: { show: false }, fill: "#0969da55" } : {};
        chart(el, [{ label: "new data", extra: bars }], [d.new_per_day.map(function (p) { return p[0]; }),
                                                          d.new_per_day.map(function (p) { return p[1]; })], bytes);
      } else if (kind === "checks") {
        chart(el, [{ label: "duration" }], [d.checks.map(function (p) { return p[0]; }),
                                             d.checks.map(function (p) { return p[1]; })], secs);
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll(".charts[data-src]").forEach(function (root) {
      fetch(root.dataset.src, { credentials: "same-origin" })
        .then(function (r) { if (!r.ok) throw new Error(r.status); return r.json(); })
        .then(function (d) { draw(root, d); root.dataset.ready = "1"; })
        .catch(function (e) { root.dataset.error = String(e); });
    });
  });
})();
