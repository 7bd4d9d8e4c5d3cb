"""Attention mass by segment per layer: how much of the decision position's attention (the token whose logits choose
the quality level) goes to the system prompt, the image, the instruction, the description and the answer sentence,
at every layer (stacked to 1).

    python examples/attention_mass.py
    python examples/attention_mass.py --model checkpoints/llava-1.5-7b-hf --image koniq/123.jpg
"""

import _common

from vlm_lens import plot

args = _common.arguments(__doc__.splitlines()[0]).parse_args()
t = _common.trace(args)
_common.save(args, plot.attention_mass(t), "attention_mass")
