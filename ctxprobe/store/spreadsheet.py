"""CSV cells that a spreadsheet will not run as formulas.

Exports carry model output and run names, text that nobody vetted: a response such as
`=HYPERLINK("http://...")` becomes a live formula when the CSV is opened in Excel, LibreOffice or
Google Sheets. Following OWASP's advice for CSV injection, a text field that starts with one of
= + - @ (or a tab or carriage return, which some spreadsheets skip before parsing) is prefixed with
a single quote, which spreadsheets show as text. Numbers are left alone; JSON lines exports are
never changed (they are not opened by spreadsheets, and re-scoring needs the exact response).
"""

from __future__ import annotations

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value):
    """`value` unchanged unless it is a str a spreadsheet would read as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value
