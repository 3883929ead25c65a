"""Execution policies: the model and its clamping rules, policy files and their lint, what
reviewers read (show, diff, explain), and the static checks on code."""
