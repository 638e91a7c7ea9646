"""Floor 1: the model. ``pipeline``: ConditionEncoder, the UNet builder, FairFacePipeline, ``generate`` and the
safetensors-only loader; it and labels.py are the code every saved model ships (utils/hub/remote_code.py), so
``pipeline`` imports nothing but ``..labels``. ``conditions``: the sampling scripts' condition, framing and
sampler flags. ``consistency``: the consistency-distillation maths on the teacher's schedule.

May import the loose modules (labels, cli); imported by hub/, evaluation/ and the scripts.
"""
