"""Markdown summary of a bench result (for the terminal and for pasting into an issue)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .format import dims_text, machine_line, ms, ratio_text, recipe_text, size

__all__ = ["to_markdown", "compare_markdown"]


def _row(cells: Sequence[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _table(head: Sequence[str], rows: list[Sequence[Any]]) -> list[str]:
    return [_row(head), _row(["---"] * len(head)), *(_row(r) for r in rows)]


def _v(run: dict[str, Any], name: str) -> dict[str, Any]:
    return (run.get("variants") or {}).get(name) or {}


def _summary_rows(b: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for r in b["runs"]:
        if r["status"] == "error":
            continue
        d, s = _v(r, "dense"), _v(r, "sparse")
        dl, sl = d.get("latency_ms") or {}, s.get("latency_ms") or {}
        rows.append([
            r["backend"], r["threads"], dims_text(r.get("dims")), ms(dl.get("p50")), ms(sl.get("p50")),
            f"{ms(sl.get('min'))} / {ms(sl.get('p90'))} / {ms(sl.get('p99'))}", f"{sl.get('throughput_per_s') or 0:.1f}",
            ratio_text(r.get("comparison")), f"{size(d.get('bytes'))} → {size(s.get('bytes'))}",
            f"{size(d.get('zstd_bytes'))} → {size(s.get('zstd_bytes'))}",
            f"{d.get('load_s', 0) * 1e3:.0f} / {s.get('load_s', 0) * 1e3:.0f}" if d else f"{s.get('load_s', 0) * 1e3:.0f}",
            f"{r.get('peak_rss_mb') or 0:.0f}", r["status"] if r["status"] != "ok" else "",
        ])
    return rows


def _layer_section(b: dict[str, Any], r: dict[str, Any]) -> list[str]:
    p = r.get("profile")
    title = f"#### Per layer: {r['backend']}, {r['threads']} thread(s)"
    if not p:
        return []
    if not p.get("available"):
        return [title, "", p.get("method", "no per-layer profile"), ""]
    if p.get("operators") is not None:
        return _operator_section(r, p)
    rows = [[lay["layer"], f"{lay['sparsity']:.0%}" if lay.get("sparsity") is not None else "-",
             ms(lay["dense_ms"]), ms(lay["sparse_ms"]),
             f"{lay['ratio']:.2f}x [{lay['ci95'][0]:.2f}, {lay['ci95'][1]:.2f}]" if lay.get("ci95") else "-",
             lay["verdict"]] for lay in p["layers"]]
    out = [title, "", f"Method: {p['method']}.", ""]
    out += _table(["layer", "sparsity", "dense ms", "sparse ms", "ratio [95% CI]", "verdict"], rows)
    out.append("")
    for name, c in (p.get("coverage") or {}).items():
        if c.get("fraction") is not None:
            line = f"- {name}: layers add up to {ms(c['layers_ms'])} ms of {ms(c['e2e_ms'])} ms end-to-end ({c['fraction']:.0%})"
            out.append(line + (f"; {c['note']}" if c.get("note") else ""))
    if p.get("missing"):
        out.append(f"- not found in the profile: {', '.join(p['missing'])}")
    out.append("")
    return out


_TOP_OPERATORS = 15


def _operator_section(r: dict[str, Any], p: dict[str, Any]) -> list[str]:
    ops = p["operators"]
    rows = [[o["operator"], ms(o["dense_ms"]), ms(o["sparse_ms"]),
             f"{o['ratio']:.2f}x [{o['ci95'][0]:.2f}, {o['ci95'][1]:.2f}]" if o.get("ci95") else "-",
             o.get("label") or "-"] for o in ops[:_TOP_OPERATORS]]
    out = [f"#### Per operator: {r['backend']}, {r['threads']} thread(s)", "", f"Method: {p['method']}.", ""]
    out += _table(["operator", "dense ms", "sparse ms", "ratio [95% CI]", "label"], rows)
    if len(ops) > _TOP_OPERATORS:
        out.append(f"\n({len(ops) - _TOP_OPERATORS} smaller operators in the JSON)")
    out.append("")
    for name, c in (p.get("coverage") or {}).items():
        if c.get("fraction") is not None:
            out.append(f"- {name}: operators add up to {ms(c['layers_ms'])} ms of {ms(c['e2e_ms'])} ms end-to-end "
                       f"({c['fraction']:.0%})" + (f"; {c['note']}" if c.get("note") else ""))
    out += [f"- not mapped to layers: {len(p.get('missing') or [])} sparse layers", ""]
    return out


def structured_lines(b: dict[str, Any]) -> list[str]:
    """For a structured bundle: MACs, params and latency ratios side by side, and how much
    of the MAC reduction each run's latency realises ((1 - latency ratio) / (1 - MACs ratio))."""
    st = b.get("structured")
    if not st:
        return []
    macs, params = st["macs_ratio"], st["params_ratio"]
    out = [f"Structured: MACs x{macs:.3f}, params x{params:.3f} of the dense model.", ""]
    rows = []
    for r in b["runs"]:
        ratio = (r.get("comparison") or {}).get("ratio") if r["status"] == "ok" else None
        if not ratio:
            continue
        lat = 1.0 / ratio
        realised = (1 - lat) / (1 - macs) if macs < 1 else float("nan")
        rows.append([r["backend"], r["threads"], f"{macs:.3f}", f"{params:.3f}", f"{lat:.3f}", f"{realised:.0%}"])
    if rows:
        out += _table(["backend", "threads", "MACs ratio", "params ratio", "latency ratio", "MAC reduction realised"], rows)
        out.append("")
    return out


def to_markdown(result: Any, per_layer: bool = True) -> str:
    """The whole result: machine, one summary table per bundle, per-layer tables, errors."""
    data = result.data if hasattr(result, "data") else result
    lines = ["## sparsecc bench", "", f"Machine: {machine_line(data['machine'])}.", ""]
    st = data["settings"]
    amount = f"{st['runs']} rounds" if st.get("runs") else f"{st.get('time_budget_s')} s per measurement"
    lines += [f"Settings: warm-up {st['warmup']}, {amount} (dense and sparse interleaved, one process per "
              f"backend and thread count), seed {st['seed']}. Ratio = dense p50 / sparse p50 with a paired "
              "moving-block bootstrap 95% CI; an interval that contains 1 is \"no measurable change\".", ""]
    if data.get("interrupted"):
        lines += ["**Interrupted (Ctrl-C): the results below are what was measured before the stop.**", ""]
    head = ["backend", "threads", "dims", "dense p50 ms", "sparse p50 ms", "sparse min/p90/p99 ms", "sparse items/s",
            "dense→sparse speed", "size", "size (zstd)", "load ms (dense / sparse)", "peak RSS MB", "status"]
    for b in data["bundles"]:
        lines += [f"### {b['model']} ({recipe_text(b.get('recipe'))}, {b['sparse_layers']} sparse layers)",
                  f"`{b['path']}`", ""]
        rows = _summary_rows(b)
        lines += _table(head, rows) if rows else ["(no completed measurement)"]
        lines.append("")
        lines += structured_lines(b)
        for r in b["runs"]:
            for name, cmp in (r.get("references") or {}).items():
                ref_ms = ms((_v(r, name).get("latency_ms") or {}).get("p50"))
                lines.append(f"- {r['backend']} threads={r['threads']}: against {name} ({ref_ms} ms p50, timed "
                             f"interleaved): {ratio_text(cmp)}")
            if r.get("int8_both"):
                dense_ms = ms((_v(r, "onnx-int8-dense").get("latency_ms") or {}).get("p50"))
                sparse_ms = ms((_v(r, "onnx-int8-sparse").get("latency_ms") or {}).get("p50"))
                lines.append(f"- {r['backend']} threads={r['threads']}: both in int8 (ONNX Runtime quantize_dynamic of "
                             f"each), sparse {sparse_ms} ms against dense {dense_ms} ms p50: "
                             f"{ratio_text(r['int8_both'])}")
        if any(r.get("references") for r in b["runs"]):
            lines.append("")
        for r in b["runs"]:
            if r["status"] == "error":
                lines.append(f"- **{r['backend']} threads={r['threads']} failed**: {r['error'].splitlines()[0]}")
        if any(r["status"] == "error" for r in b["runs"]):
            lines.append("")
        if per_layer:
            for r in b["runs"]:
                if r["status"] == "ok":
                    lines += _layer_section(b, r)
    lines.append("Peak RSS: " + next((r["peak_rss_method"] for _, r in _runs(data) if r.get("peak_rss_method")), "-")
                 + "; each backend and thread count runs in its own process.")
    return "\n".join(lines).rstrip() + "\n"


def _runs(data: dict[str, Any]):
    return [(b, r) for b in data["bundles"] for r in b["runs"]]


def compare_markdown(results: Sequence[Any], names: Sequence[str] | None = None) -> str:
    """One table over several results (machines, recipes, dates): one row per measurement."""
    names = list(names or [f"run {i + 1}" for i in range(len(results))])
    rows = []
    for name, res in zip(names, results):
        data = res.data if hasattr(res, "data") else res
        m = data["machine"]
        for b, r in _runs(data):
            if r["status"] == "error":
                continue
            d, s = _v(r, "dense"), _v(r, "sparse")
            rows.append([Path(name).name, f"{m.get('cpu')} ({m.get('cores')} cores, load {(m.get('load_avg') or ['?'])[0]})",
                         b["model"], recipe_text(b.get("recipe")), r["backend"], r["threads"], dims_text(r.get("dims")),
                         ms((d.get("latency_ms") or {}).get("p50")), ms((s.get("latency_ms") or {}).get("p50")),
                         ratio_text(r.get("comparison")), f"{size(d.get('bytes'))} → {size(s.get('bytes'))}"])
    head = ["run", "machine", "model", "recipe", "backend", "threads", "dims", "dense p50 ms", "sparse p50 ms",
            "dense→sparse speed", "size"]
    return "\n".join(["## sparsecc bench: comparison", "", *_table(head, rows)]) + "\n"
