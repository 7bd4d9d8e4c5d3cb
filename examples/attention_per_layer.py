"""Attention per layer over the context (the paper's Figure 5): the attention row of the decision position (the
token whose logits choose the level), layer x context token, segments (system / image / instruction / description /
answer) marked; heads averaged.

    python examples/attention_per_layer.py
    python examples/attention_per_layer.py --model checkpoints/llava-1.5-7b-hf --image koniq/123.jpg --image-tokens band
"""

import _common

from vlm_lens import plot

parser = _common.arguments(__doc__.splitlines()[0])
parser.add_argument("--image-tokens", default="collapse", choices=["collapse", "band", "full", "hide"])
args = parser.parse_args()
t = _common.trace(args)
_common.save(args, plot.attention(t, image_tokens=args.image_tokens), "attention_per_layer")
