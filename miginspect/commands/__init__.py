"""One module per subcommand: `add_parser(subparsers)` registers it, its `run` returns
the exit status. Commands call analyses (miginspect.inspector) and renderers
(miginspect.render); they hold no logic of their own. At import a command module loads
only argparse and `common` (the whole parser is built for `--help`); `run` imports the
analyses, renderers and `ui` it uses (tests/test_layering.py checks it)."""
