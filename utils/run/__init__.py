"""Floor 3: the run lifecycle that train_fairface.py and distill_fairface.py go through: ``lifecycle`` (the
``TrainingRun`` both scripts' ``main`` follows, every promise kept once) and ``run_args`` (their shared flags), built
on these parts. Setup: output folder checked, accelerator with the DDP timeout, run lock, data (``run_setup``,
``run_folder``); the flags a checkpoint
records and what may change on resume (``resume_check``, ``flag_checks``); ``checkpoints``; EMA (``ema``); the
loss and its seeded draws (``objective``); steps that meet non-finite values (``nonfinite``); logged metrics
(``step_metrics``); SIGTERM/SIGINT (``stop_signals``); processes and machines (``distributed``).

May import hub/, data/, model/, files/ and the loose modules; imported by datasets/, evaluation/ and the scripts.
"""
