// The console's behaviour: actions, the weights chart, the live event stream, login.
// No inline scripts anywhere (the Content-Security-Policy forbids them).

// Older consoles kept the login token for this tab; the session cookie is enough now.
sessionStorage.removeItem("xplane.token");

function csrf() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.content : "";
}

// Every state-changing call: the session cookie (an identity of every API route) plus
// its CSRF token.
export async function post(path, body) {
  const headers = { "Content-Type": "application/json", "X-CSRF-Token": csrf() };
  const response = await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers,
    body: JSON.stringify(body),
  });
  let answer;
  try {
    answer = await response.json();
  } catch {
    answer = { detail: response.statusText };
  }
  return { status: response.status, answer };
}

function initActions() {
  for (const form of document.querySelectorAll("form.action")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const box = form.closest(".actions").querySelector(".answer");
      const reason = form.elements.reason.value.trim();
      const button = form.querySelector("button");
      button.disabled = true;
      try {
        const extra = form.dataset.body ? JSON.parse(form.dataset.body) : {};
        const { status, answer } = await post(form.dataset.path, { ...extra, reason });
        box.textContent = `${status} ${JSON.stringify(answer, null, 2)}`;
        box.dataset.status = String(status);
      } catch (err) {
        box.textContent = `request failed: ${err}`;
      } finally {
        box.hidden = false;
        button.disabled = false;
      }
    });
  }
}

const PALETTE = ["#2f7ed8", "#e4572e", "#29a36a", "#f3a712", "#8e44ad", "#16a5a5", "#c0392b", "#7f8c8d"];

async function initCharts() {
  const boxes = document.querySelectorAll("[data-chart-service]");
  if (!boxes.length || typeof window.uPlot !== "function") return;
  const response = await fetch("/console/traffic?minutes=60", { credentials: "same-origin" });
  if (!response.ok) return;
  const traffic = await response.json();
  for (const box of boxes) {
    const series = traffic.series.filter((s) => s.service === box.dataset.chartService);
    drawChart(box, series, traffic.since, traffic.until);
  }
}

function drawChart(box, series, since, until) {
  // One shared time axis: every change of any region, each region's value held until its next.
  const times = new Set([Date.parse(since) / 1000, Date.parse(until) / 1000]);
  for (const s of series) for (const p of s.points) times.add(Date.parse(p.at) / 1000);
  const xs = [...times].sort((a, b) => a - b);
  const data = [xs];
  const lines = [{}];
  series.forEach((s, i) => {
    const values = [];
    let j = 0;
    let current = null;
    for (const x of xs) {
      while (j < s.points.length && Date.parse(s.points[j].at) / 1000 <= x) {
        if (s.points[j].weight !== null) current = s.points[j].weight;
        j += 1;
      }
      values.push(current);
    }
    data.push(values);
    lines.push({ label: s.region, stroke: PALETTE[i % PALETTE.length], width: 2, paths: window.uPlot.paths.stepped({ align: 1 }) });
  });
  const width = Math.max(280, box.clientWidth || 600);
  const chart = new window.uPlot(
    { width, height: 220, series: lines, axes: [{}, { label: "published weight" }], legend: { live: false } },
    data,
    box,
  );
  new ResizeObserver(() => chart.setSize({ width: Math.max(280, box.clientWidth), height: 220 })).observe(box);
}

function eventRow(e) {
  const tr = document.createElement("tr");
  tr.className = "ev new";
  tr.dataset.kind = e.kind;
  const cells = [
    new Date(e.at).toISOString().slice(11, 19),
    e.kind,
    e.service || "",
    e.region || "",
    e.node_id || "",
    e.message,
  ];
  cells.forEach((text, i) => {
    const td = document.createElement("td");
    if (i === 1) {
      const code = document.createElement("code");
      code.textContent = text;
      td.appendChild(code);
    } else if (i === 4 && text) {
      const a = document.createElement("a");
      a.href = `/ui/nodes/${encodeURIComponent(text)}`;
      a.textContent = text;
      td.appendChild(a);
    } else {
      td.textContent = text;
    }
    if (i === 5) td.className = "msg";
    tr.appendChild(td);
  });
  return tr;
}

function initEvents() {
  const table = document.getElementById("events");
  if (!table) return;
  const badge = document.getElementById("live");
  const params = new URLSearchParams(window.location.search);
  const query = new URLSearchParams();
  for (const key of ["kind", "service", "region", "node"]) {
    if (params.get(key)) query.set(key, params.get(key));
  }
  query.set("after", table.dataset.lastId || "0");
  const source = new EventSource(`/console/events/stream?${query}`);
  source.addEventListener("open", () => {
    badge.textContent = "live";
    badge.dataset.state = "live";
  });
  source.addEventListener("error", () => {
    badge.textContent = "reconnecting";
    badge.dataset.state = "reconnecting";
  });
  source.addEventListener("xplane", (message) => {
    const body = table.tBodies[0];
    body.insertBefore(eventRow(JSON.parse(message.data)), body.firstChild);
    while (body.rows.length > 500) body.deleteRow(-1);
  });
}

const REFRESH_MS = 10_000;

// The overview's numbers follow the store without a reload.
function initOverviewRefresh() {
  if (document.body.dataset.page !== "overview") return;
  setInterval(async () => {
    const response = await fetch("/console/overview", { credentials: "same-origin" });
    if (!response.ok) return;
    const view = await response.json();
    for (const svc of view.services) {
      const section = document.querySelector(`section.service[data-service="${CSS.escape(svc.service)}"]`);
      if (!section) continue;
      for (const r of svc.regions) {
        const name = CSS.escape(r.region);
        const row = section.querySelector(`tr.region[data-region="${name}"]`);
        const tile = section.querySelector(`.tile[data-region="${name}"]`);
        if (row) {
          row.className = `region ${r.health}`;
          row.querySelector(".effective").textContent = r.effective_weight.toFixed(1);
          row.querySelector(".why").textContent = r.reason;
          row.querySelector(".ready").textContent = `${r.ready_nodes}/${r.total_nodes}`;
        }
        if (tile) {
          tile.className = `tile ${r.health}`;
          tile.title = `${r.region}: ${r.reason}`;
          tile.querySelector("span").textContent = Math.round(r.effective_weight);
        }
      }
    }
    const stamp = document.getElementById("generated");
    if (stamp) stamp.textContent = new Date(view.generated_at).toISOString().slice(11, 19);
  }, REFRESH_MS);
}

initOverviewRefresh();
initActions();
initEvents();
window.addEventListener("load", () => {
  initCharts().catch((err) => console.warn("chart:", err));
});
