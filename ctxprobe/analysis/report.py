"""A run's HTML report: metadata and provenance, effective lengths, per-family heatmaps and
fall-off curves (and log-probability heatmaps for native runs), failing examples with the gold
answers beside the model's responses. Every piece of stored text is escaped: responses are
model output and may contain HTML. `ctxprobe report` writes the string this returns.
"""

from __future__ import annotations

from ctxprobe.analysis import figures
from ctxprobe.analysis.router import router_section
from ctxprobe.analysis.effective_length import (both_readings, describe_with_ci, effective_lengths,
                                                reads_relative)
from ctxprobe.analysis.summary import errored, families, usable
from ctxprobe.plots import html
from ctxprobe.plots.labels import length_label

EXAMPLES_PER_FAMILY = 8


def effective_rows(effs: dict, cells) -> list[list[str]]:
    rows = []
    for family, eff in effs.items():
        scored = [c["score"] for c in usable(cells) if c["family"] == family]
        rule = eff.threshold
        rows.append([family, len(scored), f"{100 * sum(scored) / len(scored):.1f}%",
                     f"{100 * rule.cutoff:.0f}%" + (" (relative)" if rule.relative else ""),
                     length_label(rule.length) if rule.length else f"none (<{length_label(eff.tested[0])})",
                     describe_with_ci(eff, eff.l50, eff.l50_ci), describe_with_ci(eff, eff.l85, eff.l85_ci),
                     relative_reading(family, cells, rule.cutoff if not rule.relative else None)])
    return rows


def relative_reading(family: str, cells, threshold: float | None) -> str:
    """NoLiMa's rule for a family whose literal path is closed: '4K (85% of 62% = 53%)'; '-'
    for the others (and when the table itself is already relative)."""
    if threshold is None or not reads_relative(family):
        return "-"
    from ctxprobe.analysis.effective_length import short_score
    from ctxprobe.analysis.summary import values_by_length

    by_length = values_by_length(usable(cells), family)
    lengths = sorted(by_length)
    means = [by_length[n].mean() for n in lengths]
    _, rule = both_readings(lengths, means, threshold=threshold)
    base = short_score(means)
    if base <= 0:
        return "none (0 at the shortest lengths)"
    found = length_label(rule.length) if rule.length else f"none (<{length_label(lengths[0])})"
    return f"{found} ({threshold:.0%} of {base:.0%} = {rule.cutoff:.0%})"


def metadata_rows(run, cells, show_paths: bool = False) -> list[list]:
    from ctxprobe.analysis.runs_report import shown_path

    lengths = sorted({c["length"] for c in cells})
    depths = sorted({c["depth"] for c in cells})
    return [
        ["run", f"{run.name} (id {run.id})"], ["created", run.created],
        ["model", shown_path(run.model_spec, show_paths)], ["model fingerprint", run.model_fingerprint],
        ["tokenizer fingerprint", run.tokenizer_fingerprint],
        ["ctxprobe version", run.version], ["command (first invocation)", html.code(run.command)],
        ["cells", f"{len(cells)} stored, {errored(cells)} errored (left out of every figure)"],
        ["lengths", ", ".join(length_label(x) for x in lengths)],
        ["depths", ", ".join(f"{d:g}%" for d in depths)],
        ["seeds", ", ".join(str(s) for s in sorted({c["seed"] for c in cells}))],
    ]


def settings_table(run, show_paths: bool = False) -> html.Html:
    """The backend's and the sweep's settings, one per row ('backend.dtype', 'sweep.seed'), machine
    paths by their last part unless show_paths (a report is shared; a home directory need not be)."""
    from ctxprobe.analysis.runs_report import flat_settings

    rows = [[k, v] for k, v in flat_settings(run, show_paths).items() if k not in ("model", "ctxprobe version")]
    return html.table(["setting", "value"], rows)


def failing_examples(cells, family: str, limit: int = EXAMPLES_PER_FAMILY) -> html.Html:
    """A table of failing cells: what the probe expected beside what the model said."""
    failed = [c for c in usable(cells) if c["family"] == family and c["score"] < 1]
    failed.sort(key=lambda c: (c["length"], c["depth"], c["sample"]))
    if not failed:
        return html.paragraph("No failing cells.", cls="muted")
    # Spread the examples evenly over the failures (sorted by length): short and long both show.
    picked = failed[:: max(1, len(failed) // limit)][:limit]
    rows = [[length_label(c["length"]), f"{c['depth']:g}%", c["sample"], f"{c['score']:.2f}",
             "-" if c.get("logprob") is None else f"{c['logprob']:.2f}",
             rank_text(c),
             html.pre(gold_text(c.get("answers"))), html.pre(generated_text(c)),
             html.pre(forced_text(c)), html.code(c.get("probe_hash") or "-")] for c in picked]
    note = ""
    if any(c.get("response_kind") == "teacher-forced" for c in picked):
        note = (" Teacher-forced guess: the model's top token at each position of the gold answer "
                "with the gold answer fed in; it is not a text the model writes. Generated: the "
                "model's own greedy output, stored for failing cells (run --generate-failing).")
    return html.join(html.paragraph(f"{len(failed)} failing cells; {len(picked)} shown.{note}", cls="muted"),
                     html.table(["length", "depth", "sample", "score", "log-prob", "rank: first / first non-space token",
                                 "gold answer(s)", "generated (greedy)", "teacher-forced guess",
                                 "probe hash"], rows))


def rank_text(cell) -> str:
    """The gold answer's first token's rank, and the first non-space token's (informative_rank:
    a leading space ranks 1 whether or not the model knows the answer); '-' when not measured."""
    first, informative = cell.get("first_rank"), cell.get("informative_rank")
    if first is None:
        return "-"
    return f"{first} / {'-' if informative is None else informative}"


def gold_text(answers) -> str:
    """One gold answer per line; cells stored before ctxprobe kept answers have none."""
    if answers is None:
        return "(not stored)"
    return "\n".join(answers) if answers else "(none)"


def response_text(response) -> str:
    if response is None:
        return "(no response stored)"
    return response if response.strip() else f"(empty response{_blank(response)})"


def _blank(text: str) -> str:
    """What an all-whitespace text holds, e.g. ': 32 spaces'."""
    if not text:
        return ""
    if set(text) == {" "}:
        return f": {len(text)} space{'s' if len(text) != 1 else ''}"
    return f": {len(text)} whitespace characters"


def generated_text(cell) -> str:
    """What the model wrote: the response of a generated cell, the stored generation of a
    teacher-forced one (cells stored without --generate-failing have none)."""
    if cell.get("response_kind") != "teacher-forced":
        return response_text(cell.get("response"))
    if cell.get("generation") is None:
        return "(not generated: stored with --generate-failing 0, by an older ctxprobe, or its pass did not fit the memory budgets)"
    return response_text(cell["generation"])


def forced_text(cell) -> str:
    """The teacher-forced per-position guess; '-' for a generated cell."""
    if cell.get("response_kind") != "teacher-forced":
        return "-"
    return response_text(cell.get("response"))


def invocation_table(invocations) -> html.Html:
    """Every command that added to the run: a run grown by several grids says so here."""
    if not invocations:
        return html.Html("")
    rows = [[i + 1, inv.started, inv.version, inv.added(), html.code(inv.command)]
            for i, inv in enumerate(invocations)]
    return html.join(html.heading(f"Invocations ({len(invocations)})"),
                     html.table(["#", "started", "ctxprobe", "cells", "command"], rows))


def error_examples(cells, limit: int = 10) -> html.Html:
    bad = [c for c in cells if c.get("error")]
    if not bad:
        return html.Html("")
    rows = [[c["family"], length_label(c["length"]), f"{c['depth']:g}%", c["sample"], c["error"]]
            for c in bad[:limit]]
    return html.join(html.heading(f"Errored cells ({len(bad)})"),
                     html.table(["family", "length", "depth", "sample", "error"], rows))


def build_report(run, cells, *, relative: bool = False, threshold: float = 0.85,
                 invocations=(), show_paths: bool = False, router_traces: dict | None = None) -> str:
    """The whole report as one HTML string (images inline, no external references).
    invocations: the run's, from Store.invocations (the commands that added to it).
    show_paths: machine paths whole, not by their last part.
    router_traces: the run's, from Store.router_traces (cells run with --router-trace)."""
    scored = usable(cells)
    body = [html.table(["field", "value"], metadata_rows(run, cells, show_paths)),
            html.heading("Backend and settings", level=3), settings_table(run, show_paths),
            invocation_table(invocations)]
    if not scored:
        body.append(html.paragraph("This run has no scored cells yet.", cls="bad"))
        return html.page(f"ctxprobe report: {run.name}", *body, error_examples(cells))
    effs = effective_lengths(scored, threshold=threshold, relative=relative)
    percent = round(100 * threshold)
    body += [html.heading("Effective context length"),
             html.paragraph("Threshold rule: the largest length up to which every tested length "
                            "scores at least the cutoff. Fit: a logistic curve of score against "
                            f"log-length; L50 and L{percent} with 95% bootstrap intervals. Relative "
                            "(NoLiMa's rule), for families that literal matching cannot pass and "
                            "their literal controls: the same threshold rule with the cutoff set "
                            f"to {percent}% of the family's own mean score at the shortest tested "
                            "lengths; the other columns are absolute unless the cutoff says relative."),
             html.table(["family", "cells", "mean score", "cutoff", "threshold rule", "L50 (fit)",
                         f"L{percent} (fit)", "relative threshold rule (NoLiMa)"],
                        effective_rows(effs, scored))]
    if len(effs) > 1:
        links = [html.join(html.link(f, f"family-{f}"), " ") for f in families(scored)]
        body += [html.heading("All families"), html.paragraph("Families: ", *links),
                 html.image(figures.grid_figure(scored, run_name=run.name), "all families")]
    for family in families(scored):
        body += [html.heading(family, anchor=f"family-{family}"),
                 html.image(figures.heatmap_figure(scored, family, run_name=run.name,
                                                   effective=effs[family].threshold.length),
                            f"{family} depth x length heatmap"),
                 html.image(figures.falloff_figure(scored, family, effs[family], run_name=run.name),
                            f"{family} fall-off")]
        logprob = figures.logprob_figure(scored, family, run_name=run.name)
        if logprob is not None:
            body.append(html.image(logprob, f"{family} log-probability heatmap"))
        body += [html.heading("Failing examples", level=3), failing_examples(scored, family)]
    if router_traces:
        body.append(router_section(scored, router_traces, run_name=run.name))
    body.append(error_examples(cells))
    return html.page(f"ctxprobe report: {run.name}", *body)
