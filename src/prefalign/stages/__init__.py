"""One module per kind of plan item: each holds the stage function the runner calls for it (see
`prefalign.pipeline.runner.STAGES`), and reads its inputs from, and writes its outputs to, the run directory."""
