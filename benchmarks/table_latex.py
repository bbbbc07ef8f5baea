"""A suite's table as LaTeX for a paper: booktabs rules, siunitx columns aligned on the decimal point."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import pandas as pd

from cdrl.metrics import METRICS

if TYPE_CHECKING:
    from benchmarks.tables import SuiteTable

#: Characters LaTeX reads as commands, and non-ASCII ones pdflatex may not know: each as LaTeX writes it.
_LATEX_TEXT = str.maketrans({
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
    "|": r"\textbar{}", "±": r"$\pm$", "×": r"$\times$", "—": "---", "–": "--", "≈": r"$\approx$",
    "↓": r"$\downarrow$", "↑": r"$\uparrow$", "→": r"$\rightarrow$", "≥": r"$\geq$", "≤": r"$\leq$",
    "√": r"$\surd$", "²": r"\textsuperscript{2}", "·": r"$\cdot$", "…": r"\dots{}", "−": "-",
    "∅": r"$\emptyset$", "∧": r"$\wedge$",
    "’": "'", "‘": "`", "“": "``", "”": "''",
})
#: A number as the table prints it, optionally with its standard error: what a siunitx S column parses.
_NUMBER = re.compile(r"^(-?)(\d+)(?:\.(\d+))?(?: ± (\d+)(?:\.(\d+))?)?$")
#: siunitx settings of the table (scoped to it): text-mode digits so that bold (detect-weight) reaches every
#: digit, the standard error printed as "± 0.016" rather than "(16)", and kept when it is 0 (seeds agree).
_SIUNITX_SETTINGS = "{mode=text, detect-weight=true, uncertainty-mode=separate, retain-zero-uncertainty=true}"


def _latex_text(text: object) -> str:
    """Text for LaTeX: specials escaped, `code` in typewriter type."""
    parts = re.split(r"`([^`]*)`", str(text))
    return "".join(rf"\texttt{{{part.translate(_LATEX_TEXT)}}}" if odd else part.translate(_LATEX_TEXT)
                   for odd, part in ((index % 2 == 1, part) for index, part in enumerate(parts)))


def _siunitx_cell(cell: str) -> str:
    """A metric cell for an S column: the number (± → \\pm) for siunitx to align; anything else as braced text."""
    if _NUMBER.match(cell):
        return cell.replace("±", r"\pm")
    return "{" + _latex_text(cell) + "}" if cell else ""


def _table_format(cells: pd.Series) -> str:
    """siunitx's table-format of a column: the widest integer part, decimals and (compact) uncertainty digits."""
    numbers = [match for match in map(_NUMBER.match, cells) if match]
    if not numbers:
        return ""
    sign = "-" if any(match[1] for match in numbers) else ""
    integers = max(len(match[2]) for match in numbers)
    decimals = max(len(match[3] or "") for match in numbers)
    errors = [str(int((match[4] or "") + (match[5] or ""))) for match in numbers if match[4]]
    uncertainty = f"({max(map(len, errors))})" if errors else ""
    return f"[table-format={sign}{integers}.{decimals}{uncertainty}]"


def latex_table(table: SuiteTable) -> str:
    """A booktabs table for a paper: metric columns aligned on the decimal point by siunitx, each column's
    best value bold, the notes in the caption. Needs ``\\usepackage{booktabs}`` and ``\\usepackage{siunitx}`` (v3).

    Headings take two rows, the paper's and the measured metric columns each under one spanning
    heading, so that a column is as wide as its numbers rather than its name.
    """
    display = table.display
    metric_columns = list(table.value_columns)
    column_format = "".join(
        f"S{_table_format(display[column])}" if column in metric_columns
        else "l" if column in ("method", "confidence", "checkpoint", "source") else "r" for column in display)
    headings = pd.MultiIndex.from_tuples([
        (table.suite.reference_label if table.value_columns[column].paper else "measured (mean ± s.e.)",
         METRICS[table.value_columns[column].metric].heading) if column in metric_columns else ("", column)
        for column in display])
    best = table.best.set_axis(headings, axis=1)
    styler = (display.set_axis(headings, axis=1).style.hide(axis="index")
              .format(_latex_text)
              .format(_siunitx_cell, subset=[heading for heading, column in zip(headings, display)
                                             if column in metric_columns])
              .format_index(_latex_text, axis=1)
              .apply(lambda _: best.map(lambda bold: "bfseries: ;" if bold else ""), axis=None)
              # Small type and narrower gaps: seven or more columns fit a one-column page with 2 cm margins.
              .set_table_styles([{"selector": "small", "props": ":;"},
                                 {"selector": "setlength", "props": ":{\\tabcolsep}{4pt};"},
                                 {"selector": "sisetup", "props": f":{_SIUNITX_SETTINGS};"}], overwrite=False))
    caption = _latex_text(table.title)
    body = styler.to_latex(column_format=column_format, hrules=True, siunitx=True, position_float="centering",
                           multicol_align="c",
                           caption=(f"{caption}. " + " ".join(map(_latex_text, table.notes)), caption),
                           label=f"tab:{table.suite.name}")
    return "% Needs \\usepackage{booktabs} and \\usepackage{siunitx} (v3, TeX Live 2021 or later).\n" + body
