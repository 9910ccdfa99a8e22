"""One module per check; each exports `METHOD_HOOKS`, keyed by (library class, method),
which the plugin's entry module merges and runs in order."""
