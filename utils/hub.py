"""Release folder, model card and Hub upload (placeholder: extended by the Hub work)."""

import os

from . import training


def save_release(pipeline, args, num_images, global_step):
    """The final pipeline at the root of --output_dir (safetensors)."""
    tmp = os.path.join(args.output_dir, ".tmp-release")
    training.save_folder_atomic(tmp, pipeline.save_pretrained)
    for name in os.listdir(tmp):
        target = os.path.join(args.output_dir, name)
        if os.path.isdir(target):
            import shutil
            shutil.rmtree(target)
        os.replace(os.path.join(tmp, name), target)
    os.rmdir(tmp)
