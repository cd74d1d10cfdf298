// Pages for people over the public API: collections, a gallery's crops, register, query.
// No framework, no build step. Every call goes through api(): the key (when the service asks for one) is sent as
// the X-API-Key header, never in a URL; every error is shown with the API's own code and message.
"use strict";

(() => {
  const KEY_STORAGE = "reid-api-key";
  const PAGE_SIZE = 24;
  // The page lives at <prefix>/ui: the API is at <prefix>/ (a reverse proxy may mount the service under a path).
  const BASE = location.pathname.replace(/\/ui\/?$/, "");

  const $ = (id) => document.getElementById(id);
  const state = {
    info: null,          // GET /info
    collections: [],     // GET /collections
    pendingRoute: null,  // the view to show once a key has been given
    objectUrls: [],      // blob: URLs of the current view, revoked when it changes
    renderToken: 0,      // bumps on every view change so slow answers for an old view are dropped
    noticeViews: 0,      // view changes the current notice survives
  };

  class ApiError extends Error {
    constructor(method, path, status, code, detail) {
      super(`${method} ${path} → ${status} ${code}: ${detail}`);
      this.status = status;
      this.code = code;
      this.detail = detail;
    }
  }

  // ------------------------------------------------------------------ API

  function apiKey() {
    return sessionStorage.getItem(KEY_STORAGE);
  }

  async function api(method, path, { body = undefined, expect = "json" } = {}) {
    const headers = {};
    const key = apiKey();
    if (key) headers["X-API-Key"] = key;
    let response;
    try {
      response = await fetch(BASE + path, { method, headers, body, credentials: "omit", cache: "no-store" });
    } catch (err) {
      throw new ApiError(method, path, 0, "unreachable", `the service did not answer (${err.message})`);
    }
    if (!response.ok) {
      let code = `http_${response.status}`;
      let detail = response.statusText || "request failed";
      try {
        const payload = await response.json();
        code = payload.error || code;
        detail = payload.detail || detail;
      } catch (_) {
        // Not JSON (a proxy's page, say): keep the status line.
      }
      if (response.status === 401) showKeyForm(detail);
      throw new ApiError(method, path, response.status, code, detail);
    }
    return expect === "blob" ? response.blob() : response.json();
  }

  // ------------------------------------------------------------------ messages

  function showError(err) {
    // A first visit without a key: the key form says what is needed, an error banner would only repeat it.
    if (err instanceof ApiError && err.status === 401 && !apiKey()) return;
    const text = err instanceof ApiError ? err.message : `unexpected error: ${err && err.message ? err.message : err}`;
    $("error-text").textContent = text;
    $("error").hidden = false;
    console.warn(text);
  }

  function clearError() {
    $("error").hidden = true;
    $("error-text").textContent = "";
  }

  // A notice outlives the view change its action caused (e.g. "Registered ..." above the gallery), no more.
  function notify(text) {
    $("notice").textContent = text;
    $("notice").hidden = !text;
    state.noticeViews = text ? 1 : 0;
  }

  function ageNotice() {
    if (state.noticeViews > 0) state.noticeViews -= 1;
    else notify("");
  }

  // Runs an async action, showing any error it raises; returns its value or undefined.
  async function guarded(action) {
    try {
      return await action();
    } catch (err) {
      showError(err);
      return undefined;
    }
  }

  // ------------------------------------------------------------------ small DOM helpers

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (name === "text") node.textContent = value;
      else if (name === "class") node.className = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  function objectUrl(blob) {
    const url = URL.createObjectURL(blob);
    state.objectUrls.push(url);
    return url;
  }

  function releaseObjectUrls() {
    for (const url of state.objectUrls) URL.revokeObjectURL(url);
    state.objectUrls = [];
  }

  // An <img> for a stored crop: fetched with the key header, shown from a blob: URL.
  function galleryImage(id, alt, token) {
    const img = el("img", { alt, class: "crop", loading: "lazy" });
    api("GET", `/gallery/${encodeURIComponent(id)}/image`, { expect: "blob" })
      .then((blob) => {
        if (token === state.renderToken) img.src = objectUrl(blob);
      })
      .catch((err) => {
        img.alt = `${alt} (image unavailable: ${err.code || "error"})`;
        img.classList.add("missing");
        // A crop kept by no backend is expected (REID_STORE_CROPS off, milvus); a view left since is not ours.
        if (err.code !== "image_not_stored" && token === state.renderToken) showError(err);
      });
    return img;
  }

  function localImage(file, token) {
    const img = el("img", { alt: `query crop ${file.name}`, class: "crop" });
    if (token === state.renderToken) img.src = objectUrl(file);
    return img;
  }

  function confirmDialog(text) {
    const dialog = $("confirm");
    $("confirm-text").textContent = text;
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
      dialog.returnValue = "cancel";
      dialog.showModal();
      $("confirm-cancel").focus();  // the safe choice has the focus
    });
  }

  // ------------------------------------------------------------------ key

  function showKeyForm(reason) {
    if (!$("view-key").hidden) return;
    state.pendingRoute = location.hash || "#/collections";
    for (const section of document.querySelectorAll("main > section")) section.hidden = section.id !== "view-key";
    $("key-input").value = "";
    notify(apiKey() ? `The key was refused (${reason}). Enter it again.` : "");
    $("key-input").focus();
    renderKeyState();
  }

  function renderKeyState() {
    const key = apiKey();
    $("key-state").textContent = key ? "API key set for this tab" : "";
    $("forget-key").hidden = !key;
  }

  // ------------------------------------------------------------------ service info

  async function loadInfo() {
    state.info = await api("GET", "/info");
    const i = state.info;
    $("model-info").textContent =
      `Model ${i.architecture} (${i.checkpoint}) · threshold ${i.threshold.toFixed(3)} (${i.threshold_source})`;
    $("register-count").textContent = `up to ${i.max_files} crops per registration`;
    $("query-threshold").placeholder = i.threshold.toFixed(2);
    $("query-threshold").title = `empty: the service's threshold (${i.threshold_source})`;
  }

  async function loadCollections() {
    const answer = await api("GET", "/collections");
    state.collections = answer.collections;
    const names = $("collection-names");
    names.replaceChildren(...state.collections.map((c) => el("option", { value: c.name })));
    return state.collections;
  }

  function modelName() {
    return state.info ? `${state.info.architecture} (${state.info.checkpoint})` : "";
  }

  // ------------------------------------------------------------------ views

  async function renderCollections(token) {
    const collections = await loadCollections();
    if (token !== state.renderToken) return;
    $("collections-empty").hidden = collections.length > 0;
    $("collections-table").hidden = collections.length === 0;
    $("collections-body").replaceChildren(
      ...collections.map((c) =>
        el(
          "tr",
          { "data-testid": "collection-row", "data-name": c.name },
          el("th", { scope: "row" }, el("a", { href: `#/gallery/${encodeURIComponent(c.name)}`, text: c.name })),
          el("td", { class: "num", text: String(c.size) }),
          el("td", { text: modelName() }),
          el("td", { text: c.created_at.replace("T", " ").slice(0, 19) }),
          el(
            "td",
            {},
            el("a", { class: "button", href: `#/gallery/${encodeURIComponent(c.name)}`, text: "Open" }),
            " ",
            el("a", { class: "button", href: `#/query/${encodeURIComponent(c.name)}`, text: "Query" }),
            " ",
            el("button", {
              type: "button",
              class: "danger",
              text: "Delete",
              "aria-label": `Delete collection ${c.name}`,
              onclick: () => deleteCollection(c),
            })
          )
        )
      )
    );
  }

  async function deleteCollection(collection) {
    const ok = await confirmDialog(
      `Delete the collection ${collection.name} and its ${collection.size} crops? This cannot be undone.`
    );
    if (!ok) return;
    await guarded(async () => {
      const answer = await api("DELETE", `/collections/${encodeURIComponent(collection.name)}`);
      notify(`Deleted ${answer.name} (${answer.deleted_items} crops).`);
      await route();
    });
  }

  async function renderGallery(token, name, offset) {
    $("gallery-title").textContent = `Gallery ${name}`;
    $("gallery-query").href = `#/query/${encodeURIComponent(name)}`;
    $("gallery-register").href = `#/register/${encodeURIComponent(name)}`;
    const params = new URLSearchParams({ collection: name, offset: String(offset), limit: String(PAGE_SIZE) });
    const page = await api("GET", `/gallery?${params}`);
    if (token !== state.renderToken) return;
    const last = Math.min(page.total, offset + page.items.length);
    $("gallery-range").textContent =
      page.total === 0 ? "empty" : `crops ${offset + 1}–${last} of ${page.total}`;
    const prev = $("gallery-prev");
    const next = $("gallery-next");
    prev.disabled = offset === 0;
    next.disabled = last >= page.total;
    prev.onclick = () => (location.hash = `#/gallery/${encodeURIComponent(name)}/${Math.max(0, offset - PAGE_SIZE)}`);
    next.onclick = () => (location.hash = `#/gallery/${encodeURIComponent(name)}/${offset + PAGE_SIZE}`);
    $("gallery-grid").replaceChildren(
      ...page.items.map((item) =>
        el(
          "li",
          { class: "card", "data-testid": "gallery-item", "data-id": item.id, "data-label": item.label },
          galleryImage(item.id, `crop of ${item.label}`, token),
          el("span", { class: "label", text: item.label }),
          el("code", { class: "id", text: item.id.slice(0, 8), title: item.id }),
          el("button", {
            type: "button",
            class: "danger small",
            text: "Delete",
            "aria-label": `Delete crop ${item.id} (${item.label})`,
            onclick: () => deleteItem(item, name, offset, page.items.length),
          })
        )
      )
    );
  }

  async function deleteItem(item, name, offset, shown) {
    const ok = await confirmDialog(`Delete the crop ${item.id} (label ${item.label}) from ${name}?`);
    if (!ok) return;
    await guarded(async () => {
      await api("DELETE", `/gallery/${encodeURIComponent(item.id)}`);
      notify(`Deleted crop ${item.id} (${item.label}).`);
      // Last crop of a later page gone: show the page before it.
      const back = shown === 1 && offset > 0 ? Math.max(0, offset - PAGE_SIZE) : offset;
      const target = `#/gallery/${encodeURIComponent(name)}/${back}`;
      if (location.hash === target) await route();
      else location.hash = target;
    });
  }

  // ---- register

  let registerFiles = [];

  function setRegisterFiles(files) {
    registerFiles = Array.from(files);
    renderRegisterPreviews();
  }

  function labelMode() {
    return document.querySelector('input[name="label-mode"]:checked').value;
  }

  function renderRegisterPreviews() {
    const token = state.renderToken;
    const each = labelMode() === "each";
    $("register-one-label").hidden = each;
    $("register-label").required = !each;
    const previous = new Map(
      Array.from(document.querySelectorAll("#register-previews input")).map((i) => [i.dataset.index, i.value])
    );
    $("register-previews").replaceChildren(
      ...registerFiles.map((file, index) => {
        const inputId = `register-label-${index}`;
        return el(
          "li",
          { class: "card", "data-testid": "register-preview" },
          localImage(file, token),
          el("span", { class: "name", text: file.name }),
          each ? el("label", { for: inputId, class: "sr", text: `Label of ${file.name}` }) : null,
          each
            ? el("input", {
                id: inputId,
                "data-index": String(index),
                maxlength: "128",
                required: true,
                placeholder: "label",
                value: previous.get(String(index)) || "",
                autocomplete: "off",
              })
            : null
        );
      })
    );
    const n = registerFiles.length;
    $("register-submit").textContent = n ? `Register ${n} crop${n === 1 ? "" : "s"}` : "Register";
  }

  async function submitRegister(event) {
    event.preventDefault();
    clearError();
    if (registerFiles.length === 0) {
      showError(new Error("choose or drop at least one crop first"));
      $("register-files").focus();
      return;
    }
    const collection = $("register-collection").value.trim();
    const form = new FormData();
    form.append("collection", collection);
    const each = labelMode() === "each";
    registerFiles.forEach((file, index) => {
      form.append("files", file, file.name);
      const label = each ? $(`register-label-${index}`).value : $("register-label").value;
      form.append("labels", label.trim());
    });
    const submit = $("register-submit");
    submit.disabled = true;
    try {
      await guarded(async () => {
        const answer = await api("POST", "/gallery", { body: form });
        notify(`Registered ${answer.items.length} crops into ${collection}.`);
        setRegisterFiles([]);
        $("register-files").value = "";
        location.hash = `#/gallery/${encodeURIComponent(collection)}`;
      });
    } finally {
      submit.disabled = false;
    }
  }

  async function renderRegister(token, name) {
    await loadCollections();
    if (token !== state.renderToken) return;
    if (name) $("register-collection").value = name;
    renderRegisterPreviews();
  }

  // ---- query

  let queryFiles = [];

  function setQueryFiles(files) {
    queryFiles = Array.from(files);
    const n = queryFiles.length;
    $("query-count").textContent = n ? `${n} crop${n === 1 ? "" : "s"} chosen: ${queryFiles.map((f) => f.name).join(", ")}` : "";
  }

  async function renderQuery(token, name) {
    const collections = await loadCollections();
    if (token !== state.renderToken) return;
    const select = $("query-collection");
    const current = name || select.value;
    select.replaceChildren(
      ...collections.map((c) => el("option", { value: c.name, text: `${c.name} (${c.size} crops)` }))
    );
    if (current && collections.some((c) => c.name === current)) select.value = current;
    if (collections.length === 0) notify("No gallery to query yet: register crops first.");
  }

  function thresholdSource(result, override) {
    if (override !== null) return "set in this query";
    const i = state.info;
    if (!i) return "the service's";
    const pooled = result.crops > 1 ? ` for ${result.crops} pooled crops` : "";
    if (i.threshold_source === "calibrated") return `calibrated with the model${pooled}`;
    if (i.threshold_source === "setting") return "REID_THRESHOLD, set on the service";
    return "service default; the model is not calibrated";
  }

  async function submitQuery(event) {
    event.preventDefault();
    clearError();
    if (queryFiles.length === 0) {
      showError(new Error("choose or drop at least one query crop first"));
      $("query-files").focus();
      return;
    }
    const collection = $("query-collection").value;
    const thresholdText = $("query-threshold").value.trim();
    const override = thresholdText === "" ? null : Number(thresholdText);
    const tracklet = $("query-tracklet").checked;
    const form = new FormData();
    form.append("collection", collection);
    form.append("top_k", $("query-topk").value);
    if (override !== null) form.append("threshold", String(override));
    for (const file of queryFiles) {
      form.append("files", file, file.name);
      if (tracklet) form.append("tracklets", "tracklet");
    }
    const files = queryFiles.slice();
    const submit = $("query-submit");
    submit.disabled = true;
    $("query-results").replaceChildren();
    try {
      await guarded(async () => {
        const answer = await api("POST", "/query", { body: form });
        const token = state.renderToken;
        const groups = tracklet ? [files] : files.map((f) => [f]);
        $("query-results").replaceChildren(
          el("p", {
            class: "legend",
            text: `${answer.results.length} answer${answer.results.length === 1 ? "" : "s"}; ranked gallery crops ` +
              "best first, #rank · cosine score; a green frame marks a score at or above the threshold.",
          }),
          ...answer.results.map((result, index) => queryResult(result, groups[index], override, token))
        );
        const first = document.querySelector("#query-results [data-testid=query-result] h3");
        if (first) first.focus();
      });
    } finally {
      submit.disabled = false;
    }
  }

  function queryResult(result, files, override, token) {
    const threshold = result.threshold ?? state.info?.threshold;
    const matched = result.match !== null;
    const heading =
      files.length > 1 ? `Tracklet of ${files.length} crops` : `Query ${files[0] ? files[0].name : ""}`;
    const verdict = el(
      "p",
      { class: matched ? "verdict matched" : "verdict nomatch", "data-testid": "verdict" },
      el("strong", { text: matched ? `Match: ${result.match}` : "No match" }),
      el("span", {
        text: ` · threshold ${Number(threshold).toFixed(3)} (${thresholdSource(result, override)})`,
      })
    );
    const matches = el(
      "ol",
      { class: "matches", "aria-label": "Ranked gallery crops, best first" },
      ...result.matches.map((m, rank) =>
        el(
          "li",
          {
            class: m.score >= threshold ? "card above" : "card",
            "data-testid": "match",
            "data-label": m.label,
            "data-id": m.id,
          },
          galleryImage(m.id, `gallery crop of ${m.label}, rank ${rank + 1}`, token),
          el("span", { class: "label", text: m.label }),
          el("span", { class: "score", text: `#${rank + 1} · ${m.score.toFixed(3)}` })
        )
      )
    );
    if (result.matches.length === 0) matches.append(el("li", { class: "empty", text: "the gallery is empty" }));
    return el(
      "article",
      { class: "result", "data-testid": "query-result" },
      el("h3", { tabindex: "-1", text: heading }),
      el("div", { class: "queries" }, ...files.map((f) => localImage(f, token))),
      el("div", { class: "answer" }, verdict, matches)
    );
  }

  // ------------------------------------------------------------------ routing

  async function route() {
    state.renderToken += 1;
    const token = state.renderToken;
    releaseObjectUrls();
    const hash = location.hash || "#/collections";
    const [, view = "collections", arg = "", extra = ""] = hash.split("/");
    const name = decodeURIComponent(arg);
    for (const section of document.querySelectorAll("main > section")) {
      section.hidden = section.id !== `view-${view === "gallery" ? "gallery" : view}`;
    }
    for (const link of document.querySelectorAll("nav a")) {
      if (link.dataset.view === view) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    await guarded(async () => {
      if (!state.info) await loadInfo();
      if (view === "collections") await renderCollections(token);
      else if (view === "gallery") await renderGallery(token, name, Math.max(0, Number.parseInt(extra, 10) || 0));
      else if (view === "register") await renderRegister(token, name);
      else if (view === "query") await renderQuery(token, name);
      else location.hash = "#/collections";
    });
  }

  function wireDrop(zone, input, onFiles) {
    input.addEventListener("change", () => onFiles(input.files));
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      onFiles(event.dataTransfer.files);
    });
  }

  function start() {
    $("key-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const key = $("key-input").value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY_STORAGE, key);
      $("view-key").hidden = true;
      clearError();
      notify("");
      renderKeyState();
      const target = state.pendingRoute || "#/collections";
      state.pendingRoute = null;
      if (location.hash === target) route();
      else location.hash = target;
    });
    $("forget-key").addEventListener("click", () => {
      sessionStorage.removeItem(KEY_STORAGE);
      state.info = null;
      renderKeyState();
      route();
    });
    $("error-close").addEventListener("click", clearError);
    wireDrop($("register-drop"), $("register-files"), setRegisterFiles);
    wireDrop($("query-drop"), $("query-files"), setQueryFiles);
    for (const radio of document.querySelectorAll('input[name="label-mode"]')) {
      radio.addEventListener("change", renderRegisterPreviews);
    }
    $("register-form").addEventListener("submit", submitRegister);
    $("query-form").addEventListener("submit", submitQuery);
    window.addEventListener("hashchange", () => {
      clearError();
      ageNotice();
      route();
    });
    renderKeyState();
    route();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
