"""Running a config: its work items (`items`), their order (`plan`), the walk that skips what is on
disk (`runner`), the run directory's files (`store`), and the processes and models a run shares
(`services`, `distributed`, `side_by_side`)."""
