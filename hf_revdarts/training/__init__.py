"""Training infrastructure shared by the search and training scripts: the argument schema, the run's config
and memory set-up, data and tokenizers, the training loop's checkpoints and guards, checkpoint averaging."""
