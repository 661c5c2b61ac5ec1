"""`ctxprobe probes`: list the probe families, show one probe, export probes as JSONL."""

from __future__ import annotations

import json
import sys

import click

from ctxprobe.commands.options import builtin_tokenizer, verify_option
from ctxprobe.errors import UserError
from ctxprobe.grid import parse_depths, parse_lengths
from ctxprobe.units import parse_tokens


def _probes_api():
    # Imported lazily so `ctxprobe --help` stays fast.
    from ctxprobe import probes
    return probes


def probe_options(f):
    """Options shared by `show` and `export`."""
    for option in reversed([
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seed of the haystack and needles."),
        click.option("--tokenizer", "tokenizer_path", default=None, callback=builtin_tokenizer,
                     help="tokenizer.json, a model directory holding one, or builtin (the built-in "
                          "model's) (default: bytes)."),
        click.option("--haystack", default=None,
                     help="'noise', a .txt file or a directory of .txt files (default: procedural prose)."),
        click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
                     help="A family parameter (see `ctxprobe probes list`); repeatable."),
        verify_option,
    ]):
        f = option(f)
    return f


@click.group()
def probes():
    """Probe families: list them, show one probe, export a grid of probes.

    Example: ctxprobe probes show niah --length 4k --depth 50
    """


@probes.command("list")
def list_families():
    """List the probe families: the path to the answer each leaves open (literal: the question
    repeats the needle's words; latent: no word in common; coreference: identical requests told
    apart by their order), a one-line description and their parameters.

    Example: ctxprobe probes list
    """
    api = _probes_api()
    width = max(map(len, api.FAMILIES))
    paths = max(len(f.path) for f in api.FAMILIES.values()) + 2
    for name, fam in api.FAMILIES.items():
        params = " ".join(f"{k}={v}" for k, v in fam.params.items())
        click.echo(f"{name:<{width}}  {'(' + fam.path + ')':<{paths}}  {fam.description}"
                   + (f"  [{params}]" if params else ""))


def _elide(prompt: str, keep: list[tuple[int, int]], marks: list[tuple[int, int]],
           roles: list[str] | None = None) -> str:
    """Show only the `keep` character windows of prompt, with needles in `marks` marked: the
    asked needle as >>>...<<<, a distractor as >>>...<<<(distractor: kind)."""
    label = dict(zip(marks, roles or ["needle"] * len(marks)))
    windows = []
    for a, b in sorted((max(0, a), min(len(prompt), b)) for a, b in keep):
        if windows and a <= windows[-1][1]:
            windows[-1][1] = max(windows[-1][1], b)
        else:
            windows.append([a, b])
    out, at = [], 0
    for a, b in windows:
        if a > at:
            out.append(click.style(f" [... {a - at:,} characters ...] ", fg="cyan"))
        piece = prompt[a:b]
        cuts = sorted((s - a, e - a, label[s, e]) for s, e in marks if a <= s and e <= b)
        last = 0
        for s, e, role in cuts:
            if role == "needle":
                out.append(piece[last:s] + click.style(">>>" + piece[s:e] + " <<<", fg="green", bold=True))
            else:
                out.append(piece[last:s] + click.style(f">>>{piece[s:e]} <<<(distractor: {role})",
                                                       fg="yellow", bold=True))
            last = e
        out.append(piece[last:])
        at = b
    if at < len(prompt):
        out.append(click.style(f" [... {len(prompt) - at:,} characters ...] ", fg="cyan"))
    return "".join(out)


@probes.command()
@click.argument("family")
@click.option("--length", default="4k", show_default=True, help="Prompt length in tokens (4k = 4096).")
@click.option("--depth", type=float, default=50.0, show_default=True, help="Needle depth, percent.")
@click.option("--sample", type=int, default=0, show_default=True, help="Sample index.")
@click.option("--window", type=click.IntRange(min=0), default=200, show_default=True,
              help="Characters shown around each needle and at the ends of the haystack.")
@probe_options
def show(family, length, depth, sample, window, seed, tokenizer_path, haystack, params, verify):
    """Show one probe: the prompt with its middle elided, the asked needle and the distractors
    marked, the association behind a nolima question, the answers and the token counts.

    Example: ctxprobe probes show multikey --length 8k --depth 25 --param value_kind=uuid
    """
    from ctxprobe.sweep.params import parse_pairs

    api = _probes_api()
    p = api.make_probe(family, parse_tokens(length, "--length"), depth, seed=seed, sample=sample,
                       tokenizer=api.load_tokenizer(tokenizer_path), haystack=haystack,
                       verify=verify, **parse_pairs(params))
    text, ctx_start = p.prompt, len(p.instruction)
    ctx_end = ctx_start + len(p.context)
    keep = [(0, ctx_start + window), (ctx_end - window, len(text))]
    keep += [(s - window, e + window) for s, e in p.needle_char_spans]
    click.echo(_elide(text, keep, p.needle_char_spans, p.needle_roles))
    click.echo("-" * 72)
    click.echo(f"family {p.family}  params {json.dumps(p.params)}  seed {p.seed}  sample {p.sample}")
    click.echo(f"tokens {len(p.token_array):,} (requested {p.length:,}; context {p.context_end:,}, "
               f"question {len(p.token_array) - p.context_end:,})  tokenizer {p.tokenizer_name}  "
               f"haystack {p.haystack}  checked {p.verified}")
    depth_note = "n/a (no needles)" if p.actual_depth is None else f"{p.actual_depth}"
    asked = [f"[{s}, {e})" for (s, e), r in zip(p.needle_spans, p.needle_roles) if r == "needle"]
    click.echo(f"depth {p.depth} -> actual {depth_note}  needles at tokens {', '.join(asked) or '-'}")
    misses = [f"{r} [{s}, {e}) at {d}%" for (s, e), r, d in zip(p.needle_spans, p.needle_roles,
                                                                 p.needle_depths) if r != "needle"]
    if misses:
        click.echo(f"distractors ({len(misses)}): {'; '.join(misses)}")
    for line in _meta_lines(p):
        click.echo(line)
    click.echo(f"answers {json.dumps(p.answers)}  answer text {p.answer_text!r}  hash {p.hash}")


def _meta_lines(p) -> list[str]:
    """What a family's probe records about itself: nolima's association and the overlap
    between its question and needle, mrcr's conversation."""
    meta, lines = p.meta, []
    if "association" in meta:
        a, shared = meta["association"], meta["overlap"]
        lines.append(f"association ({a['category']}, {a['hops']} hop{'s' if a['hops'] > 1 else ''}): "
                     + " -> ".join(a["chain"]) + f"; the question names {meta['question_names']!r}")
        lines.append(f"content words shared by question and needle: {shared['count']}"
                     + (f" ({', '.join(shared['stems'])})" if shared["stems"] else " (none: no literal path)"))
        lines.append(f"kept out of the haystack: {', '.join(meta['kept_out_of_haystack'])}")
    if p.messages is not None:
        lines.append(f"conversation: {len(p.messages)} messages in the {p.chat} format; asked: reply "
                     f"{meta['asked_instance']} of {meta['instances']} to {meta['request']!r}, "
                     f"prefixed with {meta['prefix']!r}; graded by MRCR's sequence-matcher ratio")
    return lines


@probes.command()
@click.argument("family")
@click.option("--lengths", default="4k", show_default=True,
              help="1k,2k,4k or exact integers, or a geometric range 1k..1M:x2.")
@click.option("--depths", default="0..100:11", show_default=True,
              help="0,50,100 or a linear range 0..100:11 (percent).")
@click.option("--samples", type=int, default=1, show_default=True, help="Samples per cell.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True), required=True,
              help="JSONL file ('-' for stdout).")
@probe_options
@click.option("--quiet", is_flag=True, help="No progress bar (the closing count still prints).")
def export(family, lengths, depths, samples, output, seed, tokenizer_path, haystack, params, verify,
           quiet):
    """Export probes as JSONL, one object per (length, depth, sample): family, length,
    prompt_tokens, depth, actual_depth, sample, seed, prompt, answers, hash and more.
    FAMILY may be a comma-separated list. The file is written whole or not at all. A progress
    bar over the probes goes to stderr (--quiet: none).

    Example: ctxprobe probes export niah --lengths 1k..8k:x2 --depths 0..100:5 --samples 2 -o niah.jsonl
    """
    from ctxprobe.sweep.params import parse_pairs

    api = _probes_api()
    families = [f.strip() for f in family.split(",") if f.strip()]
    if not families:
        raise UserError(f"no family in {family!r}; name one or more, e.g. niah,kv "
                        "(see `ctxprobe probes list`)")
    extra = parse_pairs(params)
    for name in families:   # unknown families and parameters fail before any probe is built
        api.families.get_family(name).check_params(extra)
    if samples < 1:
        raise UserError(f"--samples {samples} must be at least 1")
    length_list, depth_list = parse_lengths(lengths), parse_depths(depths)
    tok, n = api.load_tokenizer(tokenizer_path), 0
    from tqdm import tqdm

    total = len(families) * len(length_list) * len(depth_list) * samples
    # A long export (880 probes took minutes) shows its progress; stderr, so stdout stays JSONL.
    # The bar starts once the output is open: a bad -o is one line, with no bar before it.
    with _jsonl_output(output) as out, tqdm(total=total, unit="probe", desc="export", file=sys.stderr,
                                            disable=quiet, dynamic_ncols=True) as bar:
        for name in families:
            for length in length_list:
                for depth in depth_list:
                    for sample in range(samples):
                        bar.set_postfix_str(f"{name} {length:,} tokens", refresh=False)
                        p = api.make_probe(name, length, depth, seed=seed, sample=sample,
                                           tokenizer=tok, haystack=haystack, verify=verify,
                                           **extra)
                        out.write(json.dumps(p.to_json(), ensure_ascii=False) + "\n")
                        n += 1
                        bar.update(1)
    click.echo(f"wrote {n} probes ({len(families)} families x {len(length_list)} lengths x "
               f"{len(depth_list)} depths x {samples} samples)", err=True)


def _jsonl_output(path: str):
    """stdout for '-'; else written whole or not at all (ctxprobe/output_file.py), so a failed
    export never leaves a partial file or clobbers an old one."""
    from ctxprobe.output_file import output_file

    return output_file(path)


COMMANDS = [probes]
