// nxrt report.html: three linked views of one case, drawn from the volumes packed in #nxrt-data.
// The project's own script: no library, no network. Volumes are uint8 in RAS voxel order,
// C-ordered [X, Y, Z] (index (x * Y + y) * Z + z), gzip-compressed, base64-encoded.
"use strict";

(async function () {
  const data = JSON.parse(document.getElementById("nxrt-data").textContent);
  const [X, Y, Z] = data.shape;
  const spacing = data.spacing;
  const BOX = 320;

  // base64 -> gzip -> bytes; `delta`: each byte is the difference (mod 256) from the one before it
  // along z, undone here row by row
  async function inflate(text, delta) {
    const bin = atob(text);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    const volume = new Uint8Array(await new Response(stream).arrayBuffer());
    if (delta) {
      for (let row = 0; row < volume.length; row += Z) {
        for (let i = row + 1; i < row + Z; i++) volume[i] = (volume[i] + volume[i - 1]) & 255;
      }
    }
    return volume;
  }

  // scans arrive in data.scanLevels grey levels (0 = air): spread back over 0..255
  function spread(volume) {
    const factor = 255 / (data.scanLevels - 1);
    for (let i = 0; i < volume.length; i++) volume[i] = Math.round(volume[i] * factor);
    return volume;
  }

  const scans = {};
  const maps = {};
  for (const [name, text] of Object.entries(data.scans)) scans[name] = spread(await inflate(text, true));
  for (const [name, text] of Object.entries(data.maps)) maps[name] = await inflate(text, true);
  const outline = await inflate(data.outline, false);
  const modalities = Object.keys(scans);
  const methods = Object.keys(maps);
  const index = (x, y, z) => (x * Y + y) * Z + z;

  // where to start: the centre of the true tumour, else the predicted one, else the first map's hot part
  function centre() {
    for (const [volume, test] of [[outline, (v) => v & 1], [outline, (v) => v & 2],
                                  [maps[methods[0]], (v) => v >= 128]]) {
      if (!volume) continue;
      let n = 0, sx = 0, sy = 0, sz = 0;
      for (let x = 0; x < X; x++) for (let y = 0; y < Y; y++) for (let z = 0; z < Z; z++) {
        if (test(volume[index(x, y, z)])) { n++; sx += x; sy += y; sz += z; }
      }
      if (n) return [Math.round(sx / n), Math.round(sy / n), Math.round(sz / n)];
    }
    return [X >> 1, Y >> 1, Z >> 1];
  }

  const start = centre();
  if (data.start) start[data.start.axis] = data.start.index;  // a 2D model's case: its explained slice
  const [cx, cy, cz] = start;
  const state = {
    x: cx, y: cy, z: cz, method: methods.length ? methods[0] : "none",
    modality: modalities.includes("flair") ? "flair" : modalities[0], opacity: 0.6,
    truth: data.hasTruth, predicted: data.hasPredicted, convention: "neurological",
  };

  // view geometry: picture width/height axes, the axis held fixed, mm per pixel, edge letters
  const VIEWS = {
    axial: { w: X, h: Y, fixed: "z", n: Z, px: spacing[0], py: spacing[1], world: 2, letters: ["A", "P", "L", "R"] },
    coronal: { w: X, h: Z, fixed: "y", n: Y, px: spacing[0], py: spacing[2], world: 1, letters: ["S", "I", "L", "R"] },
    sagittal: { w: Y, h: Z, fixed: "x", n: X, px: spacing[1], py: spacing[2], world: 0, letters: ["S", "I", "P", "A"] },
  };
  const scale = BOX / Math.max(X * spacing[0], Y * spacing[1], Z * spacing[2]);

  function mirrored(view) {
    return state.convention === "radiological" && view !== "sagittal";
  }

  // picture pixel (c, r) of a view -> voxel [x, y, z]
  function voxel(view, c, r) {
    const m = mirrored(view);
    if (view === "axial") return [m ? X - 1 - c : c, Y - 1 - r, state.z];
    if (view === "coronal") return [m ? X - 1 - c : c, state.y, Z - 1 - r];
    return [state.x, c, Z - 1 - r];
  }

  // voxel -> picture pixel (c, r) of a view (for the crosshair)
  function pixel(view) {
    const m = mirrored(view);
    if (view === "axial") return [m ? X - 1 - state.x : state.x, Y - 1 - state.y];
    if (view === "coronal") return [m ? X - 1 - state.x : state.x, Z - 1 - state.z];
    return [state.y, Z - 1 - state.z];
  }

  function caption(view) {
    const v = VIEWS[view];
    const p = [state.x, state.y, state.z, 1];
    const dot = (row) => row[0] * p[0] + row[1] * p[1] + row[2] * p[2] + row[3] * p[3];
    const axis = data.fileAxis[view];
    const slice = Math.round(dot(data.toFile[axis]));
    const mm = dot(data.affine[v.world]);
    const sign = mm >= 0 ? "+" : "-";
    return `${view}: slice ${slice + 1} of ${data.fileShape[axis]}, ${"xyz"[v.world]} = ${sign}${Math.abs(mm).toFixed(1)} mm`;
  }

  const TRUE_COLOUR = [255, 255, 255];
  const PREDICTED_COLOUR = [0, 230, 255];

  function draw(view) {
    const v = VIEWS[view];
    const scan = scans[state.modality];
    const map = state.method === "none" ? null : maps[state.method];
    const picture = new ImageData(v.w, v.h);
    const bits = new Uint8Array(v.w * v.h);
    const alpha = state.opacity;
    for (let r = 0; r < v.h; r++) {
      for (let c = 0; c < v.w; c++) {
        const [x, y, z] = voxel(view, c, r);
        const i = index(x, y, z);
        const g = scan[i];
        let red = g, green = g, blue = g;
        if (map && g > 0 && map[i] > 0) {  // (values at or below data.floor were packed as 0)
          const k = 3 * map[i];
          red = (1 - alpha) * g + alpha * data.lut[k];
          green = (1 - alpha) * g + alpha * data.lut[k + 1];
          blue = (1 - alpha) * g + alpha * data.lut[k + 2];
        }
        const o = 4 * (r * v.w + c);
        picture.data[o] = red; picture.data[o + 1] = green; picture.data[o + 2] = blue; picture.data[o + 3] = 255;
        bits[r * v.w + c] = outline[i];
      }
    }
    // outlines: pixels of a mask with a 4-neighbour outside it
    for (const [bit, colour, on] of [[2, PREDICTED_COLOUR, state.predicted], [1, TRUE_COLOUR, state.truth]]) {
      if (!on) continue;
      for (let r = 0; r < v.h; r++) {
        for (let c = 0; c < v.w; c++) {
          if (!(bits[r * v.w + c] & bit)) continue;
          const inside = (cc, rr) => cc >= 0 && rr >= 0 && cc < v.w && rr < v.h && (bits[rr * v.w + cc] & bit);
          if (inside(c - 1, r) && inside(c + 1, r) && inside(c, r - 1) && inside(c, r + 1)) continue;
          const o = 4 * (r * v.w + c);
          picture.data[o] = colour[0]; picture.data[o + 1] = colour[1]; picture.data[o + 2] = colour[2];
        }
      }
    }
    const source = document.createElement("canvas");
    source.width = v.w; source.height = v.h;
    source.getContext("2d").putImageData(picture, 0, 0);
    const canvas = document.getElementById(`canvas-${view}`);
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    const width = Math.round(v.w * v.px * scale), height = Math.round(v.h * v.py * scale);
    const left = (canvas.width - width) >> 1, top = (canvas.height - height) >> 1;
    ctx.drawImage(source, left, top, width, height);
    // crosshair: where the other two views cut this one
    const [pc, pr] = pixel(view);
    ctx.strokeStyle = "rgba(255, 255, 0, 0.45)";
    ctx.lineWidth = 1;
    const gx = left + (pc + 0.5) * width / v.w, gy = top + (pr + 0.5) * height / v.h;
    ctx.beginPath(); ctx.moveTo(gx, top); ctx.lineTo(gx, top + height); ctx.moveTo(left, gy); ctx.lineTo(left + width, gy);
    ctx.stroke();
    // anatomical letters at the edges
    let [tp, bt, lf, rt] = v.letters;
    if (mirrored(view)) [lf, rt] = [rt, lf];
    ctx.font = "bold 14px sans-serif";
    ctx.lineWidth = 3; ctx.strokeStyle = "#000"; ctx.fillStyle = "#fff";
    for (const [text, x, y, align, base] of [[tp, canvas.width / 2, 3, "center", "top"],
                                             [bt, canvas.width / 2, canvas.height - 3, "center", "bottom"],
                                             [lf, 4, canvas.height / 2, "left", "middle"],
                                             [rt, canvas.width - 4, canvas.height / 2, "right", "middle"]]) {
      ctx.textAlign = align; ctx.textBaseline = base;
      ctx.strokeText(text, x, y); ctx.fillText(text, x, y);
    }
    canvas.dataset.geometry = JSON.stringify([left, top, width, height]);
    document.getElementById(`caption-${view}`).textContent = caption(view);
    const slider = document.getElementById(`slider-${view}`);
    slider.value = state[v.fixed];
  }

  function drawAll() {
    for (const view of Object.keys(VIEWS)) draw(view);
  }

  // ---- the page's controls
  function radios(title, name, options, current, onChange) {
    const box = document.createElement("fieldset");
    box.innerHTML = `<legend>${title}</legend>`;
    for (const option of options) {
      const label = document.createElement("label");
      const input = document.createElement("input");
      input.type = "radio"; input.name = name; input.value = option; input.checked = option === current;
      input.addEventListener("change", () => { onChange(option); drawAll(); });
      label.append(input, " " + option);
      box.append(label);
    }
    return box;
  }

  const controls = document.getElementById("controls");
  controls.append(radios("method", "method", [...methods, "none"], state.method, (m) => { state.method = m; }));
  controls.append(radios("scan", "modality", modalities, state.modality, (m) => { state.modality = m; }));
  const display = document.createElement("fieldset");
  display.innerHTML = "<legend>display</legend>";
  const opacity = document.createElement("input");
  opacity.type = "range"; opacity.min = 0; opacity.max = 100; opacity.value = 60; opacity.id = "opacity";
  opacity.addEventListener("input", () => { state.opacity = opacity.value / 100; drawAll(); });
  const opacityLabel = document.createElement("label");
  opacityLabel.append("opacity ", opacity);
  display.append(opacityLabel);
  for (const [key, text, present] of [["truth", "true tumour (white)", data.hasTruth],
                                      ["predicted", "predicted tumour (cyan)", data.hasPredicted]]) {
    if (!present) continue;
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox"; box.checked = true; box.id = `show-${key}`;
    box.addEventListener("change", () => { state[key] = box.checked; drawAll(); });
    label.append(box, " " + text);
    display.append(label);
  }
  const convention = document.createElement("select");
  convention.id = "convention";
  for (const c of ["neurological", "radiological"]) convention.append(new Option(c, c));
  convention.addEventListener("change", () => { state.convention = convention.value; drawAll(); });
  const conventionLabel = document.createElement("label");
  conventionLabel.append("convention ", convention);
  display.append(conventionLabel);
  controls.append(display);

  const views = document.getElementById("views");
  for (const [view, v] of Object.entries(VIEWS)) {
    const figure = document.createElement("figure");
    const canvas = document.createElement("canvas");
    canvas.id = `canvas-${view}`; canvas.width = BOX; canvas.height = BOX;
    canvas.addEventListener("click", (event) => {
      const [left, top, width, height] = JSON.parse(canvas.dataset.geometry);
      const bounds = canvas.getBoundingClientRect();
      const c = Math.floor((event.clientX - bounds.left - left) * v.w / width);
      const r = Math.floor((event.clientY - bounds.top - top) * v.h / height);
      if (c < 0 || r < 0 || c >= v.w || r >= v.h) return;
      const [x, y, z] = voxel(view, c, r);
      Object.assign(state, { x, y, z });
      drawAll();
    });
    canvas.addEventListener("wheel", (event) => {
      event.preventDefault();
      state[v.fixed] = Math.min(v.n - 1, Math.max(0, state[v.fixed] + (event.deltaY < 0 ? 1 : -1)));
      drawAll();
    }, { passive: false });
    const slider = document.createElement("input");
    slider.type = "range"; slider.min = 0; slider.max = v.n - 1; slider.id = `slider-${view}`;
    slider.setAttribute("aria-label", `${view} slice`);
    slider.addEventListener("input", () => { state[v.fixed] = Number(slider.value); drawAll(); });
    const text = document.createElement("figcaption");
    text.id = `caption-${view}`;
    figure.append(canvas, slider, text);
    views.append(figure);
  }

  const legend = document.getElementById("legend");
  const bar = document.createElement("canvas");
  bar.width = 160; bar.height = 12;
  const barCtx = bar.getContext("2d");
  for (let i = 0; i < bar.width; i++) {
    const k = 3 * Math.min(255, Math.floor(i * 256 / bar.width));
    barCtx.fillStyle = `rgb(${data.lut[k]}, ${data.lut[k + 1]}, ${data.lut[k + 2]})`;
    barCtx.fillRect(i, 0, 1, bar.height);
  }
  legend.append("map 0 ", bar, " 1 (of its 99th percentile; shown above 5%, inside the brain). ");
  if (data.hasTruth) legend.append("White outline: true tumour. ");
  if (data.hasPredicted) legend.append("Cyan outline: predicted tumour. ");
  legend.append("Click a view to move the other two there; the wheel or the slider scrolls slices.");

  drawAll();
  document.body.dataset.ready = "true";
})().catch((error) => {
  document.body.dataset.ready = "error";
  const p = document.createElement("p");
  p.className = "error";
  p.textContent = `This page could not show the case: ${error.message}`;
  document.body.prepend(p);
});
