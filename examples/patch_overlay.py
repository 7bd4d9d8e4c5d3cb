"""Attention on the image: the decision position's attention to each image patch, laid over the picture,
at a middle and at the last layer; and each patch's lens probability of a word.

    python examples/patch_overlay.py
    python examples/patch_overlay.py --model checkpoints/llava-1.5-7b-hf --image koniq/123.jpg --word blurry
"""

import _common

from vlm_lens import plot

parser = _common.arguments(__doc__.splitlines()[0])
parser.add_argument("--word", default="blurry", help="word whose lens probability is shown per patch")
args = parser.parse_args()
t = _common.trace(args)
middle = max(t.layers) // 2
_common.save(args, plot.patch_overlay(t, layer=middle), "patch_attention_middle")
_common.save(args, plot.patch_overlay(t, layer=-1), "patch_attention_last")
_common.save(args, plot.patch_overlay(t, value="lens", target=args.word, layer=middle), "patch_lens")
