"""Floor 1: the training images. FairFace's configs and splits loaded and merged, images decoded defensively, the
resumable epoch order (``fairface``); every image decoded once into a memory-mapped cache (``pixel_cache``); the
procedural FairFace-layout faces of ``--demo`` and the tests, and their read-back (``demo_data``); how common each
group is and the weights that give rare groups their due (``group_balance``: FairFace's frequencies, balanced
sampling, loss reweighting).

May import utils/files/ and the loose modules (labels, cli); imported by run/, datasets/, evaluation/ and scripts.
"""
