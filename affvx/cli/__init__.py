"""The `affvx` command line: parse, call one library function, render. Nothing imports cli."""
