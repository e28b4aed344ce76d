# The DAG's name (pipeline.py), here where naming a run needs no kfp import: kfp.local names
# a run's folder <name>-<time>.
PIPELINE_NAME = "emoalign"
