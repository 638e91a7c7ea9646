"""Floor 2: what a model is when it leaves the machine. The release folder committed atomically (``release``),
the code shipped for ``trust_remote_code`` (``remote_code``), the model card and samples (``model_card``) and
a distilled student's (``student_card``), the demo Space (``space``), and the uploads (``uploads``).
``python -m utils.hub`` (``__main__``) pushes a finished run later.

May import model/, data/ (the card's balancing line), files/ and the loose modules; imported by run/ and the scripts. ``__main__`` is a
command, like the scripts: it also takes the run folder's lock from run/.
"""
