"""The computation every stage shares, free of run-directory bookkeeping: decoding (sampling and
log-probs), scoring with the reward classifier, corpus prompts, pair rules and metrics."""
