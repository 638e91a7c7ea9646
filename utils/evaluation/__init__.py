"""Floor 4: evaluating a trained model (issue 8): one module per idea, each small functions on numpy arrays that can be
tested against hand-computed values; the models (a zero-shot CLIP or FairFace-trained image classifiers, a
DINOv2 feature model) are thin wrappers around ``transformers`` ``from_pretrained``, from safetensors only
(offline from the Hub cache with ``HF_HUB_OFFLINE=1``). ``evaluate_fairface.py`` uses them as
``from utils import evaluation as ev; ev.fidelity_metrics(...)``.

* ``samples``: generated sample files found by name, real FairFace records addressed by condition (and framing).
* ``classifiers``: age, gender and race of every image; accuracy is measured against the requested condition
  (generated images) or the dataset label (real images, the classifier's own ceiling).
* ``features``: image features (DINOv2 CLS token) of images and of streamed pool records.
* ``fidelity``: accuracy, confusion matrices and accuracy per group; each group's share of the training images
  and the groups 5+ points under their mean.
* ``frechet``: Fréchet distance between generated and real features, overall and per group (pytorch-fid's way).
* ``diversity``: mean pairwise cosine distance of the features of the images of one condition.
* ``memorisation``: every generated image's cosine distance to its nearest training image, against the same
  distance for real images the model did not see.
* ``drawing`` (PIL only) of the plots, and ``report``: the markdown report.
* ``cas``: Classification Accuracy Score, a small CNN trained on synthetic, real and both, tested on real;
  ``decoded_images``: the images it learns from, decoded once to raw uint8 files and read a batch at a time
  (memory flat as the dataset grows); ``generator_data``: which real splits the generator trained on (its run
  records and cards), so the test split can be refused when it is one of them.

May import every lower floor (data/, model/, files/, run/'s process helpers); imported by the scripts only.
"""

# flake8: noqa: F401 -- the package's interface: everything evaluate_fairface.py and the tests use, as ev.<name>
from .classifiers import (CLIPAttributeClassifier, DemoAttributeClassifier, ImageClassifierAttribute,
                          add_classifier_args, classify, describe_classifiers, label_mapping, load_classifiers,
                          predict_all)
from .diversity import diversity_by_condition, mean_pairwise_cosine_distance, summarise_diversity
from .drawing import SHORT_NAMES, bar_panels, confusion_heatmap, hstack, pair_grid
from .features import FeatureExtractor, from_pretrained_safetensors, record_features
from .fidelity import (accuracy, confusion_matrix, fidelity_metrics, group_accuracy, groups_below_mean,
                       training_shares)
from .frechet import feature_statistics, frechet_by_group, frechet_distance, frechet_distance_between
from .memorisation import NearCopyCheck, add_memorisation_args, memorisation, nearest_neighbours, reference_distances
from .report import fmt_number, fmt_percent, report_markdown
from .samples import RealPool, attribute_arrays, find_samples, sample_per_condition
