"""The report's parts: tables and summaries of the evaluation runs, figures, the HTML page, model
cards, and `prefalign compare` over finished runs."""
