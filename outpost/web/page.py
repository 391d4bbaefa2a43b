"""The status page: one HTML document that polls /api/status (no CDN, no build step)."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Outpost node</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #1a202c; }
h1 { font-size: 1.3em; margin: 0 0 .2em; } h2 { font-size: 1.05em; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; min-width: 40%; }
th, td { text-align: left; padding: .2em .8em .2em 0; border-bottom: 1px solid #e2e8f0; }
th { font-weight: 600; color: #4a5568; } .muted { color: #718096; }
.bar { display: inline-block; width: 90px; height: 8px; background: #e2e8f0; }
.bar i { display: block; height: 8px; background: #2b6cb0; }
.bad { color: #c53030; } .ok { color: #2f855a; }
</style></head>
<body>
<h1 id="title">Outpost node</h1>
<div class="muted" id="updated">loading…</div>
<h2>Link</h2><table id="peers"></table>
<p><img id="chart" alt="throughput over the last hour" src="chart.svg"></p>
<h2>Bundles</h2><table id="sending"></table>
<h2>Arriving</h2><table id="reassembling"></table>
<h2>Releases</h2><table id="releases"></table>
<h2>Applies</h2><table id="applies"></table>
<h2>Registry</h2><table id="registry"></table>
<h2>Quarantine</h2><table id="quarantine"></table>
<script>
const token = new URLSearchParams(location.search).get("token");
const q = token ? "?token=" + encodeURIComponent(token) : "";
const esc = s => String(s ?? "").replace(/[&<>"]/g, c =>
  ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
const size = n => n < 1024 ? n + " B" : n < 1048576 ? (n / 1024).toFixed(1) + " KiB"
  : n < 1073741824 ? (n / 1048576).toFixed(1) + " MiB" : (n / 1073741824).toFixed(2) + " GiB";
const ago = s => s == null ? "" : s < 90 ? Math.round(s) + " s" : s < 5400
  ? Math.round(s / 60) + " min" : (s / 3600).toFixed(1) + " h";
const short = s => esc(String(s ?? "").slice(0, 12));
function table(id, head, rows, empty) {
  const el = document.getElementById(id);
  if (!rows.length) { el.innerHTML = "<tr><td class=muted>" + empty + "</td></tr>"; return; }
  el.innerHTML = "<tr>" + head.map(h => "<th>" + h + "</th>").join("") + "</tr>" +
    rows.map(r => "<tr>" + r.map(c => "<td>" + c + "</td>").join("") + "</tr>").join("");
}
function bar(done, all) {
  const pct = all ? Math.round(100 * done / all) : 0;
  return "<span class=bar><i style='width:" + pct + "%'></i></span> " + pct + "%";
}
function win(w, now) {  // the contact plan's window now and the next one
  if (!w) return "<span class=muted>no plan</span>";
  if (w.up) return "<span class=ok>up</span>" + (w.until == null ? "" : ", " +
    ago(w.until - now) + " left");
  if (w.next_start == null) return "<span class=bad>down</span>, no window ahead";
  return "<span class=bad>down</span>, up in " + ago(w.next_start - now) +
    (w.next_end == null ? "" : " for " + ago(w.next_end - w.next_start));
}
const STAGES = ["queued", "sent", "acked", "applied"];
function journey(b) {
  const stages = b.release ? STAGES : STAGES.slice(0, 3);  // only a release's are applied
  const at = stages.indexOf(b.stage);
  const tag = "<span class=journey data-id='" + esc(b.id) + "' data-stage='" + esc(b.stage) +
    "'>";
  if (at < 0) return tag + "<span class=bad>" + esc(b.stage) + "</span> " + esc(b.why) +
    "</span>";
  return tag + stages.map((st, i) => i < at ? st : i === at ? "<b>" + st + "</b>"
    : "<span class=muted>" + st + "</span>").join(" › ") + "</span>";
}
function render(s) {
  document.getElementById("title").textContent = s.role + " node " + s.name;
  document.getElementById("updated").textContent = "home " + s.home + " · updated " +
    new Date(s.now * 1000).toLocaleTimeString();
  table("peers", ["peer", "round trip", "samples", "outbox files", "clock", "window"],
    s.peers.map(p => [esc(p.name), ago(p.srtt), p.rtt_samples, p.outbox_files,
      esc(p.clock || (p.clock_offset == null ? "–" : "ok")), win(p.window, s.now)]),
    "no peers trusted yet");
  table("sending", ["bundle", "kind", "to", "size", "journey", "acked", "left", "ETA", "age"],
    s.bundles.map(b => [short(b.id), esc(b.kind), esc(b.peer), size(b.size),
      journey(b), bar(b.percent, 100) + " · " + b.units + " unit(s)",
      b.bytes_left ? size(b.bytes_left) : "", b.eta == null ? "" : ago(b.eta), ago(b.age)]),
    "nothing sent yet");
  table("reassembling", ["bundle", "from", "kind", "size", "received"],
    s.reassembling.map(r => [short(r.parent), esc(r.src), esc(r.kind), size(r.total),
      bar(r.received, r.total)]), "nothing half-arrived");
  if (s.role === "earth") {
    table("releases", ["outpost", "channel", "config", "running", "last report", "heard",
      "backlog", "layers held", "images held"],
      s.outposts.map(o => [esc(o.peer), esc(o.channel), short(o.commit) +
        (o.behind ? " <span class=bad>behind</span>" : ""), short(o.running),
        o.last_report ? esc(o.last_report.event) + " " + short(o.last_report.release) : "",
        o.heard_ago == null ? "never" : ago(o.heard_ago) + " ago",
        o.backlog_messages ? o.backlog_messages + " msg, " + size(o.backlog_bytes) : "",
        o.layers, o.images]), "no outposts");
    table("applies", ["from", "event", "release", "when"],
      s.reports.map(r => [esc(r.peer), esc(r.event), short(r.release), ago(s.now - r.at)]),
      "no reports yet");
  } else {
    table("releases", ["release", "state", "note"], s.releases.map(r =>
      [short(r.commit_id), esc(r.state), esc(r.note)]), "no release received yet");
    table("applies", ["apply", "release", "state", "trigger", "started"],
      s.applies.map(a => [short(a.id), short(a.commit), a.state === "applied"
        ? "<span class=ok>applied</span>" : esc(a.state), esc(a.trigger),
        a.started ? ago(s.now - a.started) + " ago" : ""]), "nothing applied yet");
  }
  table("quarantine", ["file", "reason", "error"], s.quarantine.map(x =>
    [esc(x.file), esc(x.reason), esc(x.error)]), "nothing refused");
}
async function registry() {
  try {
    const r = await (await fetch("api/registry" + q, {cache: "no-store"})).json();
    const rows = [];
    r.repositories.forEach(repo => repo.tags.forEach(t => rows.push([esc(repo.name),
      esc(t.tag), short((t.image_id || "").replace("sha256:", "")),
      t.size == null ? "" : size(t.size)])));
    table("registry", ["repository", "tag", "image ID", "size"], rows, r.error
      ? "<span class=bad>" + esc(r.error) + "</span>"
      : r.registry ? "no images yet" : "no registry here (Earth, or none set)");
  } catch (e) { /* the status poll reports a node that does not answer */ }
}
let polls = 0;
async function poll() {
  try {
    const r = await fetch("api/status" + q, {cache: "no-store"});
    if (!r.ok) throw new Error(r.status + " " + await r.text());
    render(await r.json());
    if (polls++ % 5 === 0) {
      document.getElementById("chart").src = "chart.svg" + q + (q ? "&" : "?") + "t=" +
        Date.now();
      registry();
    }
  } catch (e) {
    document.getElementById("updated").textContent = "cannot read the node: " + e.message;
  }
}
poll(); setInterval(poll, 2000);
</script></body></html>
"""
