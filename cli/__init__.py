"""The command line, on top of every layer: parse, call library code, render."""
