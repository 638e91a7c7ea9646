"""Floor 4: a generated, labelled dataset (generate_dataset.py). What it holds before any image is drawn: counts,
one seed per image, shards, the command record and the folder's checks (``dataset_plan``); its parquet shards
(``dataset_shards``); its card, preview and provenance (``dataset_card``); its processes: their group's timeout,
the device each draws on, the end of a run where one failed (``dataset_processes``).

May import every lower floor; imported by the scripts only.
"""
