"""The command line: thin click commands over the core. The core never imports click."""
