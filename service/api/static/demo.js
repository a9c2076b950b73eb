// The demo page: what the mini-program does, against the same API.
//
// Log in (POST /api/dev-login on the local stack: the mini-program's wx.login() and
// POST /api/login need WeChat), create a task with an Idempotency-Key, follow its
// progress with waiting polls (?wait=25&since=<the last updated_at>: the server answers
// as soon as the task changes), play the video, list "my videos". Errors are shown as the mini-program
// shows them: a 400 next to its field, 422 content_rejected's message, 429 and 503 with
// their Retry-After (a countdown; a create that got 503 is retried with the same key).
(() => {
  "use strict";

  // A poll is held by the server until the task changes, at most this long (it cuts
  // longer waits to PROGRESS_WAIT_MAX_S); an answer with no change sooner than
  // POLL_INTERVAL_MS (the server held nothing: its caps) is followed after the rest.
  const WAIT_S = 25;
  const POLL_INTERVAL_MS = 1000;
  // Seconds to wait when an answer names none (a network error).
  const DEFAULT_RETRY_S = 2;
  // A create that got 503 is sent again (same Idempotency-Key) at most this often.
  const CREATE_RETRIES = 3;
  const MINE_LIMIT = 10;
  const FIELDS = ["product_name", "theme", "duration"];
  const FIELD_LABELS = { product_name: "product", theme: "theme", duration: "duration" };
  const STORE = { lang: "vt.lang", user: "vt.user", token: "vt.token", names: "vt.names" };

  const TEXT = {
    zh: {
      title: "AI 营销视频",
      intro: "输入产品名称和主题，生成一段竖屏短视频。",
      product: "产品名称",
      productHint: "例如：高强度螺栓",
      theme: "主题",
      themeHint: "例如：品质保证",
      duration: "时长",
      seconds: "{n} 秒",
      submit: "生成视频",
      submitting: "提交中…",
      waiting: "请稍候（{s} 秒）",
      langButton: "EN",
      langLabel: "Switch to English",
      loggingIn: "登录中…",
      loggedIn: "已登录（开发登录）：{user}",
      noDevLogin: "此服务器未开启开发登录（DEV_LOGIN）：以匿名身份创建，“我的视频”需要小程序登录。",
      task: "当前任务",
      pending: "排队中…",
      generating: "生成第 {part}/{total} 段",
      merging: "合成视频中…",
      uploading: "上传中…",
      completed: "已完成",
      failed: "生成失败",
      rejected: "内容未通过审核",
      mine: "我的视频",
      mineEmpty: "还没有视频，先生成一个吧。",
      mineNeedsLogin: "登录后可查看“我的视频”。",
      refresh: "刷新",
      retryIn: "{s} 秒后可再试",
      autoRetry: "服务繁忙，{s} 秒后自动重试…",
      pollRetry: "服务繁忙，{s} 秒后刷新进度…",
      offline: "网络错误",
      needsLogin: "请先登录（小程序登录）",
      notFound: "任务不存在",
      unknownError: "出错了（{status}）：{message}",
      untitled: "视频 {id}",
      footer: "本地演示 · 与小程序调用相同的接口",
      fieldProblem: "请检查{label}：",
    },
    en: {
      title: "AI marketing video",
      intro: "Type a product name and a theme to make a short vertical video.",
      product: "Product name",
      productHint: "e.g. High-strength bolt",
      theme: "Theme",
      themeHint: "e.g. Quality assured",
      duration: "Duration",
      seconds: "{n} s",
      submit: "Make the video",
      submitting: "Sending…",
      waiting: "Please wait ({s} s)",
      langButton: "中文",
      langLabel: "切换到中文",
      loggingIn: "Logging in…",
      loggedIn: "Logged in (development login): {user}",
      noDevLogin: "This server has no development login (DEV_LOGIN): videos are made anonymously; \"my videos\" needs the mini-program's login.",
      task: "Current video",
      pending: "Queued…",
      generating: "Making part {part} of {total}",
      merging: "Merging the parts…",
      uploading: "Uploading…",
      completed: "Done",
      failed: "Failed",
      rejected: "The content was refused",
      mine: "My videos",
      mineEmpty: "No video yet: make one above.",
      mineNeedsLogin: "Log in to see your videos.",
      refresh: "Refresh",
      retryIn: "try again in {s} s",
      autoRetry: "The service is busy; retrying in {s} s…",
      pollRetry: "The service is busy; refreshing in {s} s…",
      offline: "Network error",
      needsLogin: "Log in first (the mini-program's login)",
      notFound: "No such task",
      unknownError: "Something went wrong ({status}): {message}",
      untitled: "Video {id}",
      footer: "Local demo · the same API calls as the mini-program",
      fieldProblem: "",
    },
  };

  const $ = (id) => document.getElementById(id);
  const state = {
    lang: load(STORE.lang) === "en" ? "en" : "zh",
    mode: "pending", // "dev" (logged in), "none" (no development login), "pending"
    user: null,
    token: null,
    busy: false,
    blockedUntil: 0,
    taskId: null,
    last: null, // the last progress answer of the current task
    pollGen: 0,
    mine: [],
    countdowns: {},
  };
  window.demoState = state;

  // ---- small helpers -------------------------------------------------------------------

  function load(key) {
    try { return window.localStorage.getItem(key); } catch (_e) { return null; }
  }

  function save(key, value) {
    try {
      if (value === null) window.localStorage.removeItem(key);
      else window.localStorage.setItem(key, value);
    } catch (_e) { /* private mode: the page still works, it just forgets */ }
  }

  function t(key, values) {
    const text = (TEXT[state.lang][key] || TEXT.zh[key] || key);
    return text.replace(/\{(\w+)\}/g, (_m, name) => (values && name in values ? values[name] : ""));
  }

  // The API's messages to people are "中文 / English" where they have both.
  function pick(message) {
    if (typeof message !== "string") return "";
    const at = message.indexOf(" / ");
    if (at < 0) return message;
    return state.lang === "zh" ? message.slice(0, at) : message.slice(at + 3);
  }

  function randomHex(bytes) {
    const values = window.crypto.getRandomValues(new Uint8Array(bytes));
    return Array.from(values, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // crypto.randomUUID needs a secure context; http://<LAN address> is not one.
  function newKey() {
    return window.crypto.randomUUID ? window.crypto.randomUUID() : randomHex(16);
  }

  function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

  // Calls tick(secondsLeft) now and every second, then done(); returns a cancel function.
  function countdown(name, seconds, tick, done) {
    stopCountdown(name);
    let left = Math.max(1, Math.ceil(seconds));
    tick(left);
    const timer = setInterval(() => {
      left -= 1;
      if (left <= 0) {
        stopCountdown(name);
        if (done) done();
      } else {
        tick(left);
      }
    }, 1000);
    state.countdowns[name] = timer;
  }

  function stopCountdown(name) {
    if (state.countdowns[name]) clearInterval(state.countdowns[name]);
    delete state.countdowns[name];
  }

  function names() {
    try { return JSON.parse(load(STORE.names) || "{}"); } catch (_e) { return {}; }
  }

  function rememberName(taskId, name) {
    const all = names();
    all[taskId] = name;
    const ids = Object.keys(all);
    for (const old of ids.slice(0, Math.max(0, ids.length - 100))) delete all[old];
    save(STORE.names, JSON.stringify(all));
  }

  // ---- the API -------------------------------------------------------------------------

  async function call(method, path, body, headers) {
    const sent = Object.assign({ Accept: "application/json" }, headers || {});
    if (body !== undefined) sent["Content-Type"] = "application/json";
    if (state.token) sent.Authorization = "Bearer " + state.token;
    let response;
    try {
      response = await fetch(path, {
        method, headers: sent, body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (_e) {
      return { status: 0, data: null, retryAfter: null, network: true };
    }
    let data = null;
    try { data = await response.json(); } catch (_e) { data = null; }
    const retry = parseInt(response.headers.get("Retry-After") || "", 10);
    return {
      status: response.status, data, network: false,
      retryAfter: Number.isFinite(retry) && retry > 0 ? retry : null,
    };
  }

  // As call(), logging in again once when the token was refused (expired, rotated).
  async function authed(method, path, body, headers) {
    let answer = await call(method, path, body, headers);
    if (answer.status === 401 && state.mode === "dev") {
      state.token = null;
      save(STORE.token, null);
      if (await login()) answer = await call(method, path, body, headers);
    }
    return answer;
  }

  function errorOf(answer) {
    return (answer.data && answer.data.error) || {};
  }

  // ---- login ---------------------------------------------------------------------------

  async function login() {
    const stored = (() => {
      try { return JSON.parse(load(STORE.token) || "null"); } catch (_e) { return null; }
    })();
    state.user = load(STORE.user);
    if (!state.user) {
      state.user = "demo-" + randomHex(4);
      save(STORE.user, state.user);
    }
    if (stored && stored.token && stored.user === state.user && stored.expiresAt > Date.now() + 60000) {
      state.token = stored.token;
      state.mode = "dev";
      renderWho();
      return true;
    }
    state.mode = "pending";
    renderWho();
    for (let attempt = 0; attempt < 3; attempt += 1) {
      const answer = await call("POST", "/api/dev-login", { user: state.user });
      if (answer.status === 200 && answer.data && answer.data.token) {
        state.token = answer.data.token;
        state.mode = "dev";
        save(STORE.token, JSON.stringify({
          token: state.token, user: state.user,
          expiresAt: Date.now() + answer.data.expires_in * 1000,
        }));
        renderWho();
        return true;
      }
      if (answer.status === 404 || answer.status === 405) break; // no development login here
      await sleep((answer.retryAfter || DEFAULT_RETRY_S) * 1000);
    }
    state.mode = "none";
    state.token = null;
    renderWho();
    return false;
  }

  // ---- creating ------------------------------------------------------------------------

  async function submit(event) {
    event.preventDefault();
    if (state.busy || state.blockedUntil > Date.now()) return;
    clearFieldErrors();
    hide("form-message");
    const body = {
      product_name: $("product_name").value,
      theme: $("theme").value,
      duration: Number($("duration").value),
      type: "video",
    };
    // One key for this submission: a retried create answers the same task.
    const key = newKey();
    state.busy = true;
    renderSubmit();
    try {
      for (let attempt = 0; ; attempt += 1) {
        const answer = await authed("POST", "/api/generate-video", body, { "Idempotency-Key": key });
        if (answer.status === 202) {
          rememberName(answer.data.task_id, body.product_name.trim());
          startTask(answer.data.task_id);
          loadMine();
          return;
        }
        const retryable = answer.network || (answer.status === 503 && errorOf(answer).code === "unavailable");
        if (retryable && attempt < CREATE_RETRIES) {
          const wait = answer.retryAfter || DEFAULT_RETRY_S;
          await new Promise((resolve) => countdown("create", wait, (s) => {
            notice("form-message", t("autoRetry", { s }), "warn");
          }, resolve));
          continue;
        }
        createFailed(answer);
        return;
      }
    } finally {
      state.busy = false;
      renderSubmit();
    }
  }

  function createFailed(answer) {
    const error = errorOf(answer);
    const message = pick(error.message) || (answer.network ? t("offline") : "");
    if (answer.status === 400 && FIELDS.includes(error.field)) {
      fieldError(error.field, t("fieldProblem", { label: t(FIELD_LABELS[error.field]) }) + message);
      return;
    }
    if (answer.status === 422) { // content_rejected: as wx.showModal would say it
      notice("form-message", message, "error");
      return;
    }
    if (answer.status === 429 || answer.status === 503 || answer.network) {
      block(answer.retryAfter || DEFAULT_RETRY_S, message);
      return;
    }
    if (answer.status === 401) {
      notice("form-message", t("needsLogin") + (message ? "：" + message : ""), "error");
      return;
    }
    notice("form-message", t("unknownError", { status: answer.status, message }), "error");
  }

  // Refuse to create until Retry-After has passed, counting down.
  function block(seconds, message) {
    state.blockedUntil = Date.now() + seconds * 1000;
    countdown("block", seconds, (s) => {
      notice("form-message", (message ? message + " · " : "") + t("retryIn", { s }), "warn");
      renderSubmit(s);
    }, () => {
      state.blockedUntil = 0;
      hide("form-message");
      renderSubmit();
    });
  }

  // ---- progress ------------------------------------------------------------------------

  function startTask(taskId) {
    state.taskId = taskId;
    state.last = null;
    state.pollGen += 1;
    stopCountdown("poll");
    const player = $("player");
    player.hidden = true;
    player.removeAttribute("src");
    player.load();
    hide("task-message");
    $("task").hidden = false;
    $("task-name").textContent = names()[taskId] || t("untitled", { id: taskId.slice(0, 8) });
    renderProgress();
    poll(taskId, state.pollGen);
  }

  async function poll(taskId, gen) {
    const seen = state.last && state.last.task_id === taskId ? state.last.updated_at : null;
    const query = seen ? "?wait=" + WAIT_S + "&since=" + encodeURIComponent(seen) : "";
    const sent = Date.now();
    const answer = await authed("GET", "/api/progress/" + encodeURIComponent(taskId) + query);
    if (gen !== state.pollGen) return; // another task was opened meanwhile
    if (answer.status === 200) {
      hide("task-message");
      const unchanged = seen !== null && answer.data.updated_at === seen;
      state.last = answer.data;
      renderProgress();
      if (answer.data.status === "completed") {
        play(answer.data.video_url);
        loadMine();
      } else if (answer.data.status === "failed") {
        const message = answer.data.error_message || "";
        if (message) notice("task-message", message, "error");
        loadMine();
      } else {
        const soon = unchanged ? Math.max(0, POLL_INTERVAL_MS - (Date.now() - sent)) : 0;
        setTimeout(() => poll(taskId, gen), soon);
      }
      return;
    }
    if (answer.network || answer.status === 503 || answer.status === 429) {
      countdown("poll", answer.retryAfter || DEFAULT_RETRY_S, (s) => {
        if (gen === state.pollGen) notice("task-message", t("pollRetry", { s }), "warn");
      }, () => { if (gen === state.pollGen) poll(taskId, gen); });
      return;
    }
    const error = errorOf(answer);
    notice("task-message", answer.status === 404 ? t("notFound")
      : t("unknownError", { status: answer.status, message: pick(error.message) }), "error");
  }

  function play(url) {
    const player = $("player");
    if (player.getAttribute("src") !== url) {
      player.src = url;
      player.load();
    }
    player.hidden = false;
  }

  function stageText(p) {
    if (!p) return t("pending");
    switch (p.status) {
      case "generating":
        return t("generating", { part: Math.min(p.current_part + 1, p.total_parts), total: p.total_parts });
      case "failed":
        return p.error_code === "content_rejected" ? t("rejected") : t("failed");
      case "pending": case "merging": case "uploading": case "completed":
        return t(p.status);
      default:
        return p.status;
    }
  }

  // ---- my videos -----------------------------------------------------------------------

  async function loadMine() {
    if (state.mode !== "dev") {
      state.mine = [];
      renderMine();
      return;
    }
    const answer = await authed("GET", "/api/tasks?limit=" + MINE_LIMIT);
    if (answer.status === 200) {
      state.mine = answer.data.tasks;
      renderMine();
    } else if (answer.network || answer.status === 503) {
      setTimeout(loadMine, (answer.retryAfter || DEFAULT_RETRY_S) * 1000);
    }
  }

  function badgeClass(status) {
    if (status === "completed" || status === "failed") return status;
    return status === "pending" ? "" : "running";
  }

  // ---- rendering -----------------------------------------------------------------------

  function show(id) { $(id).hidden = false; }
  function hide(id) { $(id).hidden = true; }

  function notice(id, text, kind) {
    const el = $(id);
    el.textContent = text;
    el.className = "notice" + (kind === "error" ? " error" : "");
    show(id);
  }

  function fieldError(name, text) {
    const input = $(name);
    input.setAttribute("aria-invalid", "true");
    $(name + "-error").textContent = text;
    input.focus();
  }

  function clearFieldErrors() {
    for (const name of FIELDS) {
      $(name).removeAttribute("aria-invalid");
      $(name + "-error").textContent = "";
    }
  }

  function renderSubmit(secondsLeft) {
    const button = $("submit");
    const blocked = state.blockedUntil > Date.now();
    button.disabled = state.busy || blocked;
    if (state.busy) button.textContent = t("submitting");
    else if (blocked) button.textContent = t("waiting", { s: secondsLeft || Math.ceil((state.blockedUntil - Date.now()) / 1000) });
    else button.textContent = t("submit");
  }

  function renderWho() {
    const who = $("who");
    if (state.mode === "dev") who.textContent = t("loggedIn", { user: "dev:" + state.user });
    else if (state.mode === "none") who.textContent = t("noDevLogin");
    else who.textContent = t("loggingIn");
  }

  function renderProgress() {
    const p = state.last;
    const percent = p ? p.progress : 0;
    $("stage").textContent = stageText(p);
    $("bar").value = percent;
    $("percent").textContent = percent + "%";
    if (state.taskId) {
      $("task-name").textContent = names()[state.taskId] || t("untitled", { id: state.taskId.slice(0, 8) });
    }
  }

  function renderMine() {
    const list = $("mine");
    list.replaceChildren();
    const known = names();
    for (const task of state.mine) {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.taskId = task.task_id;
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = known[task.task_id] || t("untitled", { id: task.task_id.slice(0, 8) });
      const when = document.createElement("span");
      when.className = "when";
      when.textContent = new Date(task.created_at).toLocaleString(state.lang === "zh" ? "zh-CN" : "en-GB", {
        month: "numeric", day: "numeric", hour: "2-digit", minute: "2-digit",
      });
      const badge = document.createElement("span");
      badge.className = "badge " + badgeClass(task.status);
      badge.textContent = stageText(task);
      button.append(name, when, badge);
      button.addEventListener("click", () => {
        startTask(task.task_id);
        $("task").scrollIntoView({ behavior: "smooth", block: "start" });
      });
      item.append(button);
      list.append(item);
    }
    const empty = $("mine-empty");
    empty.hidden = state.mine.length > 0;
    empty.textContent = state.mode === "dev" ? t("mineEmpty") : t("mineNeedsLogin");
  }

  function applyLanguage() {
    document.documentElement.lang = state.lang === "zh" ? "zh-CN" : "en";
    document.title = t("title") + " · video-tasks";
    for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
    for (const el of document.querySelectorAll("[data-i18n-placeholder]")) {
      el.placeholder = t(el.dataset.i18nPlaceholder);
    }
    for (const option of $("duration").options) option.textContent = t("seconds", { n: option.value });
    const toggle = $("lang");
    toggle.textContent = t("langButton");
    toggle.setAttribute("aria-label", t("langLabel"));
    toggle.lang = state.lang === "zh" ? "en" : "zh-CN";
    renderSubmit();
    renderWho();
    renderProgress();
    renderMine();
  }

  // ---- start ---------------------------------------------------------------------------

  async function start() {
    $("create").addEventListener("submit", submit);
    $("lang").addEventListener("click", () => {
      state.lang = state.lang === "zh" ? "en" : "zh";
      save(STORE.lang, state.lang);
      applyLanguage();
    });
    $("refresh").addEventListener("click", loadMine);
    for (const name of FIELDS) {
      $(name).addEventListener("input", () => {
        $(name).removeAttribute("aria-invalid");
        $(name + "-error").textContent = "";
      });
    }
    applyLanguage();
    await login();
    await loadMine();
    // Back on the page with a video still being made: follow it again.
    const unfinished = state.mine.find((task) => task.status !== "completed" && task.status !== "failed");
    if (unfinished && !state.taskId) startTask(unfinished.task_id);
  }

  start();
})();
