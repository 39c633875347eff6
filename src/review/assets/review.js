// cliplabel review page: keyboard-first correction of label rows, state in localStorage,
// export of decisions as the `path,label` CSV that `cliplabel fit --train-csv` reads.
// No dependencies, no network: works from file:// and behind any static host.
(function () {
  "use strict";
  var DATA = window.CLIPLABEL_REVIEW;
  var PAGE = 48;
  var NONE = "__none__";
  var items = DATA.items;
  var storeKey = "cliplabel-review:" + DATA.key;
  var state = load();
  var view = [];
  var cur = 0;

  function load() {
    try {
      var s = JSON.parse(localStorage.getItem(storeKey) || "null");
      if (s && s.decisions && s.undo) return s;
    } catch (e) { /* a corrupt entry starts afresh */ }
    return { decisions: {}, undo: [] };
  }
  function save() {
    try { localStorage.setItem(storeKey, JSON.stringify(state)); } catch (e) { /* storage full */ }
  }

  var $ = function (id) { return document.getElementById(id); };
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function pct(s) { return (100 * s).toFixed(1) + "%"; }
  function predicted(it) { return it.top.length ? it.top[0][0] : it.label; }

  // ---- view: filter + sort -------------------------------------------------------------
  function buildView() {
    var cls = $("filter-class").value;
    var sort = $("sort").value;
    var open = $("only-open").checked;
    view = [];
    for (var i = 0; i < items.length; i++) {
      var it = items[i];
      if (cls && predicted(it) !== cls) continue;
      if (open && state.decisions[it.id]) continue;
      view.push(i);
    }
    var conf = function (i) { return items[i].score == null ? -1 : items[i].score; };
    if (sort === "review") {
      view.sort(function (a, b) {
        var d = (items[b].abstained ? 1 : 0) - (items[a].abstained ? 1 : 0);
        return d || conf(a) - conf(b) || a - b;
      });
    } else if (sort === "confident") {
      view.sort(function (a, b) { return conf(b) - conf(a) || a - b; });
    } else {
      view.sort(function (a, b) { return items[a].path < items[b].path ? -1 : items[a].path > items[b].path ? 1 : 0; });
    }
    if (cur >= view.length) cur = Math.max(0, view.length - 1);
  }

  // ---- rendering ---------------------------------------------------------------------
  function card(i) {
    var it = items[i];
    var d = state.decisions[it.id];
    var c = el("article", "card" + (it.abstained ? " abstained" : "") + (d ? " decided" : ""));
    c.dataset.id = it.id;
    c.dataset.path = it.path;
    var th = el("div", "thumb");
    if (it.thumb) {
      var img = el("img");
      img.loading = "lazy";
      img.decoding = "async";
      img.alt = it.path;
      img.src = it.thumb;
      th.appendChild(img);
    } else {
      th.appendChild(el("div", "missing", "no thumbnail: " + (it.thumb_error || "unreadable image")));
    }
    th.appendChild(el("span", "badge" + (it.abstained ? " unknown" : ""),
      it.abstained ? "unknown \u00b7 " + predicted(it) + "?" : it.label));
    if (d) {
      var txt = d.kind === "none" ? "not any class" : (d.kind === "accept" ? "\u2713 " : "\u2192 ") + d.label;
      th.appendChild(el("span", "decision " + d.kind, txt));
    }
    c.appendChild(th);
    var body = el("div", "body");
    var parts = it.path.split(/[\\/]/);
    var nm = el("div", "name", parts.slice(-2).join("/"));
    nm.title = it.path;
    body.appendChild(nm);
    var ul = el("ul", "tops");
    it.top.forEach(function (t, k) {
      var li = el("li");
      li.appendChild(el("span", "key", k < 9 ? String(k + 1) : ""));
      var lab = el("span", "lab");
      var bar = el("i");
      bar.style.width = Math.max(0, Math.min(1, t[1])) * 100 + "%";
      lab.appendChild(bar);
      lab.appendChild(el("b", "", t[0]));
      lab.title = t[0];
      li.appendChild(lab);
      li.appendChild(el("span", "sc", pct(t[1])));
      ul.appendChild(li);
    });
    body.appendChild(ul);
    if (it.set && it.set.length) {
      var s = el("div", "set");
      s.appendChild(el("span", "", it.set.length === 1 ? "set:" : "one of:"));
      it.set.forEach(function (name) { s.appendChild(el("span", "chip", name)); });
      body.appendChild(s);
    }
    c.appendChild(body);
    c.addEventListener("click", function () { cur = view.indexOf(i); highlight(); });
    return c;
  }

  function pageOf(pos) { return Math.floor(pos / PAGE); }
  function render() {
    var grid = $("grid");
    grid.textContent = "";
    var p = pageOf(cur);
    var pages = Math.max(1, Math.ceil(view.length / PAGE));
    var frag = document.createDocumentFragment();
    for (var k = p * PAGE; k < Math.min(view.length, (p + 1) * PAGE); k++) frag.appendChild(card(view[k]));
    if (!view.length) frag.appendChild(el("div", "empty", "Nothing to show with these filters."));
    grid.appendChild(frag);
    $("page-text").textContent = "page " + (p + 1) + " of " + pages + " \u00b7 " + view.length + " images";
    $("prev").disabled = p === 0;
    $("next").disabled = p >= pages - 1;
    highlight();
    progress();
  }
  function highlight() {
    var cards = $("grid").children;
    var off = cur - pageOf(cur) * PAGE;
    for (var k = 0; k < cards.length; k++) cards[k].classList.toggle("current", k === off);
    var c = cards[off];
    if (c && c.scrollIntoView) c.scrollIntoView({ block: "nearest" });
  }
  function rerenderCard(i) {
    var pos = view.indexOf(i);
    if (pageOf(pos) !== pageOf(cur)) return;
    var old = $("grid").children[pos - pageOf(cur) * PAGE];
    if (old) old.replaceWith(card(i));
  }
  function progress() {
    var n = Object.keys(state.decisions).length;
    $("progress-text").textContent = n + " / " + items.length + " reviewed";
    $("progress-fill").style.width = (items.length ? (100 * n) / items.length : 0) + "%";
  }

  // ---- decisions ---------------------------------------------------------------------
  function decide(kind, label) {
    if (!view.length) return;
    var i = view[cur];
    var id = items[i].id;
    state.undo.push({ id: id, prev: state.decisions[id] || null, pos: cur });
    state.decisions[id] = { kind: kind, label: label };
    save();
    if ($("only-open").checked) {
      buildView();
      render();
      return;
    }
    rerenderCard(i);
    progress();
    move(1);
  }
  function undo() {
    var u = state.undo.pop();
    if (!u) return;
    if (u.prev) state.decisions[u.id] = u.prev; else delete state.decisions[u.id];
    save();
    buildView();
    var idx = -1;
    for (var k = 0; k < view.length; k++) if (items[view[k]].id === u.id) idx = k;
    cur = idx >= 0 ? idx : Math.min(u.pos, Math.max(0, view.length - 1));
    render();
  }
  function move(delta) {
    if (!view.length) return;
    var before = pageOf(cur);
    cur = Math.max(0, Math.min(view.length - 1, cur + delta));
    if (pageOf(cur) !== before) render(); else highlight();
  }
  function matchClass(text) {
    var t = text.trim().toLowerCase();
    if (!t) return null;
    var cls = DATA.classes;
    var k;
    for (k = 0; k < cls.length; k++) if (cls[k].toLowerCase() === t) return cls[k];
    for (k = 0; k < cls.length; k++) if (cls[k].toLowerCase().indexOf(t) === 0) return cls[k];
    for (k = 0; k < cls.length; k++) if (cls[k].toLowerCase().indexOf(t) >= 0) return cls[k];
    return null;
  }
  function openTypeahead() {
    if (!view.length) return;
    $("typeahead").hidden = false;
    var input = $("typeahead-input");
    input.value = "";
    input.focus();
  }
  function closeTypeahead() { $("typeahead").hidden = true; $("typeahead-input").blur(); }

  // ---- export ------------------------------------------------------------------------
  function csvField(s) { return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; }
  function exportCsv() {
    var lines = ["path,label"];
    items.forEach(function (it) {
      var d = state.decisions[it.id];
      if (d && d.kind !== "none") lines.push(csvField(it.file) + "," + csvField(d.label));
    });
    return lines.join("\n") + "\n";
  }
  function download() {
    var blob = new Blob([exportCsv()], { type: "text/csv" });
    var a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = "reviewed.csv";
    document.body.appendChild(a);
    a.click();
    setTimeout(function () { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
  }

  // ---- wiring ------------------------------------------------------------------------
  function init() {
    var counts = {};
    items.forEach(function (it) { var p = predicted(it); counts[p] = (counts[p] || 0) + 1; });
    var sel = $("filter-class");
    Object.keys(counts).sort().forEach(function (c) {
      var o = el("option", "", c + " (" + counts[c] + ")");
      o.value = c;
      sel.appendChild(o);
    });
    var dl = $("class-list");
    DATA.classes.forEach(function (c) { var o = el("option"); o.value = c; dl.appendChild(o); });
    ["filter-class", "sort", "only-open"].forEach(function (id) {
      $(id).addEventListener("change", function () { cur = 0; buildView(); render(); $(id).blur(); });
    });
    $("undo").addEventListener("click", undo);
    $("export").addEventListener("click", download);
    $("prev").addEventListener("click", function () { move(-PAGE); render(); });
    $("next").addEventListener("click", function () { move(PAGE); render(); });
    $("typeahead-input").addEventListener("keydown", function (e) {
      if (e.key === "Enter") {
        var c = matchClass(this.value);
        if (c) { closeTypeahead(); decide("pick", c); }
        e.preventDefault();
      } else if (e.key === "Escape") {
        closeTypeahead();
        e.preventDefault();
      }
      e.stopPropagation();
    });
    document.addEventListener("keydown", function (e) {
      if (!$("typeahead").hidden || e.target.tagName === "SELECT") return;
      var it = view.length ? items[view[cur]] : null;
      if ((e.ctrlKey || e.metaKey) && e.key === "z") { undo(); e.preventDefault(); return; }
      if (e.ctrlKey || e.metaKey || e.altKey) return;
      var k = e.key;
      if (k === "ArrowRight" || k === "ArrowDown" || k === "j") move(1);
      else if (k === "ArrowLeft" || k === "ArrowUp" || k === "k") move(-1);
      else if (k === "PageDown") { move(PAGE); render(); }
      else if (k === "PageUp") { move(-PAGE); render(); }
      else if (k === "Enter" || k === "a") { if (it) decide("accept", predicted(it)); }
      else if (/^[1-9]$/.test(k)) { var t = it && it.top[+k - 1]; if (t) decide(k === "1" ? "accept" : "pick", t[0]); }
      else if (k === "/" || k === "t") openTypeahead();
      else if (k === "x" || k === "0") decide("none", NONE);
      else if (k === "u" || k === "Backspace") undo();
      else return;
      e.preventDefault();
    });
    $("foot").textContent = DATA.title + " \u00b7 " + items.length + " images \u00b7 " +
      DATA.classes.length + " classes \u00b7 decisions are kept in this browser (localStorage)";
    buildView();
    render();
  }

  window.cliplabelReview = {
    exportCsv: exportCsv,
    decisions: function () { return state.decisions; },
    order: function () { return view.map(function (i) { return items[i].id; }); },
  };
  init();
})();
