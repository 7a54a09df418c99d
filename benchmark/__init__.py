"""The Table 1 benchmark as a library (scripts/reproduce.py is its command line):

    protocols  what each protocol trains and evaluates; the --methods names; parents
    plan       the runs and evaluations of a command, their arguments, what is reused or refused
    processes  running the plan's train.py / eval.py processes, --jobs at a time
    tables     table.md, results.json and the figures from what finished
    reproduce  one command: resolve the options, plan, run, table

It starts train.py and eval.py as processes and resolves their arguments with the same parsers
(engine/arguments.py, evaluation/arguments.py); it imports no entry point.
"""
