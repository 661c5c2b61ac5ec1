"""Several runs on one page (`ctxprobe report RUN RUN ...`): one model on several serving stacks,
or several models, side by side.

The page holds: a table of the runs (model, stack, cells, effective lengths with intervals) and
of the settings in which they differ; per family, the runs' heatmaps on one colour scale and
their fall-off curves on one axis; latency and time to first token against length; and paired
tests of every run against the reference run (the first unless named), regressions marked.
Run names, settings and every stored text are escaped; figures are inline; nothing is fetched.
Machine paths (checkpoint directories, tokenizer files) show by their last part unless asked.
"""

from __future__ import annotations

import json
import re

import numpy as np

from ctxprobe.analysis.compare import compare
from ctxprobe.analysis.effective_length import describe_with_ci, effective_lengths
from ctxprobe.analysis.router import router_section
from ctxprobe.analysis.summary import curve, families, grid, usable
from ctxprobe.errors import UserError
from ctxprobe.plots import grid as heatmap_grid
from ctxprobe.plots import html
from ctxprobe.plots.runs import by_length_runs, falloff_runs
from ctxprobe.plots.labels import length_label

_PATH = re.compile(r"^(/|~|\.{1,2}/|[A-Za-z]:[\\/])")


def shown_path(value, show_paths: bool):
    """A machine path as its last part ('…/llama-8b'), unless the user asked for paths."""
    if show_paths or not isinstance(value, str) or not _PATH.match(value):
        return value
    last = value.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    return f"…/{last}" if last else value


def stack_of(run, show_paths: bool = False) -> str:
    """Where the run's answers came from, in words."""
    b = run.backend
    if b.get("kind") == "http":
        stream = ", streamed" if b.get("stream") else ""
        return f"{b.get('api', 'chat')} API at {shown_path(b.get('base_url'), show_paths)} " \
               f"(served model {shown_path(b.get('served_model'), show_paths)}{stream})"
    if b.get("kind") == "native":
        return f"native runner ({b.get('dtype')}, {b.get('device')})"
    return str(b.get("kind", "unknown"))


def flat_settings(run, show_paths: bool = False) -> dict[str, str]:
    """The run's backend settings and sweep settings as 'name: text' pairs, nested keys dotted."""
    out: dict[str, str] = {"model": shown_path(run.model_spec, show_paths)}

    def walk(prefix: str, value):
        if isinstance(value, dict) and value:
            for k in sorted(value):
                walk(f"{prefix}.{k}" if prefix else str(k), value[k])
        else:
            value = shown_path(value, show_paths)
            out[prefix] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)

    walk("backend", run.backend)
    settings = {k: v for k, v in run.settings.items() if k != "backend"}  # backend shown above
    walk("sweep", settings)
    out["ctxprobe version"] = run.version
    return out


def differing(settings: list[dict[str, str]]) -> list[str]:
    keys = sorted({k for s in settings for k in s})
    return [k for k in keys if len({s.get(k, "-") for s in settings}) > 1]


def _counts(cells) -> str:
    from ctxprobe.analysis.prompt_tokens import mismatched

    errored = sum(1 for c in cells if c.get("error"))
    truncated = sum(1 for c in cells if c.get("truncated") and not c.get("error"))
    cut = len(mismatched(cells))
    text = f"{len(cells)} ({errored} errored"
    text += f", {truncated} truncated" if truncated else ""
    # The server read another prompt than ctxprobe built (cut to its window, or re-tokenized).
    return text + (f", {cut} counted otherwise by the server)" if cut else ")")


def _effective(cells, threshold: float) -> tuple[dict, str]:
    scored = usable(cells)
    if not scored:
        return {}, "no scored cells"
    effs = effective_lengths(scored, threshold=threshold)
    parts = []
    for family, eff in effs.items():
        rule = length_label(eff.threshold.length) if eff.threshold.length else \
            f"none (<{length_label(eff.tested[0])})"
        parts.append(f"{family}: {rule}; fit L{round(100 * threshold)} "
                     f"{describe_with_ci(eff, eff.l85, eff.l85_ci)}")
    return effs, "\n".join(parts)


def runs_table(runs, cells_of, threshold: float, show_paths: bool) -> html.Html:
    rows = []
    for run in runs:
        cells = cells_of[run.id]
        _, eff_text = _effective(cells, threshold)
        rows.append([run.name, shown_path(run.model_spec, show_paths), stack_of(run, show_paths),
                     _counts(cells), html.pre(eff_text)])
    return html.table(["run", "model", "stack", "cells", f"effective length (score >= {threshold:.0%})"],
                      rows)


def settings_tables(runs, show_paths: bool) -> html.Html:
    flat = [flat_settings(r, show_paths) for r in runs]
    keys = differing(flat)
    parts = []
    if keys:
        parts.append(html.table(["setting"] + [r.name for r in runs],
                                [[k] + [s.get(k, "-") for s in flat] for k in keys]))
    else:
        parts.append(html.paragraph("The runs share every setting.", cls="muted"))
    for run, s in zip(runs, flat):
        parts.append(html.details(f"all settings of {run.name}",
                                  html.table(["setting", "value"], [[k, v] for k, v in s.items()])))
    return html.join(*parts)


def family_section(family: str, runs, cells_of, threshold: float) -> html.Html:
    panels, series, slots = [], [], []
    for slot, run in enumerate(runs):
        scored = [c for c in usable(cells_of[run.id]) if c["family"] == family]
        if not scored:
            continue
        g = grid(scored, family)
        panels.append((run.name, g.lengths, g.depths, g.mean_DL, g.n_DL))
        c = curve(scored, family)
        series.append((run.name, c.lengths, c.mean, c.lo, c.hi))
        slots.append(slot)
    if not panels:
        return html.paragraph(f"No run has scored cells of {family}.", cls="muted")
    return html.join(
        html.image(heatmap_grid(panels, title=f"{family}: score by depth and length, one scale",
                                columns=min(3, len(panels))), f"{family} heatmaps of every run"),
        html.image(falloff_runs(series, threshold=threshold, title=f"{family}: fall-off of every run",
                                slots=slots),
                   f"{family} fall-off curves of every run"))


def _mean_by_length(cells, key: str) -> tuple[list[int], list[float]]:
    by: dict[int, list[float]] = {}
    for c in cells:
        value = c.get(key)
        if value is not None and not c.get("error"):
            by.setdefault(int(c["length"]), []).append(float(value))
    lengths = sorted(by)
    return lengths, [float(np.mean(by[n])) for n in lengths]


def latency_section(runs, cells_of) -> html.Html:
    parts = []
    for key, label, alt in (("latency", "mean seconds per cell (total)", "latency by length"),
                            ("ttft", "mean time to first token (s)", "time to first token by length"),
                            ("decode_rate", "mean decode rate (tokens/s)", "decode rate by length")):
        measured = [(slot, (run.name, *_mean_by_length(cells_of[run.id], key)))
                    for slot, run in enumerate(runs)]
        measured = [(slot, s) for slot, s in measured if s[1]]
        if measured:
            parts.append(html.image(by_length_runs([s for _, s in measured], ylabel=label, title=alt,
                                                   log_y=True,
                                                   slots=[slot for slot, _ in measured]), alt))
    if not any(cells_of[r.id] and any(c.get("ttft") is not None for c in cells_of[r.id]) for r in runs):
        parts.append(html.paragraph("No run was streamed (`ctxprobe run --stream`): time to first "
                                    "token and decode rate are not measured.", cls="muted"))
    return html.join(*parts) if parts else html.paragraph("No latencies stored.", cls="muted")


def paired_section(reference, runs, cells_of, alpha: float, min_drop: float) -> html.Html:
    parts = [html.paragraph(
        f"Each run against the reference {reference.name!r}, cell by cell on shared probes: exact "
        f"McNemar for 0/1 scores, a paired bootstrap otherwise; Holm-corrected at {alpha:g}. "
        f"REGRESSED: significantly worse and the mean dropped by more than {min_drop:.0%}. "
        "MISSING: the reference has results there and this run has none.")]
    for run in runs:
        if run.id == reference.id:
            continue
        parts.append(html.heading(f"{run.name} vs {reference.name}", level=3))
        try:
            result = compare(cells_of[reference.id], cells_of[run.id], alpha=alpha, min_drop=min_drop)
        except UserError as e:
            parts.append(html.paragraph(f"Not comparable: {e}", cls="muted"))
            continue
        rows = []
        for c in result.cells:
            verdict = (html.span("REGRESSED", "bad") if c.regressed else
                       "worse (within min drop)" if c.significant else "-")
            rows.append([c.family, length_label(c.length), c.pairs, f"{c.mean_a:.1%}", f"{c.mean_b:.1%}",
                         f"{100 * c.delta:+.1f} pp", f"{c.p_adjusted:.3g}", verdict])
        for m in result.missing:
            rows.append([m.family, length_label(m.length), 0, f"{m.mean_a:.1%}", "-", "-", "-",
                         html.span(f"MISSING ({m.reason})", "bad")])
        verdict = (html.span(f"{len(result.regressions)} regression(s), {len(result.missing)} missing",
                             "bad") if result.failed else html.span("no regression", "good"))
        parts += [html.paragraph(verdict),
                  html.table(["family", "length", "pairs", "reference", "this run", "delta",
                              "p (Holm)", "verdict"], rows)]
    return html.join(*parts)


def select_runs(store, refs, model_patterns, name_patterns) -> list:
    """The runs named in `refs` (names or ids), then those whose model or name matches a pattern
    (shell-style: * and ?), each once, in that order."""
    from fnmatch import fnmatchcase

    picked = [store.get_run(r) for r in refs]
    for run in store.runs():
        if any(fnmatchcase(run.model_spec, p) for p in model_patterns) or \
                any(fnmatchcase(run.name, p) for p in name_patterns):
            picked.append(run)
    seen, out = set(), []
    for run in picked:
        if run.id not in seen:
            seen.add(run.id)
            out.append(run)
    if not out:
        pats = ", ".join(list(model_patterns) + list(name_patterns))
        raise UserError(f"no run in {store.path} matches {pats}; see `ctxprobe runs`")
    return out


def build_runs_report(runs, cells_of: dict, *, reference=None, threshold: float = 0.85,
                      alpha: float = 0.05, min_drop: float = 0.05, show_paths: bool = False,
                      router_traces_of: dict | None = None) -> str:
    """The page for `runs` (Run rows), `cells_of` {run id: cells}; reference: one of runs;
    router_traces_of {run id: Store.router_traces}: a router section per run that has traces."""
    reference = reference or runs[0]
    everything = [c for r in runs for c in usable(cells_of[r.id])]
    body = [html.paragraph(f"{len(runs)} runs; reference: ", html.code(reference.name),
                           ". Scores are means over cells; intervals are 95%."),
            html.heading("Runs"), runs_table(runs, cells_of, threshold, show_paths),
            html.heading("Settings that differ"), settings_tables(runs, show_paths)]
    for family in families(everything):
        body += [html.heading(family, anchor=f"family-{family}"),
                 family_section(family, runs, cells_of, threshold)]
    body += [html.heading("Latency by length"), latency_section(runs, cells_of),
             html.heading("Paired tests against the reference"),
             paired_section(reference, runs, cells_of, alpha, min_drop)]
    for r in runs:
        if (router_traces_of or {}).get(r.id):
            body.append(router_section(usable(cells_of[r.id]), router_traces_of[r.id], run_name=r.name,
                                       title=f"MoE router by position: {r.name}", anchor=f"router-{r.id}"))
    return html.page(f"ctxprobe: {len(runs)} runs side by side", *body)
