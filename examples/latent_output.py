"""Latent output: what every layer would answer at the answer tokens and their context (logit lens top-1 per
layer and position, coloured by probability), and the same coloured by the probability of the final output.

    python examples/latent_output.py                                   # the zoo's one-stage checkpoint
    python examples/latent_output.py --model checkpoints/llava-1.5-7b-hf --image koniq/123.jpg \
        --dtype bfloat16 --device cuda
"""

import _common

from vlm_lens import plot

args = _common.arguments(__doc__.splitlines()[0]).parse_args()
t = _common.trace(args)
print(f"answer: {t.answer!r}")
_common.save(args, plot.latent_output(t, positions="response", context=6), "latent_output")
_common.save(args, plot.latent_output(t, color="final", image_tokens="band"), "latent_output_final")
