"""Values of the analyses that the command line shows before anything runs: the layouts
`convert` writes and `audit`'s default time limit per file. Nothing is imported here,
so that building the parser (`miginspect --help`) imports no analysis."""

#: the RAM layouts `convert` writes (`convert --to`)
TARGETS = ("mapped-ram", "legacy")

#: default per-file time limit of `audit`, seconds
DEFAULT_TIMEOUT = 600.0
