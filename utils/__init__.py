"""fairface-diffusion's library: everything the scripts at the repository root share, one module per idea.

Each folder is one idea and sits on a floor. A module imports from its own folder and from lower floors only
(tests/test_layout.py checks it); no script imports another script.

    floor 0  labels.py, cli.py, grid.py   FairFace's labels and condition ids; flags, one-line errors, the demo
                                          recipe; labelled image grids
             files/        atomic writes and folder swaps, file locks, the fault-planting test hooks
    floor 1  data/         FairFace loading and decoding, the pixel cache, the procedural demo faces
             model/        the pipeline (also shipped as code with every model), conditions and sampling flags,
                           the consistency-distillation maths
    floor 2  hub/          the release folder, model and student cards, the shipped code, the Space, uploads;
                           ``python -m utils.hub`` (its __main__, a command like the scripts)
    floor 3  run/          the run lifecycle of train/distill: setup, run folder and lock, resume checks,
                           checkpoints, EMA, objective, non-finite steps, metrics, stop signals, processes
    floor 4  datasets/     a generated dataset's plan, parquet shards and card (generate_dataset.py)
             evaluation/   fidelity, Fréchet distance, diversity, memorisation, CAS (evaluate_*.py)

pipeline.py is no module of its own: the old import path that model cards already on the Hub print
(``from utils.pipeline import load_pipeline``), an alias of model/pipeline.py.
"""
