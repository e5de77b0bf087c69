"""Exit codes, the same in every `speech-transformer` subcommand."""

OK = 0
INPUTS_FAILED = 1  # some inputs failed (each reported with its reason; the others done and written), or the work did
USAGE_ERROR = 2  # bad arguments, or a model, manifest or config that cannot be used: nothing was done
INTERRUPTED = 130  # Ctrl-C: what was finished is kept (rerun with --resume where there is one)
