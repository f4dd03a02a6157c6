"""One module per ``ewc-ref`` subcommand: ``add_arguments(parser)`` and ``run(args)``."""
