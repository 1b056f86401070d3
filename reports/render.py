"""Write a Report (reports/document.py) as Markdown, a self-contained HTML page, LaTeX (booktabs), CSV."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import pandas as pd

from reports.document import Figure, Report, Table

FORMATS = ("md", "html", "tex", "csv")


# ---------------------------------------------------------------- Markdown
def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def table_markdown(t: Table) -> str:
    lines = [f"**{t.title}**", ""]
    lines.append("| " + " | ".join(_md_cell(c) for c in t.columns) + " |")
    lines.append("|" + "|".join("---" for _ in t.columns) + "|")
    for i, row in enumerate(t.rows):
        if i in t.rule_before and 0 < i:
            lines.append("| " + " | ".join("" for _ in t.columns) + " |")  # visual gap before published rows
        lines.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
    if not t.rows:
        lines.append("| " + " | ".join(["(no rows)"] + [""] * (len(t.columns) - 1)) + " |")
    lines.append("")
    lines += [f"*{_md_cell(n)}*  " for n in t.notes]
    return "\n".join(lines)


def to_markdown(report: Report, figure_dir: str = "figures") -> str:
    out = [f"# {report.title}", ""] + [p + "\n" for p in report.intro]
    for s in report.sections:
        out += [f"## {s.title}", ""]
        out += [p + "\n" for p in s.paragraphs]
        for t in s.tables:
            out += [table_markdown(t), ""]
        for f in s.figures:
            out += [f"![{_md_cell(f.caption)}]({figure_dir}/{f.key}.png)", "", f"*{_md_cell(f.caption)}*", ""]
    return "\n".join(out).rstrip() + "\n"


# ---------------------------------------------------------------- HTML
_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.85em}
caption{text-align:left;font-weight:bold;padding:.3em 0}
th,td{padding:.25em .6em;text-align:left;vertical-align:top}
thead th{border-top:2px solid #222;border-bottom:1px solid #222}
tbody tr:last-child td{border-bottom:2px solid #222}
tr.rule td{border-top:1px solid #222}
td.num{text-align:right;white-space:nowrap}
p.note{font-size:.8em;color:#555;margin:.2em 0}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#444}
"""


def _is_num(text: str) -> bool:
    t = text.replace("±", "").replace("+", "").replace("-", "").replace(".", "").replace(" ", "")
    return t.isdigit()


def table_html(t: Table) -> str:
    e = html.escape
    parts = [f'<table id="{e(t.key)}"><caption>{e(t.title)}</caption><thead><tr>']
    parts += [f"<th>{e(c)}</th>" for c in t.columns]
    parts.append("</tr></thead><tbody>")
    for i, row in enumerate(t.rows):
        cls = ' class="rule"' if i in t.rule_before and i > 0 else ""
        cells = "".join(f'<td class="num">{e(c)}</td>' if _is_num(c) else f"<td>{e(c)}</td>" for c in row)
        parts.append(f"<tr{cls}>{cells}</tr>")
    if not t.rows:
        parts.append(f'<tr><td colspan="{len(t.columns)}">(no rows)</td></tr>')
    parts.append("</tbody></table>")
    parts += [f'<p class="note">{e(n)}</p>' for n in t.notes]
    return "".join(parts)


def figure_html(f: Figure) -> str:
    data = base64.b64encode(f.png).decode("ascii")
    return (f'<figure id="{html.escape(f.key)}"><img alt="{html.escape(f.caption)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(f.caption)}</figcaption></figure>')


def to_html(report: Report) -> str:
    e = html.escape
    body = [f"<h1>{e(report.title)}</h1>"] + [f"<p>{e(p)}</p>" for p in report.intro]
    for s in report.sections:
        body.append(f"<h2>{e(s.title)}</h2>")
        body += [f"<p>{e(p)}</p>" for p in s.paragraphs]
        body += [table_html(t) for t in s.tables]
        body += [figure_html(f) for f in s.figures]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{e(report.title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")


# ---------------------------------------------------------------- LaTeX
_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    out = "".join(_TEX_ESCAPES.get(c, c) for c in str(text))
    out = re.sub(r"-(?=-)", "-{}", out)  # LaTeX reads -- as a dash: keep `--resume`, `--run-id` as typed
    return out.replace("±", r"$\pm$").replace("≥", r"$\geq$").replace("—", "--")


def table_latex(t: Table) -> str:
    align = "l" + "".join("r" if t.rows and all(_is_num(r[i]) or not r[i] for r in t.rows) else "l"
                          for i in range(1, len(t.columns)))
    lines = [r"\begin{table}[ht]", r"\centering", r"\caption{" + tex_escape(t.title) + "}",
             r"\label{tab:" + t.key + "}", r"\resizebox{\linewidth}{!}{%", r"\begin{tabular}{" + align + "}",
             r"\toprule", " & ".join(tex_escape(c) for c in t.columns) + r" \\", r"\midrule"]
    for i, row in enumerate(t.rows):
        if i in t.rule_before and i > 0:
            lines.append(r"\midrule")
        lines.append(" & ".join(tex_escape(c) for c in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}"]
    if t.notes:
        lines.append(r"\par\smallskip\footnotesize " + r" \par ".join(tex_escape(n) for n in t.notes))
    lines.append(r"\end{table}")
    return "\n".join(lines)


def table_fragment(t: Table) -> str:
    """out_dir/tables/<key>.tex: one table environment a paper can \\input (no preamble; the paper loads the
    packages the comment names: booktabs for the rules, graphicx for \\resizebox)."""
    return f"% {t.title} (emmil report); needs \\usepackage{{booktabs,graphicx}}\n" + table_latex(t) + "\n"


def to_latex(report: Report, figure_dir: str = "figures", table_dir: str | None = None) -> str:
    """The whole document. table_dir=None prints each table in place; table_dir='tables' \\inputs
    <table_dir>/<key>.tex instead (write_report writes those fragments): report.tex then shows each table
    exactly as a paper \\inputting the fragment will."""
    out = [r"\documentclass{article}", r"\usepackage[utf8]{inputenc}", r"\usepackage[margin=2cm]{geometry}",
           r"\usepackage{booktabs}", r"\usepackage{graphicx}", r"\begin{document}",
           r"\section*{" + tex_escape(report.title) + "}"]
    out += [tex_escape(p) + "\n" for p in report.intro]
    for s in report.sections:
        out.append(r"\subsection*{" + tex_escape(s.title) + "}")
        out += [tex_escape(p) + "\n" for p in s.paragraphs]
        out += [table_latex(t) if table_dir is None else r"\input{" + f"{table_dir}/{t.key}.tex" + "}"
                for t in s.tables]
        for f in s.figures:
            out += [r"\begin{figure}[ht]", r"\centering",
                    r"\includegraphics[width=\linewidth]{" + f"{figure_dir}/{f.key}.png" + "}",
                    r"\caption{" + tex_escape(f.caption) + "}", r"\end{figure}"]
        out.append(r"\clearpage")
    out.append(r"\end{document}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- files
def all_tables(report: Report) -> list[Table]:
    return [t for s in report.sections for t in s.tables]


def all_figures(report: Report) -> list[Figure]:
    return [f for s in report.sections for f in s.figures]


def write_report(report: Report, out_dir: Path, formats, runs: pd.DataFrame) -> dict[str, Path]:
    """Write the requested formats into out_dir; returns {what: path}. Figures go to out_dir/figures
    (referenced by the Markdown and LaTeX; the HTML embeds them as base64); with tex, every table also goes
    to out_dir/tables/<key>.tex, which report.tex \\inputs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if {"md", "tex"} & set(formats):
        (out_dir / "figures").mkdir(exist_ok=True)
        for f in all_figures(report):
            (out_dir / "figures" / f"{f.key}.png").write_bytes(f.png)
    if "md" in formats:
        written["md"] = out_dir / "report.md"
        written["md"].write_text(to_markdown(report))
    if "html" in formats:
        written["html"] = out_dir / "report.html"
        written["html"].write_text(to_html(report))
    if "tex" in formats:
        (out_dir / "tables").mkdir(exist_ok=True)
        for t in all_tables(report):
            (out_dir / "tables" / f"{t.key}.tex").write_text(table_fragment(t))
        written["tex"] = out_dir / "report.tex"
        written["tex"].write_text(to_latex(report, table_dir="tables"))
    if "csv" in formats:
        written["csv"] = out_dir / "runs.csv"
        runs.to_csv(written["csv"], index=False)
        (out_dir / "tables").mkdir(exist_ok=True)
        for t in all_tables(report):
            if t.data is not None:
                t.data.to_csv(out_dir / "tables" / f"{t.key}.csv", index=False)
    return written
