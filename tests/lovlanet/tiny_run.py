"""A training setup small enough for a test: a 2-block, 64-wide model on 8 synthetic 64×64 scenes."""
import json

TINY = ["--model", json.dumps({"visual_kwargs": {"depth": 2, "embed_dim": 64, "num_heads": 2},
                               "feature_blocks": [1, 1, 2, 2], "decoder_dim": 16,
                               "text_kwargs": {"width": 32, "layers": 1, "heads": 2}}),
        "--dataset-options", json.dumps({"num_images": 8, "size": 64}),
        "--img-size", "64", "--crop-size", "64", "--batch-size", "4", "--workers", "0", "--device", "cpu"]
