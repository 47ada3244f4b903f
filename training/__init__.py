"""The training recipes and scripts: `recipe` (typed YAML recipes with dotted overrides), `train_base` (the
full-width base network and the baselines' training) and `train` (the hypernetwork's stages, end to end).

Run by path, as the README shows (`accelerate launch training/train.py --config ...`), or import them as
`training.recipe`, `training.train_base` and `training.train` from the repository root.
"""
