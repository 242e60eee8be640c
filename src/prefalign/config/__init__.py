"""The experiment config: its schema (`schema`, with the `train` section in `train`), the TRL
trainer settings it may name (`trainer_fields`, `recipes`), and reading it from YAML (`loader`)."""
