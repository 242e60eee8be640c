"""Labelled text corpora, wherever they live: label values (`labels`), local files and folders
(`files`), hub datasets (`hub`), and the entry points that pick between them (`corpus`)."""
