"""The operator's command line: check, reload, tail, probe. Imports anything below it."""
