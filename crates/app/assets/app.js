"use strict";
const $ = (id) => document.getElementById(id);
let currentUser = null;
let viewedUser = null;

function showMsg(text, kind) {
  const el = $("msg");
  el.textContent = text;
  el.className = kind || "info";
  clearTimeout(showMsg.t);
  if (kind !== "error") showMsg.t = setTimeout(() => el.classList.add("hidden"), 5000);
}
function clearMsg() { $("msg").classList.add("hidden"); }

async function api(method, path, body) {
  const opts = { method, credentials: "same-origin", headers: { "Accept": "application/json" } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const res = await fetch(path, opts);
  let data = null;
  if (res.status !== 204) {
    const text = await res.text();
    if (text) { try { data = JSON.parse(text); } catch (_) { data = null; } }
  }
  if (!res.ok) {
    const err = new Error((data && data.error) || ("Request failed (HTTP " + res.status + ")"));
    err.status = res.status;
    throw err;
  }
  return data;
}

function enc(s) { return encodeURIComponent(s); }
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

function safeUrl(u) {
  if (typeof u !== "string") return null;
  if (u.startsWith("/") && !u.startsWith("//")) return u;
  try {
    const p = new URL(u, location.href);
    return (p.protocol === "http:" || p.protocol === "https:") ? p.href : null;
  } catch (_) { return null; }
}

function fmtDate(v) {
  if (v === null || v === undefined) return "";
  let d = typeof v === "number" ? new Date(v < 1e12 ? v * 1000 : v) : new Date(v);
  return isNaN(d.getTime()) ? String(v) : d.toLocaleString();
}

function handleError(e) {
  if (e && e.status === 401 && currentUser) {
    setUser(null);
    showMsg("Your session has expired. Please log in again.", "error");
    return;
  }
  showMsg((e && e.message) || "Something went wrong", "error");
}

/* ---------- photo cards & paged lists ---------- */
function photoCard(p) {
  const card = document.createElement("div");
  card.className = "card";
  const thumb = document.createElement("button");
  thumb.type = "button";
  thumb.className = "thumb";
  thumb.title = "Show all variants";
  const variants = p.variants || {};
  const src = safeUrl(variants.thumbnail);
  if (p.status === "ready" && src) {
    const img = document.createElement("img");
    img.src = src;
    img.alt = p.caption || "photo";
    img.loading = "lazy";
    thumb.appendChild(img);
  } else if (p.status === "failed") {
    thumb.classList.add("failed");
    thumb.textContent = "failed";
  } else {
    thumb.textContent = "processing…";
  }
  thumb.addEventListener("click", () => openOverlay(p));
  const meta = el("div", "meta");
  meta.append(el("div", "owner", p.owner), el("div", "caption", p.caption), el("div", "date", fmtDate(p.created_at)));
  card.append(thumb, meta);
  return card;
}

function pagedList(gridId, moreId, pathFn) {
  const grid = $(gridId), more = $(moreId);
  let cursor = null, gen = 0;
  async function load(reset) {
    const myGen = reset ? ++gen : gen;
    const path = pathFn();
    if (!path) return;
    more.disabled = true;
    try {
      const url = path + (!reset && cursor ? "?cursor=" + enc(cursor) : "");
      const data = await api("GET", url);
      if (myGen !== gen) return;
      if (reset) grid.replaceChildren();
      const photos = (data && data.photos) || [];
      photos.forEach((p) => grid.appendChild(photoCard(p)));
      if (!grid.children.length) grid.appendChild(el("p", "empty", "No photos yet."));
      cursor = (data && data.next_cursor) || null;
      more.classList.toggle("hidden", !cursor);
    } catch (e) { handleError(e); }
    finally { more.disabled = false; }
  }
  more.addEventListener("click", () => load(false));
  return {
    reset: () => load(true),
    clear: () => { gen++; cursor = null; grid.replaceChildren(); more.classList.add("hidden"); },
  };
}

const myList = pagedList("my-grid", "my-more", () => currentUser && "/api/users/" + enc(currentUser.username) + "/photos");
const userList = pagedList("user-grid", "user-more", () => viewedUser && "/api/users/" + enc(viewedUser) + "/photos");
const feedList = pagedList("feed-grid", "feed-more", () => currentUser && "/api/feed");

/* ---------- overlay ---------- */
const VARIANT_ORDER = ["original", "thumbnail", "square", "sharpened", "blurred"];
function openOverlay(p) {
  $("overlay-title").textContent = (p.caption || "Photo") + " — " + (p.owner || "");
  const body = $("overlay-body");
  body.replaceChildren();
  const variants = p.variants || {};
  const keys = VARIANT_ORDER.filter((k) => k in variants).concat(Object.keys(variants).filter((k) => !VARIANT_ORDER.includes(k)));
  if (!keys.length) {
    body.appendChild(el("p", "empty", p.status === "failed" ? "Processing failed; no variants available." : "Still processing; no variants yet."));
  } else {
    const wrap = el("div", "variants");
    keys.forEach((k) => {
      const url = safeUrl(variants[k]);
      const fig = document.createElement("figure");
      const cap = document.createElement("figcaption");
      if (url) {
        const img = document.createElement("img");
        img.src = url;
        img.alt = k;
        fig.appendChild(img);
        const a = document.createElement("a");
        a.href = url;
        a.target = "_blank";
        a.rel = "noopener noreferrer";
        a.textContent = k;
        cap.appendChild(a);
      } else {
        cap.textContent = k + " (unavailable)";
      }
      fig.appendChild(cap);
      wrap.appendChild(fig);
    });
    body.appendChild(wrap);
  }
  $("overlay").classList.remove("hidden");
  $("overlay-close").focus();
}
function closeOverlay() { $("overlay").classList.add("hidden"); }
$("overlay-close").addEventListener("click", closeOverlay);
$("overlay").addEventListener("click", (e) => { if (e.target === $("overlay")) closeOverlay(); });
document.addEventListener("keydown", (e) => { if (e.key === "Escape") closeOverlay(); });

/* ---------- auth ---------- */
function setUser(u) {
  currentUser = u;
  $("who").textContent = u ? "Signed in as " + u.username : "";
  $("logout").classList.toggle("hidden", !u);
  $("auth").classList.toggle("hidden", !!u);
  $("app").classList.toggle("hidden", !u);
  if (u) {
    myList.reset();
    feedList.reset();
  } else {
    viewedUser = null;
    myList.clear(); userList.clear(); feedList.clear();
    $("profile").classList.add("hidden");
  }
}

function authForm(formId, path, okText) {
  const form = $(formId);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const btn = form.querySelector("button");
    btn.disabled = true;
    try {
      const u = await api("POST", path, { username: form.username.value.trim(), password: form.password.value });
      form.reset();
      setUser(u);
      showMsg(okText + ", " + u.username + ".", "info");
    } catch (err) { handleError(err); }
    finally { btn.disabled = false; }
  });
}
authForm("signup-form", "/api/signup", "Welcome");
authForm("login-form", "/api/login", "Welcome back");

$("logout").addEventListener("click", async () => {
  try { await api("POST", "/api/logout"); } catch (e) { if (e.status !== 401) { handleError(e); return; } }
  setUser(null);
  showMsg("Logged out.", "info");
});

/* ---------- upload ---------- */
$("upload-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const form = e.target, status = $("upload-status"), bar = $("upload-progress"), btn = form.querySelector("button");
  const file = form.file.files[0];
  if (!file) { showMsg("Choose an image first.", "error"); return; }
  const fd = new FormData();
  fd.append("file", file);
  const caption = form.caption.value.trim();
  if (caption) fd.append("caption", caption);
  const xhr = new XMLHttpRequest();
  xhr.open("POST", "/api/photos");
  xhr.withCredentials = true;
  xhr.setRequestHeader("Accept", "application/json");
  bar.value = 0; bar.classList.remove("hidden"); btn.disabled = true;
  status.textContent = "Uploading…";
  xhr.upload.onprogress = (ev) => {
    if (ev.lengthComputable) bar.value = Math.round((ev.loaded / ev.total) * 100);
  };
  xhr.onload = () => {
    btn.disabled = false;
    let data = null;
    try { data = JSON.parse(xhr.responseText); } catch (_) {}
    if (xhr.status >= 200 && xhr.status < 300 && data && data.id !== undefined) {
      bar.value = 100;
      form.reset();
      status.textContent = "Uploaded. Processing…";
      myList.reset();
      pollPhoto(data.id);
    } else {
      bar.classList.add("hidden");
      status.textContent = "";
      const err = new Error((data && data.error) || ("Upload failed (HTTP " + xhr.status + ")"));
      err.status = xhr.status;
      handleError(err);
    }
  };
  xhr.onerror = () => {
    btn.disabled = false; bar.classList.add("hidden"); status.textContent = "";
    showMsg("Upload failed: network error.", "error");
  };
  xhr.send(fd);
});

function pollPhoto(id) {
  const status = $("upload-status");
  const tick = async () => {
    if (!currentUser) return;
    try {
      const p = await api("GET", "/api/photos/" + enc(id));
      if (p.status === "processing") { setTimeout(tick, 1000); return; }
      $("upload-progress").classList.add("hidden");
      status.textContent = p.status === "ready" ? "Photo is ready." : "Processing failed.";
      if (p.status === "ready") showMsg("Your photo is ready.", "info");
      else showMsg("Processing of your photo failed.", "error");
      myList.reset();
      feedList.reset();
      if (viewedUser && viewedUser === currentUser.username) userList.reset();
    } catch (e) {
      $("upload-progress").classList.add("hidden");
      status.textContent = "";
      handleError(e);
    }
  };
  setTimeout(tick, 1000);
}

/* ---------- view user / follow ---------- */
async function loadProfile(name) {
  const prof = await api("GET", "/api/users/" + enc(name));
  $("profile-name").textContent = prof.username;
  $("profile-counts").textContent = prof.followers + " followers · " + prof.following + " following";
  const btn = $("follow-btn");
  const self = currentUser && prof.username === currentUser.username;
  btn.textContent = prof.followed_by_me ? "Unfollow" : "Follow";
  btn.className = (prof.followed_by_me ? "secondary" : "") + (self ? " hidden" : "");
  btn.dataset.following = prof.followed_by_me ? "1" : "0";
  $("profile").classList.remove("hidden");
  return prof;
}

$("view-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const name = e.target.username.value.trim().toLowerCase();
  if (!name) return;
  try {
    const prof = await loadProfile(name);
    viewedUser = prof.username;
    clearMsg();
    userList.reset();
  } catch (err) {
    viewedUser = null;
    $("profile").classList.add("hidden");
    userList.clear();
    handleError(err);
  }
});

$("follow-btn").addEventListener("click", async () => {
  if (!viewedUser) return;
  const btn = $("follow-btn");
  const following = btn.dataset.following === "1";
  btn.disabled = true;
  try {
    await api(following ? "DELETE" : "POST", "/api/users/" + enc(viewedUser) + "/follow");
    await loadProfile(viewedUser);
    feedList.reset();
  } catch (err) { handleError(err); }
  finally { btn.disabled = false; }
});

$("feed-refresh").addEventListener("click", () => feedList.reset());

/* ---------- boot ---------- */
(async function init() {
  try { setUser(await api("GET", "/api/me")); }
  catch (e) {
    setUser(null);
    if (e.status !== 401) showMsg(e.message, "error");
  }
})();
