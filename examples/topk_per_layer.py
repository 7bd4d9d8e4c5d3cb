"""Top-k candidates per layer at the decision position, where the level is chosen (the paper's Figure 3): for each
layer the k most probable tokens with their probabilities, the model's final output highlighted.

    python examples/topk_per_layer.py
    python examples/topk_per_layer.py --model checkpoints/llava-1.5-7b-hf --image koniq/123.jpg --first-layer 20
"""

import _common

from vlm_lens import plot

parser = _common.arguments(__doc__.splitlines()[0])
parser.add_argument("--k", type=int, default=4, help="candidates per layer")
parser.add_argument("--first-layer", type=int, default=0, help="show layers from this one up")
args = parser.parse_args()
t = _common.trace(args)
position = _common.decision(t)  # where the quality level is chosen (the figures' default)
print(t.lens(topk=args.k, positions=[position]).query("rank == 1")[["layer", "token", "prob"]].to_string(index=False))
_common.save(args, plot.topk(t, position, k=args.k, layer_range=(args.first_layer, max(t.layers))), "topk_per_layer")
