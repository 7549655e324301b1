"""The command line: the only part of rekkord that imports click, reads argv
or the environment, or prints."""
