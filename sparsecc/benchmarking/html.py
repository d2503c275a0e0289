"""A self-contained HTML report: the Markdown tables as HTML, with plots embedded as base64 PNG."""

from __future__ import annotations

import html as _html
from typing import Any, Sequence

from .format import dims_text, machine_line, ms, ratio_text, recipe_text, size
from .plots import latency_plot, layer_plot, sparsity_speedup_plot

__all__ = ["to_html", "compare_html"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left}
th{background:#f2f2f2} .faster{color:#1a7f37;font-weight:600} .slower{color:#b42318;font-weight:600}
.none{color:#666} .warn{background:#fff4ce;padding:.5em} img{max-width:100%;margin:.3em 1em .3em 0}
.plots{display:flex;flex-wrap:wrap;align-items:flex-start} code{background:#f6f6f6}
"""


def _e(x: Any) -> str:
    return _html.escape(str(x))


def _table(head: Sequence[str], rows: list[Sequence[str]]) -> str:
    h = "".join(f"<th>{_e(c)}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _cls(label: str | None) -> str:
    return {"faster": "faster", "slower": "slower"}.get(label or "", "none")


def _img(b64: str | None, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{b64}">' if b64 else ""


def _run_rows(b: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in b["runs"]:
        if r["status"] == "error":
            rows.append([_e(r["backend"]), _e(r["threads"]), "", "", "", "", f'<span class="slower">error</span>: {_e(r["error"])}', "", "", "", ""])
            continue
        d, s = (r.get("variants") or {}).get("dense") or {}, (r.get("variants") or {}).get("sparse") or {}
        dl, sl = d.get("latency_ms") or {}, s.get("latency_ms") or {}
        cmp = r.get("comparison")
        rows.append([
            _e(r["backend"]), _e(r["threads"]), _e(dims_text(r.get("dims"))), ms(dl.get("p50")), ms(sl.get("p50")),
            f"{ms(sl.get('min'))} / {ms(sl.get('p90'))} / {ms(sl.get('p99'))}",
            f'<span class="{_cls((cmp or {}).get("label"))}">{_e(ratio_text(cmp))}</span>',
            f"{size(d.get('bytes'))} → {size(s.get('bytes'))}", f"{size(d.get('zstd_bytes'))} → {size(s.get('zstd_bytes'))}",
            f"{(d.get('load_s') or 0) * 1e3:.0f} / {(s.get('load_s') or 0) * 1e3:.0f}", f"{r.get('peak_rss_mb') or 0:.0f}",
        ])
    return rows


def _layers(r: dict[str, Any]) -> str:
    p = r.get("profile")
    if not p:
        return ""
    head = f"<h4>Per layer: {_e(r['backend'])}, {_e(r['threads'])} thread(s)</h4>"
    if not p.get("available"):
        return head + f"<p>{_e(p.get('method'))}</p>"
    if p.get("operators") is not None:
        from .markdown import _operator_section

        lines = _operator_section(r, p)
        table = [ln for ln in lines if ln.startswith("|")]
        cells = [[_e(c.strip()) for c in ln.strip("|").split("|")] for ln in table[2:]]
        rest = "".join(f"<li>{_e(ln[2:])}</li>" for ln in lines if ln.startswith("- "))
        head = head.replace("Per layer", "Per operator")
        return (head + f"<p>Method: {_e(p['method'])}.</p>"
                + _table([c.strip() for c in table[0].strip("|").split("|")], cells) + f"<ul>{rest}</ul>")
    rows = [[_e(lay["layer"]), f"{lay['sparsity']:.0%}" if lay.get("sparsity") is not None else "-",
             ms(lay["dense_ms"]), ms(lay["sparse_ms"]),
             f"{lay['ratio']:.2f}x [{lay['ci95'][0]:.2f}, {lay['ci95'][1]:.2f}]" if lay.get("ci95") else "-",
             f'<span class="{_cls(lay.get("label") if lay["verdict"].startswith(("paid", "slower")) else None)}">{_e(lay["verdict"])}</span>']
            for lay in p["layers"]]
    cov = "".join(
        f"<li>{_e(n)}: layers add up to {ms(c['layers_ms'])} ms of {ms(c['e2e_ms'])} ms end-to-end "
        f"({c['fraction']:.0%}){'; ' + _e(c['note']) if c.get('note') else ''}</li>"
        for n, c in (p.get("coverage") or {}).items() if c.get("fraction") is not None)
    missing = f"<li>not found in the profile: {_e(', '.join(p['missing']))}</li>" if p.get("missing") else ""
    title = f"{r['backend']} {r['threads']}t"
    plots = "".join(x for x in (_img(layer_plot(r, f"per layer, {title}"), "per-layer times"),
                                _img(sparsity_speedup_plot(r, f"sparsity vs speed-up, {title}"), "sparsity vs speed-up")))
    return (head + f"<p>Method: {_e(p['method'])}.</p>"
            + _table(["layer", "sparsity", "dense ms", "sparse ms", "ratio [95% CI]", "verdict"], rows)
            + f"<ul>{cov}{missing}</ul><div class='plots'>{plots}</div>")


def to_html(result: Any) -> str:
    """The report as one HTML file with every plot inline."""
    data = result.data if hasattr(result, "data") else result
    st = data["settings"]
    amount = f"{st['runs']} rounds" if st.get("runs") else f"{st.get('time_budget_s')} s per measurement"
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>sparsecc bench</title><style>{_CSS}</style></head><body>",
             "<h2>sparsecc bench</h2>", f"<p>Machine: {_e(machine_line(data['machine']))}. Run {_e(data['created'])}.</p>",
             f"<p>Warm-up {st['warmup']}, {amount}, dense and sparse interleaved in one process per backend and thread "
             f"count; ratio = dense p50 / sparse p50 with a paired moving-block bootstrap 95% CI (seed {st['seed']}); an interval "
             "that contains 1 is reported as no measurable change.</p>"]
    if data.get("interrupted"):
        parts.append("<p class='warn'>Interrupted (Ctrl-C): these are the results measured before the stop.</p>")
    head = ["backend", "threads", "dims", "dense p50 ms", "sparse p50 ms", "sparse min/p90/p99 ms",
            "dense→sparse speed", "size", "size (zstd)", "load ms (dense / sparse)", "peak RSS MB"]
    for b in data["bundles"]:
        parts.append(f"<h3>{_e(b['model'])} ({_e(recipe_text(b.get('recipe')))}, {b['sparse_layers']} sparse layers)</h3>"
                     f"<p><code>{_e(b['path'])}</code></p>")
        parts.append(_table(head, _run_rows(b)))
        lat = "".join(_img(latency_plot(r, f"{b['model']} {r['backend']} {r['threads']} thread(s)"), "latency")
                      for r in b["runs"] if r["status"] != "error")
        parts.append(f"<div class='plots'>{lat}</div>")
        parts += [_layers(r) for r in b["runs"] if r["status"] == "ok"]
    parts.append("</body></html>")
    return "\n".join(parts)


def compare_html(results: Sequence[Any], names: Sequence[str]) -> str:
    """Several results side by side: the comparison table, then each report."""
    from .markdown import compare_markdown

    table = compare_markdown(results, names).splitlines()[2:]
    rows = [[_e(c.strip()) for c in line.strip("|").split("|")] for line in table[2:]]
    head = [c.strip() for c in table[0].strip("|").split("|")]
    body = [to_html(r).split("<body>", 1)[1].rsplit("</body>", 1)[0] for r in results]
    sections = "".join(f"<hr><h2>{_e(n)}</h2>{b}" for n, b in zip(names, body))
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>sparsecc bench comparison</title>"
            f"<style>{_CSS}</style></head><body><h2>Comparison</h2>{_table(head, rows)}{sections}</body></html>")
