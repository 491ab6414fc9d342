"""One module per subcommand: `add_parser(subparsers)` registers it, its `run` returns
the exit status. Commands call analyses (miginspect.inspector) and renderers
(miginspect.render); they hold no logic of their own."""
