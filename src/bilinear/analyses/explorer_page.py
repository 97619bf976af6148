"""The explorer's page (analysis ``explorer``): one HTML file with its style, script and data inline.

No library, no network: the script below is plain JavaScript written for this page. It reads the JSON embedded in
``<script type="application/json" id="data">`` and draws eigenvectors on canvases and charts as SVG. Element ids used
by tests/test_explorer.py: class-btn-<c>, class-title, k-slider, k-label, k-acc, k-pred, logit-bars, sample-btn-<j>,
explain-title, feat-btn-<id>, feature-title, contexts, interaction-table, neighbours.
"""

from __future__ import annotations

CSS = r"""
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 8px 20px; color: #222; }
h1 { font-size: 20px; margin: 8px 0 2px; } h2 { font-size: 17px; border-bottom: 1px solid #ccc; margin-top: 22px; }
h3 { font-size: 15px; margin: 10px 0 4px; } h4 { font-size: 13px; margin: 10px 0 4px; color: #444; }
.note { color: #555; font-size: 12.5px; margin: 2px 0 6px; }
.buttons { display: flex; flex-wrap: wrap; gap: 4px; margin: 6px 0; }
button { font: inherit; padding: 3px 9px; border: 1px solid #999; background: #f6f6f6; border-radius: 4px; cursor: pointer; }
button.active { background: #2b6cb0; color: #fff; border-color: #2b6cb0; }
.row { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.vecs { display: flex; flex-wrap: wrap; gap: 8px; }
figure { margin: 0; text-align: center; } figcaption { font-size: 11.5px; color: #333; max-width: 130px; }
canvas.vec, canvas.px { image-rendering: pixelated; border: 1px solid #ccc; display: block; }
.sample-btn { display: flex; flex-direction: column; align-items: center; padding: 2px; font-size: 11px; }
.explained { border-top: 1px dashed #ccc; padding-top: 4px; }
.context { font-family: ui-monospace, monospace; font-size: 12.5px; margin: 2px 0; white-space: pre-wrap; }
.tok { border-radius: 2px; } .tok.at { outline: 1.5px solid #c00; font-weight: bold; }
.act { color: #666; margin-left: 8px; font-size: 11px; }
table.inter { border-collapse: collapse; font-size: 11px; }
table.inter td, table.inter th { border: 1px solid #ddd; padding: 2px 4px; text-align: right; }
table.inter td.lbl { text-align: left; font-family: ui-monospace, monospace; white-space: nowrap; max-width: 320px;
  overflow: hidden; text-overflow: ellipsis; }
.layout { display: grid; grid-template-columns: 170px 1fr; gap: 16px; }
#feature-list { max-height: 80vh; overflow-y: auto; flex-direction: column; flex-wrap: nowrap; }
#feature-list button { text-align: left; }
.eig { margin: 4px 0 8px; } .eig li { font-family: ui-monospace, monospace; font-size: 12px; }
a.feat { color: #2b6cb0; cursor: pointer; text-decoration: underline; }
svg text { font-size: 10px; fill: #333; }
"""

JS = r"""
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const SVGNS = "http://www.w3.org/2000/svg";

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined) e.append(kid);
  return e;
}
function svg(tag, attrs, ...kids) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined) e.append(kid);
  return e;
}
const fmt = (x, d = 3) => (x === null || x === undefined || Number.isNaN(x)) ? "–" : Number(x).toPrecision(d);
const pct = x => (100 * x).toFixed(2) + "%";
const argmax = a => a.reduce((best, v, i) => (v > a[best] ? i : best), 0);
const sum = a => a.reduce((s, v) => s + v, 0);

// blue - white - red, the figures' RdBu_r ends: red is positive
function diverging(t) {
  const a = Math.min(1, Math.abs(t)), f = Math.round(255 * (1 - a));
  return t >= 0 ? [255, f, f] : [f, f, 255];
}
function canvasOf(shape, scale, cls, pixel) {
  const [c, h, w] = shape;
  const cv = el("canvas", {width: w, height: h, class: cls});
  cv.style.width = (w * scale) + "px";
  cv.style.height = (h * scale) + "px";
  const ctx = cv.getContext("2d");
  const img = ctx.createImageData(w, h);
  for (let p = 0; p < h * w; p++) {
    const rgb = pixel(p, c, h * w);
    img.data[4 * p] = rgb[0]; img.data[4 * p + 1] = rgb[1]; img.data[4 * p + 2] = rgb[2]; img.data[4 * p + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
  return cv;
}
// an eigenvector quantised to [-127, 127] (normalised by its max |value|): diverging for grey images, per channel else
function drawVector(vec, shape, scale) {
  return canvasOf(shape, scale, "vec", (p, c, n) => c === 1 ? diverging(vec[p] / 127)
    : [0, 1, 2].map(ch => Math.round(255 * Math.min(1, Math.max(0, vec[ch * n + p] / 254 + 0.5)))));
}
function drawPixels(px, shape, scale) {
  return canvasOf(shape, scale, "px", (p, c, n) => c === 1 ? [px[p], px[p], px[p]] : [px[p], px[n + p], px[2 * n + p]]);
}

// a bar chart: values (n,), opts {labels, titles, colors, highlight, width, height, id}
function bars(values, opts) {
  const W = opts.width || 380, H = opts.height || 130, n = values.length, top = 6, bottom = H - (opts.labels ? 16 : 4);
  const maxPos = Math.max(0, ...values), maxNeg = Math.max(0, ...values.map(v => -v));
  const span = (maxPos + maxNeg) || 1, s = (bottom - top) / span, y0 = top + maxPos * s, bw = W / Math.max(1, n);
  const root = svg("svg", {width: W, height: H, class: "bars", ...(opts.id ? {id: opts.id} : {})});
  values.forEach((v, i) => {
    const color = opts.colors ? opts.colors[i] : (i === opts.highlight ? "#dd8452" : (v >= 0 ? "#c44e52" : "#4c72b0"));
    root.append(svg("rect", {x: i * bw + 1, width: Math.max(1, bw - 2), y: v >= 0 ? y0 - v * s : y0,
                             height: Math.max(0.5, Math.abs(v) * s), fill: color, "data-value": v},
                    svg("title", {}, opts.titles ? opts.titles[i] : String(v))));
    if (opts.labels) root.append(svg("text", {x: i * bw + bw / 2, y: H - 3, "text-anchor": "middle"}, opts.labels[i]));
  });
  root.append(svg("line", {x1: 0, x2: W, y1: y0, y2: y0, stroke: "#333", "stroke-width": 0.6}));
  return root;
}
// y (n+1,) over x = 0..n on a log(1 + x) axis, with a marker at x = at
function curve(y, at, opts) {
  const W = opts.width || 380, H = opts.height || 130, n = y.length - 1, L = 34, B = H - 16;
  const lo = opts.lo !== undefined ? opts.lo : Math.min(...y), hi = opts.hi !== undefined ? opts.hi : Math.max(...y);
  const X = k => L + (W - L - 6) * Math.log1p(k) / Math.log1p(Math.max(1, n));
  const Y = v => 4 + (B - 4) * (1 - (v - lo) / ((hi - lo) || 1));
  const root = svg("svg", {width: W, height: H, class: "curve"});
  root.append(svg("polyline", {points: y.map((v, k) => `${X(k)},${Y(v)}`).join(" "), fill: "none", stroke: "#2b6cb0",
                               "stroke-width": 1.5}));
  root.append(svg("circle", {cx: X(at), cy: Y(y[at]), r: 4, fill: "#dd8452", id: opts.markerId || ""}));
  root.append(svg("line", {x1: L, x2: L, y1: 4, y2: B, stroke: "#999"}), svg("line", {x1: L, x2: W, y1: B, y2: B, stroke: "#999"}));
  for (const k of [0, 1, 3, 10, 30, 100, 300, 1000].filter(k => X(n) - X(k) > 34).concat([n]))
    root.append(svg("text", {x: X(k), y: H - 3, "text-anchor": k === n ? "end" : "middle"}, String(k)));
  root.append(svg("text", {x: 2, y: 12}, opts.hiLabel || fmt(hi)), svg("text", {x: 2, y: B}, opts.loLabel || fmt(lo)));
  return root;
}
function setActive(selector, node) {
  document.querySelectorAll(selector).forEach(b => b.classList.toggle("active", b === node));
}

// ---------------------------------------------------------------------------------------------- image runs
function imageApp(app) {
  const S = {cls: 0, k: Math.min(10, D.d_hidden), sample: 0};
  const shape = D.image_shape, names = D.classes, r = D.d_hidden;
  document.getElementById("header").append(
    el("h1", {text: `Bilinear explorer — ${D.run}`}),
    el("p", {class: "note", text: `${D.task}, d_hidden ${r}, ${names.length} classes; test accuracy ${pct(D.model_accuracy)} ` +
      `on ${D.n_test} test images. Every logit is exactly Σᵢ λᵢ (vᵢ·z)² over the class's eigenpairs (checked: relative ` +
      `error ${fmt(D.exactness_rel_error, 2)}). Red is positive, blue negative; each eigenvector is scaled by its max |value|.`}));

  const classPanel = el("div", {id: "class-panel"});
  app.append(el("section", {id: "eigen-section"},
    el("h2", {text: "Eigenvectors per class (E1, E2)"}),
    el("div", {class: "buttons", id: "class-buttons"}, names.map((name, c) =>
      el("button", {class: "class-btn", id: `class-btn-${c}`, onclick: () => { S.cls = c; renderClass(); }}, name))),
    classPanel));

  const kLabel = el("div", {id: "k-label"}), kAcc = el("div", {id: "k-acc"}), kPred = el("div", {id: "k-pred"});
  const logitBox = el("div", {id: "logit-box"}), curveBox = el("div", {id: "curve-box"});
  const slider = el("input", {type: "range", id: "k-slider", min: 0, max: r, step: 1, value: S.k, style: "width: 420px",
                              oninput: e => { S.k = +e.target.value; renderTruncation(); }});
  const samples = el("div", {class: "buttons", id: "sample-buttons"}, D.samples.map((s, j) =>
    el("button", {class: "sample-btn", id: `sample-btn-${j}`, title: `test image ${s.index}, label ${names[s.label]}`,
                  onclick: () => { S.sample = j; renderTruncation(); renderExplain(); }},
       drawPixels(s.pixels, shape, 1.4), el("span", {text: `#${s.index}`}))));
  app.append(el("section", {id: "truncation-section"},
    el("h2", {text: "Truncation: the top-k eigenpairs per class (E4, C8)"}),
    el("p", {class: "note", text: "Keep the k eigenpairs of largest |λ| in every class and classify with " +
      "argmax_c Σ_{i≤k} λ_ci (v_ci·z)². Pick a test image below; its logits at k are drawn on the right."}),
    el("h4", {text: "test images (click to choose; the first has the smallest top-2 logit margin)"}), samples,
    slider, el("div", {class: "row"}, el("div", {}, kLabel, kAcc, curveBox), el("div", {}, kPred, logitBox))));

  const explainPanel = el("div", {id: "explain-panel"});
  app.append(el("section", {id: "explain-section"},
    el("h2", {text: "Explaining one prediction (E8)"}),
    el("p", {class: "note", text: "For the chosen test image: each top class's logit is the sum of its eigenvector " +
      "activations λᵢ (vᵢ·z)², drawn sorted (largest positive and negative); the eigenvectors are the class's top ones by λ " +
      "and the ones that push this input most either way."}), explainPanel));

  function figure(v, caption) {
    return el("figure", {}, drawVector(D.vectors[v.vec], shape, 4), el("figcaption", {class: "eig-caption", text: caption}));
  }
  function renderClass() {
    const cd = D.class_data[S.cls];
    setActive(".class-btn", document.getElementById(`class-btn-${S.cls}`));
    const spec = cd.spectrum_positive.concat(cd.spectrum_negative);
    classPanel.replaceChildren(
      el("h3", {id: "class-title", text: `class ${cd.name}: top positive and top negative eigenvectors`}),
      el("div", {class: "row"},
        el("div", {}, el("h4", {text: "positive (λ > 0)"}),
           el("div", {class: "vecs", id: "pos-vecs"}, cd.positive.map(v => figure(v, `#${v.index + 1} λ=${fmt(v.lambda)}`)))),
        el("div", {}, el("h4", {text: "negative (λ < 0)"}),
           el("div", {class: "vecs", id: "neg-vecs"}, cd.negative.map(v => figure(v, `#${v.index + 1} λ=${fmt(v.lambda)}`)))),
        el("div", {}, el("h4", {text: `largest ${cd.spectrum_positive.length} positive and ${cd.spectrum_negative.length} ` +
                                      `negative eigenvalues of ${r}`}),
           bars(spec, {id: "spectrum-bars", titles: spec.map(v => `λ = ${fmt(v, 4)}`)}))));
  }
  function renderTruncation() {
    const s = D.samples[S.sample];
    setActive(".sample-btn", document.getElementById(`sample-btn-${S.sample}`));
    const logits = s.acts.map(row => sum(row.slice(0, S.k)));
    const pred = argmax(logits);
    kLabel.textContent = `k = ${S.k} of ${r}` + (S.k === r ? " (all eigenpairs: the model itself)" : "");
    kAcc.textContent = `test accuracy at k = ${S.k}: ${pct(D.accuracy[S.k])} (all ${r}: ${pct(D.accuracy[r])})`;
    kPred.textContent = `test image #${s.index} (label ${names[s.label]}): predicted ${names[pred]} at k = ${S.k}` +
      (S.k === r ? ` (model: ${names[argmax(s.logits)]})` : "");
    logitBox.replaceChildren(bars(logits, {id: "logit-bars", labels: names, highlight: pred,
                                           titles: logits.map((v, c) => `${names[c]}: ${v.toPrecision(6)}`)}));
    curveBox.replaceChildren(curve(D.accuracy, S.k, {lo: Math.min(...D.accuracy), hi: 1, markerId: "k-marker",
                                                     hiLabel: "100%", loLabel: pct(Math.min(...D.accuracy))}));
  }
  function renderExplain() {
    const s = D.samples[S.sample], top = argmax(s.logits);
    explainPanel.replaceChildren(
      el("h3", {id: "explain-title", text: `why the model predicts ${names[top]} for test image #${s.index} (label ${names[s.label]})`}),
      el("div", {class: "row"}, drawPixels(s.pixels, shape, 4),
         bars(s.logits, {id: "explain-logits", labels: names, highlight: top, titles: s.logits.map((v, c) => `${names[c]}: ${fmt(v, 5)}`)})),
      ...s.explained.map(ex => el("div", {class: "explained"},
        el("h4", {text: `class ${names[ex.class]}: logit ${fmt(ex.logit, 4)} = ${fmt(ex.sum_positive, 4)} (positive activations) ` +
                        `${fmt(ex.sum_negative, 4)} (negative)`}),
        el("div", {class: "row"},
          bars(ex.bars.map(b => b.act), {titles: ex.bars.map(b => `eigenvector #${b.index + 1}: λ=${fmt(b.lambda)}, activation ${fmt(b.act, 4)}`)}),
          el("div", {class: "vecs"}, ex.vectors.map(v => figure(v, `${v.what}: #${v.index + 1}, λ=${fmt(v.lambda)}, act ${fmt(v.act)}`)))))));
  }
  renderClass(); renderTruncation(); renderExplain();
}

// ------------------------------------------------------------------------------------------------ LM runs
function lmApp(app) {
  const byId = new Map(D.features.map(f => [f.id, f]));
  document.getElementById("header").append(
    el("h1", {text: `Bilinear explorer — ${D.run}, layer ${D.layer}`}),
    el("p", {class: "note", text: `${D.task}; input SAE ${D.input_sae.name} (${D.input_sae.n} features), output SAE ` +
      `${D.output_sae.name} (${D.output_sae.n} features); contexts from ${D.n_sequences} held-out windows. An output feature a ` +
      `reads e_a·MLP(x) = xᵀ Q_a x; Q̃_a = D_inᵀ Q_a D_in is the same in the input SAE's basis (checked on real inputs: relative ` +
      `error ${fmt(D.exactness_rel_error, 2)}).`}));
  const link = id => byId.has(id) ? el("a", {class: "feat", onclick: () => open(id)}, String(id)) : el("span", {text: String(id)});

  if (D.negation) {
    const n = D.negation;
    app.append(el("section", {id: "negation-section"}, el("h2", {text: "The negation pair (E11, C12)"}),
      el("p", {text: `output features ${n.pair.join(" and ")}: decoder cosine ${fmt(n.decoder_cosine, 3)} (paper: ${fmt(n.paper_decoder_cosine, 3)}), ` +
                     `layer ${n.layer}.`}),
      el("ul", {}, (n.outputs || []).map((o, i) => {
        const t = (n.top2_approximation || [])[i] || {};
        return el("li", {}, link(o.feature), ` ${o.type}; top-2 approximation r = ${fmt(t.corr_active)} where active, ` +
                                             `${fmt(t.corr_large)} on large activations`);
      }))));
  }
  if (D.lowrank) {
    const l = D.lowrank;
    app.append(el("section", {id: "lowrank-section"}, el("h2", {text: "Output features are low rank (E12, C13)"}),
      el("p", {class: "note", text: `${l.n_features_kept} of ${l.n_features} output features kept; Pearson r between ` +
        `Σ_{i≤k} λᵢ (vᵢ·x)² and the SAE activation where the feature is active.`}),
      el("table", {class: "inter", id: "lowrank-table"},
        el("tr", {}, el("th", {text: "k"}), l.ks.map(k => el("th", {text: String(k)}))),
        el("tr", {}, el("td", {text: "mean r"}), l.mean_corr.map(v => el("td", {text: fmt(v)}))),
        el("tr", {}, el("td", {text: "median r"}), (l.median_corr || []).map(v => el("td", {text: fmt(v)})))),
      l.fraction_above_k2 ? el("p", {text: "fraction of features above a threshold at k = 2: " +
        Object.entries(l.fraction_above_k2).map(([t, f]) => `${t}: ${pct(f)}`).join(", ")}) : null));
  }
  const page = el("div", {id: "feature-page"});
  app.append(el("section", {id: "feature-section"}, el("h2", {text: "Output features (by top-2 |λ| of Q̃_a)"}),
    el("div", {class: "layout"},
      el("div", {class: "buttons", id: "feature-list"}, D.features.map(f =>
        el("button", {class: "feat-btn", id: `feat-btn-${f.id}`, title: `top-2 |λ| ${fmt(f.top2)}`, onclick: () => open(f.id)},
           `feature ${f.id}`))),
      page)));

  function tokens(c, max) {
    return el("div", {class: "context"}, c.tokens.map((t, i) => {
      const a = Math.max(0, c.acts[i]) / (max || 1);
      return el("span", {class: "tok" + (i === c.at ? " at" : ""), title: `activation ${fmt(c.acts[i])}`,
                         style: `background: rgba(221, 132, 82, ${a.toFixed(3)})`}, t);
    }), el("span", {class: "act", text: fmt(c.act)}));
  }
  function interactionTable(it) {
    const m = Math.max(1e-30, ...it.matrix.flat().map(Math.abs));
    return el("table", {class: "inter", id: "interaction-table"},
      el("tr", {}, el("th", {text: "input feature"}), it.inputs.map(i => el("th", {text: String(i)}))),
      it.matrix.map((row, a) => el("tr", {},
        el("td", {class: "lbl", title: it.labels[a], text: `${it.inputs[a]}: ${it.labels[a]}`}),
        row.map(v => { const [R, G, B] = diverging(v / m);
          return el("td", {title: String(v), style: `background: rgb(${R},${G},${B})`, text: fmt(v, 2)}); }))));
  }
  function open(id) {
    const f = byId.get(id);
    if (!f) return;
    setActive(".feat-btn", document.getElementById(`feat-btn-${id}`));
    if (location.hash !== `#feature-${id}`) history.replaceState(null, "", `#feature-${id}`);
    page.replaceChildren(
      el("h3", {id: "feature-title", text: `output feature ${id}`}),
      el("p", {class: "note", text: `top-2 |λ| of Q̃_a ${fmt(f.top2)}; active at ${f.n_active} held-out positions, ` +
                                    `max activation ${fmt(f.max_act)}`}),
      el("h4", {text: "top activating contexts (the activating token outlined; shade: the feature's activation)"}),
      el("div", {id: "contexts"}, f.contexts.length ? f.contexts.map(c => tokens(c, f.max_act))
                                                    : el("p", {class: "note", text: "never active on these windows"})),
      el("h4", {text: "decoder cosine neighbours"}),
      el("div", {id: "neighbours"},
        el("div", {}, "most aligned: ", f.neighbours.map(n => el("span", {}, link(n.id), ` (${fmt(n.cos)})  `))),
        el("div", {}, "most opposed: ", f.anti_neighbours.map(n => el("span", {}, link(n.id), ` (${fmt(n.cos)})  `)))),
      el("h4", {text: "interactions with the strongest input features (diagonal: self Q̃_bb; off-diagonal: 2 Q̃_bc)"}),
      interactionTable(f.interaction),
      el("h4", {text: "top eigenvectors of Q̃_a by |λ|, as weights on input features"}),
      el("div", {id: "eigenvectors"}, f.eigen.map(e => el("div", {class: "eig"}, `λ = ${fmt(e.lambda, 4)}`,
        el("ul", {}, e.inputs.map(i => el("li", {}, `${i.weight >= 0 ? "+" : "−"}${fmt(Math.abs(i.weight), 2)}  ${i.id}: ${i.label}`)))))));
  }
  const fromHash = parseInt((location.hash.match(/^#feature-(\d+)$/) || [])[1], 10);
  open(byId.has(fromHash) ? fromHash : D.features[0].id);
}

const app = document.getElementById("app");
if (D.kind === "image") imageApp(app); else lmApp(app);
document.body.setAttribute("data-ready", "1");
"""

TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Bilinear explorer</title>
<style>{css}</style>
</head>
<body>
<header id="header"></header>
<main id="app"></main>
<noscript>This page draws with JavaScript, which runs locally: nothing is fetched.</noscript>
<script type="application/json" id="data">{data}</script>
<script>{js}</script>
</body>
</html>
"""


def render(data_json: str) -> str:
    """The page for ``data_json``. ``</`` is escaped so no string in the data can close the script element."""
    return TEMPLATE.format(css=CSS, js=JS, data=data_json.replace("</", "<\\/"))
