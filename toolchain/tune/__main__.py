"""`python -m edgekit.tune`: one trial, JSON on stdin (started by trial.run_trial)."""
from .trial import main

main()
