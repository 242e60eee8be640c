"""The report's parts: tables and summaries of the evaluation runs (tables.py), who beats whom and
the comparison with `report.baseline` (comparison.py), the report's sections as data (sections.py),
rendered as Markdown (markdown.py) and as one HTML page (html.py), figures (plots.py), and
`prefalign compare` over finished runs (compare.py)."""
